"""Model work of every call, in order of urgency: a turn a caller is waiting on before any speculative reading.

On a CPU the model reads one turn at a time fastest (its threads already use the cores), so the calls' model
work goes through one queue with one worker. A reading started at a caller's pause (`ReadAhead`) is a guess
and waits behind any turn a caller has finished; when its own turn ends it is hurried to the front. Guesses
are bounded: past `max_guesses` waiting, the oldest is dropped (its turn is then read when it ends), so a
burst of callers cannot queue up work nobody is waiting for yet. A caller's wait is bounded too (`wait`):
past `wait_s` — behind other calls' work and decoding together — the turn goes on without the model.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

WAITED_ON, GUESS = 0, 1


@dataclass(order=True)
class _Entry:
    priority: int
    seq: int
    job: _Job = field(compare=False)


@dataclass(eq=False)
class _Job:
    future: Future[Any]
    work: Callable[[], Any]
    entries: list[_Entry] = field(default_factory=list)  # its places in the heap (a hurried job has two)


class ModelQueue:
    """A priority queue of model work with its own worker threads (one by default)."""

    def __init__(
        self, workers: int = 1, max_guesses: int = 8, name: str = "model-work", wait_s: float | None = None
    ) -> None:
        """`wait_s`: the longest a caller waits on work (`wait`); None: as long as it takes."""
        self.max_guesses = max_guesses
        self.wait_s = wait_s
        self.late = 0  # waits that ran out: the turn went on without the model
        self._heap: list[_Entry] = []
        self._jobs: dict[Future[Any], _Job] = {}
        self._seq = itertools.count()
        self._lock = threading.Condition()
        self.dropped = 0  # guesses dropped unread (the bound)
        # Started with the first work: a server without model understanding never runs them.
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(workers)]

    def submit(self, work: Callable[[], T], *, waited_on: bool) -> Future[T]:
        """Queue `work`; a caller waiting on it goes before every guess. Its result comes through the Future."""
        future: Future[T] = Future()
        job = _Job(future, work)
        with self._lock:
            for thread in self._threads:
                if not thread.is_alive() and thread.ident is None:
                    thread.start()
            self._push(job, WAITED_ON if waited_on else GUESS)
            self._jobs[future] = job
            if not waited_on:
                self._bound_guesses()
            self._lock.notify()
        return future

    def wait(self, future: Future[T]) -> T | None:
        """The result of work a caller is waiting on, or None once `wait_s` has passed (counted from this
        call: its wait behind other calls' work and its own decoding together). Work not started by then is
        dropped; work under way finishes and is ignored (the reader's own time limit ends it)."""
        try:
            return future.result(timeout=self.wait_s)
        except TimeoutError:
            future.cancel()
            with self._lock:
                self._jobs.pop(future, None)
                self.late += 1
            log.info("the model's work took over %.2f s with the queue; the turn goes on without it", self.wait_s)
            return None

    def hurry(self, future: Future[Any]) -> None:
        """The turn this work guessed at has ended: its caller is waiting now."""
        with self._lock:
            job = self._jobs.get(future)
            if job is not None and all(entry.priority == GUESS for entry in job.entries):
                self._push(job, WAITED_ON)
                self._lock.notify()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._jobs)

    def _push(self, job: _Job, priority: int) -> None:
        entry = _Entry(priority, next(self._seq), job)
        job.entries.append(entry)
        heapq.heappush(self._heap, entry)

    def _bound_guesses(self) -> None:
        guesses = sorted(
            (e for e in self._heap if e.priority == GUESS and len(e.job.entries) == 1 and e.job.future in self._jobs),
            key=lambda e: e.seq,
        )
        for entry in guesses[: max(0, len(guesses) - self.max_guesses)]:
            self._jobs.pop(entry.job.future, None)
            entry.job.future.cancel()
            self.dropped += 1

    def _run(self) -> None:
        while True:
            with self._lock:
                job = self._next_job()
            if not job.future.set_running_or_notify_cancel():
                continue  # cancelled while it waited
            try:
                job.future.set_result(job.work())
            except BaseException as exc:  # the caller of result() sees it; the worker goes on
                job.future.set_exception(exc)

    def _next_job(self) -> _Job:
        while True:
            while not self._heap:
                self._lock.wait()
            job = heapq.heappop(self._heap).job
            if self._jobs.pop(job.future, None) is not None:
                return job  # a job's second (hurried) entry, or one dropped by the bound, is skipped
