"""The one model thread: bounded, fair queues of typed jobs, run one at a time.

The model (and the profile cache) is used by this thread only: MQTT requests, microphone utterances and
admin work all queue here. A job is one small class per kind with run(), abort(reason) (dropped at
shutdown) and refuse(reason) (dropped to make room for another requester: answer "busy" now). A job
that cannot be queued is answered at once by the submitter ("busy"), never dropped silently.

Two lanes (`submit` reads a job's `lane` and `requester`):
* LOCAL -- the device's own microphone and work already recorded on the device: always served first, so
  network requests can never starve it (microphone utterances arrive at most in real time);
* NETWORK -- MQTT and admin requests, one queue per requester, served round robin. A requester holds at
  most `per_requester` of the `capacity` places; when every place is taken, a requester with fewer jobs
  takes the place of the newest job of the requester with the most (that job is refused "busy"). So one
  requester's flood gets "busy" for its excess while every other requester keeps being served.
  A requester is whatever identity the job names (mqtt.requests: the requestor_id the request carries,
  else its response topic): see docs/security.md for what that can and cannot tell apart.

The loop also wakes every `tick_s` and calls on_tick: the daemon pings the systemd watchdog there, so the
pings stop when this loop hangs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

import numpy as np

from ..core.audio import TARGET_RATE
from .decisions import DecisionService
from .sinks import DecisionSinks

log = logging.getLogger(__name__)

LOCAL = "local"
NETWORK = "network"


class Job(Protocol):
    def run(self) -> None:
        """Do the work on the worker thread (exceptions are logged; the worker lives on)."""

    def abort(self, reason: str) -> None:
        """Dropped unstarted at shutdown: tell whoever waits for it, if anyone does."""


def _refuse(job: Job, reason: str) -> None:
    """A queued job dropped for another requester's turn: its own refuse() (answer "busy"), else abort()."""
    refuse = getattr(job, "refuse", None)
    try:
        (refuse or job.abort)(reason)
    except Exception:
        log.exception("could not refuse %s", type(job).__name__)


class ModelWorker:
    def __init__(self, queue_size: int, per_requester: Optional[int] = None) -> None:
        self._capacity = queue_size
        self.per_requester = max(1, min(queue_size, per_requester or queue_size))
        self._cond = threading.Condition()
        self._local: deque[Job] = deque()
        self._network: OrderedDict[str, deque[Job]] = OrderedDict()  # requester -> jobs; order = whose turn
        self._queued = 0  # network jobs

    @property
    def capacity(self) -> int:
        return self._capacity

    def queued(self, requester: Optional[str] = None) -> int:
        """Network jobs waiting (of one requester, or all)."""
        with self._cond:
            if requester is None:
                return self._queued
            return len(self._network.get(requester, ()))

    def submit(self, job: Job) -> bool:
        """From any thread; False when the job cannot be queued (the caller answers "busy").

        The job's `lane` (default NETWORK) and `requester` (default "") decide where it goes."""
        lane = getattr(job, "lane", NETWORK)
        evicted: Optional[Job] = None
        with self._cond:
            if lane == LOCAL:
                if len(self._local) >= self._capacity:
                    return False
                self._local.append(job)
            else:
                who = str(getattr(job, "requester", "") or "")
                mine = self._network.get(who)
                held = len(mine) if mine is not None else 0
                if held >= self.per_requester:
                    return False
                if self._queued >= self._capacity:
                    greedy = max(self._network, key=lambda k: len(self._network[k]))
                    if len(self._network[greedy]) <= held + 1:
                        return False  # nobody would hold fewer after a swap: every share is full
                    evicted = self._network[greedy].pop()  # its newest: the oldest keep their turn
                    if not self._network[greedy]:
                        del self._network[greedy]
                    self._queued -= 1
                if mine is None:
                    mine = self._network[who] = deque()  # a newcomer's turn comes after those waiting
                mine.append(job)
                self._queued += 1
            self._cond.notify()
        if evicted is not None:
            log.warning("request queue full: the newest request of the requester with the most queued is "
                        "refused so that another requester gets a place")
            _refuse(evicted, f"{self._capacity} requests already queued; retry later")
        return True

    def _next(self, timeout: float) -> Optional[Job]:
        with self._cond:
            if not self._local and not self._queued:
                self._cond.wait(timeout)
            if self._local:
                return self._local.popleft()
            if not self._queued:
                return None
            who, jobs = next(iter(self._network.items()))
            job = jobs.popleft()
            self._queued -= 1
            del self._network[who]
            if jobs:
                self._network[who] = jobs  # to the back: round robin
            return job

    def run(self, should_stop: Callable[[], bool], on_tick: Callable[[], None], tick_s: float = 1.0) -> None:
        """Process jobs until should_stop(); the job in hand is always finished first, then the rest aborted."""
        while not should_stop():
            job = self._next(tick_s)
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
            job = self._next(0)
            if job is None:
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
    lane: str = NETWORK
    requester: str = "admin"  # admin requests come from the network: a requester of their own

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
    lane: str = LOCAL  # the device's own microphone is never queued behind network requests

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
