"""The one model thread: a bounded queue of typed jobs, run one at a time.

The model (and the profile cache) is used by this thread only: MQTT requests, microphone utterances and
admin work all queue here. A job is one small class per kind with run() and abort(reason) (abort: it was
dropped at shutdown). A full queue is answered at once by the submitter ("busy"), never dropped silently.

The loop also wakes every `tick_s` and calls on_tick: the daemon pings the systemd watchdog there, so the
pings stop when this loop hangs.
"""

from __future__ import annotations

import logging
import queue
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

import numpy as np

from ..core.audio import TARGET_RATE
from .decisions import DecisionService
from .sinks import DecisionSinks

log = logging.getLogger(__name__)


class Job(Protocol):
    def run(self) -> None:
        """Do the work on the worker thread (exceptions are logged; the worker lives on)."""

    def abort(self, reason: str) -> None:
        """Dropped unstarted at shutdown: tell whoever waits for it, if anyone does."""


class ModelWorker:
    def __init__(self, queue_size: int) -> None:
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=queue_size)

    @property
    def capacity(self) -> int:
        return self._queue.maxsize

    def submit(self, job: Job) -> bool:
        """From any thread; False when the queue is full (the caller answers "busy")."""
        try:
            self._queue.put_nowait(job)
            return True
        except queue.Full:
            return False

    def run(self, should_stop: Callable[[], bool], on_tick: Callable[[], None], tick_s: float = 1.0) -> None:
        """Process jobs until should_stop(); the job in hand is always finished first, then the rest aborted."""
        while not should_stop():
            try:
                job: Optional[Job] = self._queue.get(timeout=tick_s)
            except queue.Empty:
                job = None
            if job is not None:
                try:
                    job.run()
                except Exception:  # a bug must not kill the worker (and with it the watchdog pings)
                    log.exception("%s failed", type(job).__name__)
            on_tick()
        self.drain("service is shutting down; retry later")

    def drain(self, reason: str) -> None:
        """Abort every queued job (shutdown)."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            try:
                job.abort(reason)
            except Exception:
                log.exception("could not abort %s", type(job).__name__)


@dataclass
class TaskJob:
    """Admin work (an enrollment, a forget) queued behind the requests."""

    work: Callable[[], None]
    on_abort: Callable[[str], None]

    def run(self) -> None:
        self.work()

    def abort(self, reason: str) -> None:
        self.on_abort(reason)


@dataclass
class UtteranceJob:
    """A microphone utterance: decide (identify or verify per microphone.mode) and hand it to the sinks."""

    service: DecisionService
    sinks: DecisionSinks
    device_id: str
    samples: np.ndarray
    received: float = field(default_factory=time.monotonic)

    def run(self) -> None:
        started = time.perf_counter()
        queued_ms = 1000 * (time.monotonic() - self.received)
        resp = self.service.utterance(self.samples)
        if resp is None:
            return
        resp.elapsed_ms = 1000 * (time.perf_counter() - started)
        self.sinks.publish_decision(resp.to_dict(self.device_id), "microphone")
        # where the time between the cut and the event goes (tests/mic_latency.py reads this)
        log.debug("microphone decision: %.2f s utterance, %.1f ms queued, %.1f ms to decide",
                  self.samples.size / TARGET_RATE, queued_ms, resp.elapsed_ms)

    def abort(self, reason: str) -> None:
        pass  # nobody waits for a microphone decision


class UtteranceSource:
    """What the microphone calls with each utterance (its on_utterance): queue it for the worker."""

    def __init__(self, worker: ModelWorker, service: DecisionService, sinks: DecisionSinks, device_id: str) -> None:
        self.worker, self.service, self.sinks, self.device_id = worker, service, sinks, device_id

    def __call__(self, samples: np.ndarray) -> bool:
        """False (utterance dropped, logged) when the worker is behind."""
        if self.worker.submit(UtteranceJob(self.service, self.sinks, self.device_id, samples)):
            return True
        log.warning("request queue full: microphone utterance dropped")
        return False
