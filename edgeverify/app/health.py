"""How the service is doing, for Home Assistant's diagnostic sensors: uptime, memory, decision latency,
decisions and rejects per hour, CPU temperature. Bounded: a fixed window of latencies and at most
MAX_RECENT decision times (one hour's worth at a rate no edge device reaches), so a flood cannot grow it.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from pathlib import Path
from typing import Any, Optional

LATENCY_WINDOW = 200  # p50/p95 over the last this many decisions
MAX_RECENT = 20_000  # decision times kept for the per-hour rates (> 5 per second for an hour)
HOUR_S = 3600.0
THERMAL_DIR = Path("/sys/class/thermal")
# zone types that are the CPU/SoC on the boards we run on (Pi: cpu-thermal, Jetson: CPU-therm, x86: x86_pkg_temp)
CPU_ZONE_HINTS = ("cpu", "soc", "x86_pkg")


def percentile(values: list[float], q: float) -> Optional[float]:
    """Nearest-rank percentile (q in 0..100) of values; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))  # ceil(q/100 * n)
    return ordered[rank - 1]


def rss_mb() -> Optional[float]:
    """Resident memory of this process (from /proc/self/statm), None where /proc is not there."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def cpu_temperature_zone(root: Path = THERMAL_DIR) -> Optional[Path]:
    """The thermal zone's temp file of the CPU where the board exposes one (else the first readable zone
    whose type looks like a CPU/SoC); None when there is none (VMs, containers)."""
    try:
        zones = sorted(root.glob("thermal_zone*"))
    except OSError:
        return None
    for zone in zones:
        try:
            kind = (zone / "type").read_text().strip().lower()
            int((zone / "temp").read_text().strip())
        except (OSError, ValueError):
            continue
        if any(h in kind for h in CPU_ZONE_HINTS):
            return zone / "temp"
    return None


def read_temperature(path: Optional[Path]) -> Optional[float]:
    """Degrees Celsius from a thermal zone's temp file (millidegrees); None when unreadable."""
    if path is None:
        return None
    try:
        return int(path.read_text().strip()) / 1000.0
    except (OSError, ValueError):
        return None


class Health:
    """Fed with every decision (thread-safe); snapshot() is what the health topic carries."""

    def __init__(self, thermal_root: Path = THERMAL_DIR, clock: Any = time.monotonic) -> None:
        self.clock = clock
        self.started_wall = time.time()
        self.started = clock()
        self._latencies: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self._recent: collections.deque[tuple[float, bool]] = collections.deque(maxlen=MAX_RECENT)
        self._lock = threading.Lock()
        self.decisions = 0  # ever (a cheap "anything new?" for the publisher)
        self.temperature_file = cpu_temperature_zone(thermal_root)

    def decided(self, elapsed_ms: Optional[float], rejected: bool) -> None:
        """One decision: its latency (None: not timed) and whether it named nobody / refused the claim."""
        with self._lock:
            if elapsed_ms is not None:
                self._latencies.append(float(elapsed_ms))
            self._recent.append((self.clock(), rejected))
            self.decisions += 1

    def snapshot(self) -> dict[str, Any]:
        now = self.clock()
        with self._lock:
            while self._recent and now - self._recent[0][0] > HOUR_S:
                self._recent.popleft()
            lat = list(self._latencies)
            decisions = len(self._recent)
            rejects = sum(1 for _, r in self._recent if r)
        # over the first hour the rate is what happened so far, not extrapolated from a few minutes
        p50, p95 = percentile(lat, 50), percentile(lat, 95)
        rss = rss_mb()
        temp = read_temperature(self.temperature_file)
        return {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(self.started_wall)),
            "uptime_s": int(now - self.started),
            "rss_mb": None if rss is None else round(rss, 1),
            "latency_ms": {"p50": None if p50 is None else round(p50, 1), "p95": None if p95 is None else round(p95, 1),
                           "window": len(lat)},
            "decisions_per_hour": decisions,
            "rejects_per_hour": rejects,
            "cpu_temp_c": None if temp is None else round(temp, 1),
        }
