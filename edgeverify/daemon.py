"""`edgeverify run`: the long-running service -- the one place that wires the app to its adapters.

Order: validate config -> load + warm up the model -> build the app (decision service, model worker,
counters, decision sinks) -> MQTT (with Home Assistant) -> (Wyoming) -> (microphone) -> READY=1.
The model worker's loop runs in the main thread, so signal handlers only set flags: SIGTERM finishes the
request in hand, publishes "offline" and disconnects; SIGHUP reloads config and profiles.

Daemon wires and runs; Watchdog decides when systemd is pinged; MicrophoneSupervisor restarts a
microphone that stopped delivering audio. Each object changes only its own fields (reload goes through
the parts' own reconfigure methods).
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time
from typing import Any, Callable, Optional

from .app.counters import Counters
from .app.decisions import DecisionService
from .app.inbox import Inbox, InboxHandler
from .app.model import auto_moved, check_profiles, load_verifier, report_profiles
from .app.sinks import DecisionSinks
from .app.worker import ModelWorker, UtteranceSource
from .errors import ConfigError, EdgeVerifyError
from .store.config import MicrophoneConfig, load_config, reload_plan
from .store.profiles import ProfileStore
from .systemd import notify

log = logging.getLogger(__name__)

CONNECT_WAIT_S = 5.0  # READY=1 is sent after this even if the broker is still unreachable (paho retries)
MIC_RETRY_S = 30.0
# Home Assistant's restart button: a clean stop, then this exit code; the unit restarts on it
# (RestartForceExitStatus=75) and does not count it as a failure (SuccessExitStatus=75). EX_TEMPFAIL.
RESTART_EXIT_CODE = 75


class Watchdog:
    """Pings systemd's watchdog while both loops make progress: the worker loop (the caller of tick) and
    the MQTT network loop (`liveness_problem`). A stuck network loop only stops the pings, so systemd
    kills and restarts the service; what stops them is logged once per change."""

    def __init__(self, liveness_problem: Callable[[], Optional[str]], interval_s: Optional[float]) -> None:
        self.liveness_problem = liveness_problem
        self.interval_s = interval_s
        self._problem: Optional[str] = None
        self._last_ping = 0.0

    def tick(self, status_text: Callable[[], str]) -> None:
        problem = self.liveness_problem()
        if problem != self._problem:
            self._problem = problem
            if problem is not None:
                log.error("%s: watchdog pings stopped", problem)
                notify.status(problem)
            else:
                log.info("mqtt network loop alive again: watchdog pings resumed")
        now = time.monotonic()
        if problem is None and self.interval_s is not None and now - self._last_ping >= self.interval_s / 3:
            notify.watchdog()
            notify.status(status_text())
            self._last_ping = now


class MicrophoneSupervisor:
    """Starts the microphone, and restarts it (at most every MIC_RETRY_S) when it stops delivering audio."""

    def __init__(self, config: MicrophoneConfig, on_utterance: Callable[[Any], bool],
                 on_change: Callable[[Any], None]) -> None:
        self.config = config
        self.on_utterance = on_utterance
        self.on_change = on_change  # the running listener, or None (the decision service's capture source)
        self.listener: Any = None
        self._retry_at = 0.0

    def start(self) -> None:
        from .core.vad import VadConfig
        from .microphone.listener import MicrophoneListener  # sounddevice/PortAudio only when the microphone is used

        mic = self.config
        self._retry_at = time.monotonic() + MIC_RETRY_S
        try:
            listener = MicrophoneListener(
                mic.device,
                sample_rate=mic.sample_rate,
                on_utterance=self.on_utterance,
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
        self.listener = listener
        self.on_change(listener)

    def tick(self) -> None:
        if (self.listener is None or not self.listener.healthy) and time.monotonic() >= self._retry_at:
            if self.listener is not None:
                log.warning("microphone stopped delivering audio; restarting it")
                self.stop()
            self.start()

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.stop()
            self.listener = None
            self.on_change(None)


class Daemon:
    def __init__(self, config_path: Optional[str] = None) -> None:
        self.config_path = config_path
        self.config = load_config(config_path)
        self.exit_code = 0
        self._stop = False
        self._reload = False
        self.mic: Optional[MicrophoneSupervisor] = None
        self.wyoming: Any = None  # wyoming_stt.proxy.ProxyThread when wyoming.enabled

    # -- signals ---------------------------------------------------------------------------------

    def _on_term(self, signum: int, frame: Any) -> None:
        log.info("signal %d: stopping after the request in hand", signum)
        self._stop = True

    def _on_hup(self, signum: int, frame: Any) -> None:
        self._reload = True

    # -- wiring ----------------------------------------------------------------------------------

    def run(self) -> int:
        from .mqtt.service import MqttService

        cfg = self.config
        notify.setup_logging(cfg.log_level)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, self._on_hup)
        self.store = ProfileStore(cfg.state_dir)  # before the model: `model: auto` follows the profiles
        log.info("%d profile(s) in %s", self.store.reload(), self.store.dir)
        notify.status(f"loading model {cfg.model_name}")
        verifier = load_verifier(cfg, warm_up=True, store=self.store)
        problem = report_profiles(self.store, verifier.model).problem
        if problem:
            notify.status(problem)
        self.service = DecisionService(verifier, self.store, cfg.limits.max_audio_seconds,
                                       cfg.microphone.verify_profile, cfg.microphone.sample_rate,
                                       identify_scores=cfg.mqtt.identify_scores)
        self.counters = Counters()
        self.sinks = DecisionSinks(self.counters)
        self.worker = ModelWorker(cfg.limits.queue_size, cfg.limits.queue_per_requester)
        self.mqtt = MqttService(cfg, self.service, self.worker, self.counters, self.sinks,
                                model_name=verifier.model_name)
        self.sinks.add(self.mqtt.ha)  # decisions from every source feed HA's event entity and retained state
        # unrecognised microphone and Wyoming utterances (embeddings, in memory) for the admin to assign
        self.inbox = Inbox(cfg.inbox)
        self.service.attach_inbox(self.inbox)
        self.mqtt.admin.attach_inbox(InboxHandler(self.service, self.inbox))
        self.watchdog = Watchdog(self.mqtt.liveness_problem, notify.watchdog_interval())
        if cfg.wyoming.enabled:
            self._start_wyoming()  # before MQTT: a port in use stops the start-up before anything is published
        notify.status(f"connecting to {cfg.mqtt.host}:{cfg.mqtt.port}")
        self.mqtt.start()
        if not self.mqtt.connected.wait(CONNECT_WAIT_S):
            log.warning("broker %s:%d not reachable yet; retrying in the background", cfg.mqtt.host, cfg.mqtt.port)
        if cfg.microphone.enabled:
            utterances = UtteranceSource(self.worker, self.service, self.sinks, cfg.device_id)
            self.mic = MicrophoneSupervisor(cfg.microphone, utterances, self.service.attach_microphone)
            self.mic.start()
        notify.ready(self._status_text())
        log.info("ready: %s", self._status_text())
        interval = self.watchdog.interval_s
        tick = 1.0 if interval is None else max(0.05, min(1.0, interval / 3))
        try:
            self.worker.run(lambda: self._stop, self._on_tick, tick)
        finally:
            notify.stopping("stopping")
            if self.mic is not None:
                self.mic.stop()
            if self.wyoming is not None:
                self.wyoming.stop()
            self.mqtt.stop()
            log.info("stopped after %d request(s)", self.counters.handled)
        return self.exit_code

    def _start_wyoming(self) -> None:
        """The Wyoming proxy on its own asyncio thread, sharing the decision service (one model in memory)."""
        from .wyoming_stt.proxy import ProxyThread, SpeakerIdProxy  # the wyoming package only when enabled

        w = self.config.wyoming
        # decisions feed Home Assistant's event entity and the retained state, like MQTT and microphone ones
        proxy = SpeakerIdProxy(self.service, w, self.sinks.publish_decision, device_id=self.config.device_id)
        self.wyoming = ProxyThread(proxy, w.uri)
        self.wyoming.start()  # WyomingError (port in use) stops the start-up with a readable message

    def _status_text(self) -> str:
        c = self.counters
        mqtt_state = "connected" if self.mqtt.connected.is_set() else "connecting"
        mic = "" if self.mic is None else (", mic on" if self.mic.listener is not None else ", mic unavailable")
        extra = "".join(f", {n} {what}" for n, what in ((c.expired, "expired"), (c.duplicates, "repeat(s)"),
                                                         (c.refused_replies, "reply topic(s) refused")) if n)
        wyo = "" if self.wyoming is None else f", wyoming {self.wyoming.proxy.decisions} decision(s)"
        models = check_profiles(self.store, self.service.verifier.model)
        unscored = f" ({len(models.other_model)} of another model: re-enroll)" if models.other_model else ""
        return (
            f"{mqtt_state}; model {self.service.verifier.model.label}; {len(self.store.list())} profile(s){unscored}; "
            f"{c.handled} request(s), {c.errors} error(s){extra}{mic}{wyo}"
        )

    # -- the worker loop's tick --------------------------------------------------------------------

    def _on_tick(self) -> None:
        """Runs in the worker loop after every job and at least every tick: a hung loop stops the pings."""
        try:
            self.mqtt.tick()
        except Exception:
            log.exception("could not refresh availability or diagnostics")
        self.watchdog.tick(self._status_text)
        if self.mqtt.ha.restart_requested and not self._stop:
            self._stop, self.exit_code = True, RESTART_EXIT_CODE
        if self.mqtt.network_dead:
            # unrecoverable: exit 1 and let systemd restart us (unacknowledged requests are redelivered)
            self._stop, self.exit_code = True, 1
        if self._reload:
            self._reload = False
            self.reload()
        if self.mic is not None:
            self.mic.tick()
        if self.inbox.enabled:
            self.inbox.tidy({p.name for p in self.store.list()})

    def reload(self) -> None:
        """SIGHUP: re-read the config (keep the old one if invalid), reload the model if it changed, re-read profiles."""
        notify.reloading()
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload: keeping the running configuration: %s", exc.message)
            notify.ready(f"reload failed: {exc.message}")
            return
        plan = reload_plan(self.config, new)  # from each setting's declared reload kind (store/config)
        verifier = None
        self.store.reload()
        if plan.reload_model or auto_moved(plan.config, self.store, self.service.verifier.model):
            try:
                verifier = load_verifier(plan.config, warm_up=True, store=self.store)
            except EdgeVerifyError as exc:
                log.error("reload: keeping the running model: %s", exc.message)
                notify.ready(f"reload failed: {exc.message}")
                return
        for key in plan.restart:
            log.warning("reload: %s changed; it takes effect after a restart", key)
        new = plan.config
        self.service.reconfigure(verifier, new.limits.max_audio_seconds, new.microphone.verify_profile,
                                 identify_scores=new.mqtt.identify_scores)
        self.mqtt.reconfigure(new)
        self.inbox.reconfigure(new.inbox)
        self.config = new
        count = self.store.reload()
        report_profiles(self.store, self.service.verifier.model)
        logging.getLogger().setLevel(new.log_level.upper())
        log.info("reloaded configuration and %d profile(s)", count)
        notify.ready(self._status_text())


def run_daemon(config_path: Optional[str] = None) -> int:
    return Daemon(config_path).run()
