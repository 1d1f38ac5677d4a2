"""systemd adapter: sd_notify readiness, watchdog and status, journald logging."""
