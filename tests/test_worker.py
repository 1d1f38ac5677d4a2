"""The model worker: one job at a time, a bounded queue, a bug in a job never stops the loop, and at
shutdown every queued job is told (aborted) rather than lost."""

from __future__ import annotations

import threading
import time

import numpy as np

from edgeverify.app.counters import Counters
from edgeverify.app.sinks import DecisionSinks
from edgeverify.app.worker import LOCAL, ModelWorker, TaskJob, UtteranceSource


def test_bounded_queue_failing_job_and_shutdown_aborts() -> None:
    worker = ModelWorker(2)
    ran: list[str] = []
    aborted: list[tuple[str, str]] = []

    def job(name: str, fail: bool = False) -> TaskJob:
        def work() -> None:
            if fail:
                raise RuntimeError("a bug")
            ran.append(name)
        return TaskJob(work, lambda reason: aborted.append((name, reason)))

    assert worker.submit(job("bug", fail=True)) and worker.submit(job("a"))
    assert not worker.submit(job("over"))  # full: the submitter answers "busy" at once
    ticks = []
    stop = threading.Event()
    t = threading.Thread(target=worker.run, args=(stop.is_set, lambda: ticks.append(1), 0.02))
    t.start()
    deadline = time.monotonic() + 5
    while ran != ["a"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ran == ["a"]  # the failing job before it did not stop the loop
    stop.set()
    t.join(5)
    assert not t.is_alive() and len(ticks) >= 2
    # queued after the loop stopped: drained at the next shutdown, each one told why
    assert worker.submit(job("late1")) and worker.submit(job("late2"))
    worker.run(lambda: True, lambda: None)
    assert [n for n, _ in aborted] == ["late1", "late2"] and "shutting down" in aborted[0][1]
    assert ran == ["a"]


def test_microphone_utterance_dropped_when_the_worker_is_behind() -> None:
    worker = ModelWorker(1)
    source = UtteranceSource(worker, None, DecisionSinks(Counters()), "dev")  # type: ignore[arg-type]
    samples = np.zeros(16000, np.float32)
    assert source(samples) is True
    assert source(samples) is False  # dropped (logged), never blocks the microphone thread


def _recording_job(name: str, ran: list, refused: list, requester: str = "", lane: str = "network") -> TaskJob:
    return TaskJob(lambda: ran.append(name), lambda reason: refused.append(name), lane=lane, requester=requester)


def test_lanes_round_robin_and_a_full_queue_makes_room_for_another_requester() -> None:
    """The local lane (microphone) first; requesters take turns; a flood's newest job makes room for a
    requester with fewer; a per-requester cap refuses the excess at once."""
    worker = ModelWorker(4)
    ran: list[str] = []
    refused: list[str] = []
    for i in range(4):
        assert worker.submit(_recording_job(f"a{i}", ran, refused, "A"))
    assert not worker.submit(_recording_job("a4", ran, refused, "A"))  # full, and A holds it all: busy
    assert worker.submit(_recording_job("b0", ran, refused, "B"))  # B has none: A's newest makes room
    assert refused == ["a3"]
    assert worker.submit(_recording_job("c0", ran, refused, "C"))
    assert refused == ["a3", "a2"]
    assert not worker.submit(_recording_job("b1", ran, refused, "B"))  # B 1, A 2: a swap would not be fairer
    assert worker.submit(_recording_job("mic", ran, refused, lane=LOCAL))
    stop = threading.Event()
    t = threading.Thread(target=worker.run, args=(stop.is_set, lambda: stop.set() if len(ran) == 5 else None, 0.01))
    t.start()
    t.join(5)
    assert ran == ["mic", "a0", "b0", "c0", "a1"], ran

    capped = ModelWorker(8, per_requester=2)
    assert capped.submit(_recording_job("x0", ran, refused, "X")) and capped.submit(_recording_job("x1", ran, refused, "X"))
    assert not capped.submit(_recording_job("x2", ran, refused, "X"))
    assert capped.submit(_recording_job("y0", ran, refused, "Y")) and capped.queued("X") == 2 and capped.queued() == 3
