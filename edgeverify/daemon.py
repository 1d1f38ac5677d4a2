"""`edgeverify run`: the long-running service -- config, model, MQTT, microphone, systemd life cycle.

Order: validate config -> load + warm up the model -> connect MQTT -> (microphone) -> READY=1.
The worker loop runs in the main thread, so signal handlers only set flags: SIGTERM finishes the
request in hand, publishes "offline" and disconnects; SIGHUP reloads config and profiles.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time
from typing import Any, Optional

from .systemd import notify
from .store.config import Config, load_config
from .errors import ConfigError, EdgeVerifyError
from .app.decisions import DecisionService
from .app.model import load_verifier, verifier_settings
from .store.profiles import ProfileStore

log = logging.getLogger(__name__)

CONNECT_WAIT_S = 5.0  # READY=1 is sent after this even if the broker is still unreachable (paho retries)
MIC_RETRY_S = 30.0


class Daemon:
    def __init__(self, config_path: Optional[str] = None) -> None:
        self.config_path = config_path
        self.config = load_config(config_path)
        self._stop = False
        self._reload = False
        self._mic: Any = None
        self._wyoming: Any = None  # wyoming_proxy.ProxyThread when wyoming.enabled
        self._mic_retry_at = 0.0
        self._last_ping = 0.0
        self._liveness = None  # what stops the watchdog pings (logged once per change)
        self._exit_code = 0
        self.watchdog_s = notify.watchdog_interval()

    # -- signals ---------------------------------------------------------------------------------

    def _on_term(self, signum: int, frame: Any) -> None:
        log.info("signal %d: stopping after the request in hand", signum)
        self._stop = True

    def _on_hup(self, signum: int, frame: Any) -> None:
        self._reload = True

    # -- life cycle ------------------------------------------------------------------------------

    def run(self) -> int:
        from .mqtt.service import MqttService

        cfg = self.config
        notify.setup_logging(cfg.log_level)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, self._on_hup)
        notify.status(f"loading model {cfg.model}")
        self.verifier = load_verifier(cfg, warm_up=True)
        self.store = ProfileStore(cfg.state_dir)
        log.info("%d profile(s) in %s", self.store.reload(), self.store.dir)
        self.handler = DecisionService(self.verifier, self.store, cfg.limits.max_audio_seconds,
                                       cfg.microphone.verify_profile, cfg.microphone.sample_rate)
        self.service = MqttService(cfg, self.handler, model_name=self.verifier.model_name)
        if cfg.wyoming.enabled:
            self._start_wyoming()  # before MQTT: a port in use stops the start-up before anything is published
        notify.status(f"connecting to {cfg.mqtt.host}:{cfg.mqtt.port}")
        self.service.start()
        if not self.service.connected.wait(CONNECT_WAIT_S):
            log.warning("broker %s:%d not reachable yet; retrying in the background", cfg.mqtt.host, cfg.mqtt.port)
        if cfg.microphone.enabled:
            self._start_microphone()
        notify.ready(self._status_text())
        log.info("ready: %s", self._status_text())
        tick = 1.0 if self.watchdog_s is None else max(0.05, min(1.0, self.watchdog_s / 3))
        try:
            self.service.run(lambda: self._stop, self._on_tick, tick)
        finally:
            notify.stopping("stopping")
            if self._mic is not None:
                self._mic.stop()
            if self._wyoming is not None:
                self._wyoming.stop()
            self.service.stop()
            log.info("stopped after %d request(s)", self.service.handled)
        return self._exit_code

    def _status_text(self) -> str:
        s = self.service
        mqtt_state = "connected" if s.connected.is_set() else "connecting"
        mic = "" if not self.config.microphone.enabled else (", mic on" if self._mic is not None else ", mic unavailable")
        extra = "".join(f", {n} {what}" for n, what in ((s.expired, "expired"), (s.duplicates, "repeat(s)"),
                                                         (s.refused_replies, "reply topic(s) refused")) if n)
        wyo = "" if self._wyoming is None else f", wyoming {self._wyoming.proxy.decisions} decision(s)"
        return (
            f"{mqtt_state}; model {self.verifier.model_name}; {len(self.store.list())} profile(s); "
            f"{s.handled} request(s), {s.errors} error(s){extra}{mic}{wyo}"
        )

    def _alive(self) -> bool:
        """Both loops make progress: this worker loop (we are in it) and the MQTT network loop.

        A dead network thread ends the service (exit 1, systemd restarts it; unacknowledged requests are
        redelivered); a stuck one only stops the watchdog pings, so systemd kills and restarts it.
        """
        problem = self.service.liveness_problem()
        if problem != self._liveness:
            self._liveness = problem
            if problem is not None:
                log.error("%s: watchdog pings stopped", problem)
                notify.status(problem)
            else:
                log.info("mqtt network loop alive again: watchdog pings resumed")
        if self.service.network_dead:
            self._stop, self._exit_code = True, 1
        return problem is None

    def _on_tick(self) -> None:
        """Runs in the worker loop after every job and at least every tick: a hung loop stops the pings."""
        now = time.monotonic()
        alive = self._alive()
        if alive and self.watchdog_s is not None and now - self._last_ping >= self.watchdog_s / 3:
            notify.watchdog()
            notify.status(self._status_text())
            self._last_ping = now
        if self._reload:
            self._reload = False
            self.reload()
        mic = self.config.microphone
        if mic.enabled and (self._mic is None or not self._mic.healthy) and now >= self._mic_retry_at:
            if self._mic is not None:
                log.warning("microphone stopped delivering audio; restarting it")
                self._mic.stop()
                self._mic = None
            self._start_microphone()

    def _start_microphone(self) -> None:
        from .microphone.listener import MicrophoneListener  # sounddevice/PortAudio only when the microphone is used
        from .core.vad import VadConfig

        mic = self.config.microphone
        self._mic_retry_at = time.monotonic() + MIC_RETRY_S
        try:
            listener = MicrophoneListener(
                mic.device,
                sample_rate=mic.sample_rate,
                on_utterance=self.service.submit_utterance,
                vad_config=VadConfig(**dataclasses.asdict(mic.vad)),
                pre_roll_s=mic.pre_roll_s,
                min_utterance_s=mic.min_utterance_s,
                max_utterance_s=mic.max_utterance_s,
            )
            listener.start()
        except EdgeVerifyError as exc:
            log.error("microphone unavailable (retrying in %.0f s): %s", MIC_RETRY_S, exc.message)
            notify.status(f"microphone unavailable: {exc.message}")
            return
        self._mic = listener
        self.handler.attach_microphone(listener)

    def _start_wyoming(self) -> None:
        """The Wyoming proxy on its own asyncio thread, sharing the handler (one model in memory)."""
        from .wyoming_stt.proxy import ProxyOptions, ProxyThread, SpeakerIdProxy  # the wyoming package only when enabled

        w = self.config.wyoming
        # decisions feed Home Assistant's event entity and the retained state, like MQTT and microphone ones
        proxy = SpeakerIdProxy(self.handler, ProxyOptions.from_config(w, self.config.device_id), self.service.publish_decision)
        self._wyoming = ProxyThread(proxy, w.uri)
        self._wyoming.start()  # WyomingError (port in use) stops the start-up with a readable message

    def reload(self) -> None:
        """SIGHUP: re-read the config (keep the old one if invalid), reload the model if it changed, re-read profiles."""
        notify.reloading()
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload: keeping the running configuration: %s", exc.message)
            notify.ready(f"reload failed: {exc.message}")
            return
        old = self.config
        if verifier_settings(new) != verifier_settings(old):
            try:
                self.verifier = load_verifier(new, warm_up=True)
            except EdgeVerifyError as exc:
                log.error("reload: keeping the running model: %s", exc.message)
                notify.ready(f"reload failed: {exc.message}")
                return
        for section in ("mqtt", "device_id", "state_dir", "admin", "wyoming"):
            if getattr(new, section) != getattr(old, section):
                log.warning("reload: %s changed; it takes effect after a restart", section)
                setattr(new, section, getattr(old, section))
        if dataclasses.replace(new.microphone, mode=old.microphone.mode) != old.microphone:
            log.warning("reload: microphone settings other than mode take effect after a restart")
        self.handler.reconfigure(self.verifier, new.limits.max_audio_seconds, new.microphone.verify_profile)
        self.service.config.limits.max_payload_bytes = new.limits.max_payload_bytes
        new.microphone = dataclasses.replace(old.microphone, mode=new.microphone.mode)
        new.limits.queue_size = old.limits.queue_size
        self.config = new
        count = self.store.reload()
        logging.getLogger().setLevel(new.log_level.upper())
        log.info("reloaded configuration and %d profile(s)", count)
        notify.ready(self._status_text())


def run_daemon(config_path: Optional[str] = None) -> int:
    return Daemon(config_path).run()
