"""The embedding worker: one thread, a bounded queue, round-robin between connections.

Every queued job holds an utterance's samples, so the queue is what a client could make us hold: it is
bounded per connection and in total (a client over either is refused at once and told so), the
connections take turns (one that queues a lot cannot delay another's transcript by more than one job
per connection), and a connection that goes away takes its queued jobs with it. When the total is
reached, a connection with fewer jobs takes the place of the newest job of the one with the most: a
client that opens several connections to fill the queue cannot lock another client out.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from typing import Any, Callable, Hashable, Optional

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """Refused: the connection or the whole proxy has as many embeddings queued as it may."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _Job:
    __slots__ = ("owner", "fn", "future", "loop")

    def __init__(self, owner: Hashable, fn: Callable[[], Any], future: asyncio.Future, loop: asyncio.AbstractEventLoop):
        self.owner, self.fn, self.future, self.loop = owner, fn, future, loop


class EmbedQueue:
    def __init__(self, max_total: int, max_per_owner: int, name: str = "wyoming-embed") -> None:
        self.max_total, self.max_per_owner = max_total, max_per_owner
        self._cond = threading.Condition()
        self._queued: dict[Hashable, collections.deque[_Job]] = {}
        self._turns: collections.deque[Hashable] = collections.deque()  # owners with queued jobs, in turn
        self._running: Optional[_Job] = None
        self._closed = False
        self.refused = 0
        self.evicted = 0  # queued jobs that made room for a connection with fewer
        self.dropped = 0  # queued jobs of connections that left
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    # -- loop side --------------------------------------------------------------------------------------

    def submit(self, owner: Hashable, fn: Callable[[], Any]) -> asyncio.Future:
        """Queue fn for the worker; its result arrives in the returned future. QueueFull when over a bound."""
        loop = asyncio.get_running_loop()
        with self._cond:
            mine = len(self._queued.get(owner, ())) + (self._running is not None and self._running.owner == owner)
            if mine >= self.max_per_owner:
                self.refused += 1
                raise QueueFull(f"{mine} utterance(s) of this connection are still being identified (at most {self.max_per_owner})")
            evicted = None
            if self.pending_locked() >= self.max_total:
                evicted = self._evict_for(owner, mine)
                if evicted is None:
                    self.refused += 1
                    raise QueueFull(f"{self.max_total} utterances are being identified; retry later")
            job = _Job(owner, fn, loop.create_future(), loop)
            job.future.add_done_callback(_retrieved)
            if owner not in self._queued:
                self._queued[owner] = collections.deque()
                self._turns.append(owner)
            self._queued[owner].append(job)
            self._cond.notify()
        if evicted is not None:
            evicted.fn = None  # type: ignore[assignment]
            evicted.future.set_exception(QueueFull("the identification queue is full and another connection "
                                                   "had fewer utterances in it; retry later"))
        return job.future

    def _evict_for(self, owner: Hashable, mine: int) -> Optional[_Job]:
        """(locked) The newest queued job of the connection holding the most, if it holds more than
        `owner` would with its new job; None if there is none."""
        def held(o: Hashable) -> int:
            return len(self._queued[o]) + (self._running is not None and self._running.owner == o)

        victim = max((o for o in self._queued if o != owner), key=held, default=None)
        if victim is None or held(victim) <= mine + 1:
            return None
        queue = self._queued[victim]
        job = queue.pop()
        if not queue:
            del self._queued[victim]
            self._turns.remove(victim)
        self.evicted += 1
        return job

    def drop(self, owner: Hashable) -> int:
        """The owner left: its queued jobs are removed (their samples freed) and their futures cancelled;
        a running one finishes but its result is not delivered. Returns how many were dropped."""
        with self._cond:
            jobs = self._queued.pop(owner, None) or ()
            if jobs:
                self._turns.remove(owner)
            running = self._running if self._running is not None and self._running.owner == owner else None
        for job in jobs:
            job.fn = None  # type: ignore[assignment]
            job.future.cancel()
        if running is not None:
            running.future.cancel()
        self.dropped += len(jobs)
        return len(jobs)

    def pending(self, owner: Optional[Hashable] = None) -> int:
        with self._cond:
            if owner is None:
                return self.pending_locked()
            return len(self._queued.get(owner, ())) + (self._running is not None and self._running.owner == owner)

    def pending_locked(self) -> int:
        return sum(len(q) for q in self._queued.values()) + (self._running is not None)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            owners = list(self._queued)
            self._cond.notify_all()
        for owner in owners:
            self.drop(owner)

    # -- worker thread ---------------------------------------------------------------------------------

    def _next(self) -> Optional[_Job]:
        with self._cond:
            while not self._turns and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            owner = self._turns.popleft()
            queue = self._queued[owner]
            job = queue.popleft()
            if queue:
                self._turns.append(owner)  # its next job waits for everyone else's turn
            else:
                del self._queued[owner]
            self._running = job
            return job

    def _work(self) -> None:
        while True:
            job = self._next()
            if job is None:
                return
            try:
                result, error = job.fn(), None
            except BaseException as exc:  # delivered to the waiting session
                result, error = None, exc
            with self._cond:
                self._running = None
            try:
                job.loop.call_soon_threadsafe(_deliver, job.future, result, error)
            except RuntimeError:  # the loop is closed (shutting down)
                pass
            job.fn = None  # type: ignore[assignment]


def _deliver(future: asyncio.Future, result: Any, error: Optional[BaseException]) -> None:
    if future.done():  # cancelled: the connection left
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _retrieved(future: asyncio.Future) -> None:
    """Mark an exception as seen: the session that would await it may have gone (no warning at exit)."""
    if not future.cancelled():
        future.exception()
