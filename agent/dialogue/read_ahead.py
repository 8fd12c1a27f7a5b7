"""Reading a caller's turn ahead of its end: on a voice call the words are known at the first pause (speculative
speech recognition), a few hundred milliseconds before the silence that ends the turn; the model's reading
starts then, in its own thread, and the dialogue takes it when the turn is final with the same words.

One `ReadAhead` per call. Only the latest guess is kept: if the caller goes on talking, the words change and
the guess is dropped (its thread finishes and is ignored); a turn that was never guessed is read on the spot.
With a shared `ModelQueue` (a server's calls), the guesses of every call wait behind any turn a caller has
finished, a guess whose turn ends is hurried to the front, and a caller waits no longer than the queue's
`wait_s` for a reading (the rules read the turn instead).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor

from agent.dialogue.model_queue import ModelQueue
from agent.understanding.action import TurnAction

log = logging.getLogger(__name__)

Reader = Callable[[str | None, str], TurnAction | None]


class ReadAhead:
    """A reader that can start reading a turn before it is asked for it."""

    def __init__(self, read: Reader, queue: ModelQueue | None = None) -> None:
        self._read = read
        self._queue = queue
        self._pool: ThreadPoolExecutor | None = None
        self._guess: tuple[tuple[str | None, str], Future[TurnAction | None]] | None = None
        self.hits = 0  # turns whose reading was ready (or under way) when the turn ended

    def prefetch(self, agent_text: str | None, caller_text: str) -> None:
        """Start reading these words (after the agent said `agent_text`) in the background."""
        key = (agent_text, caller_text)
        if self._guess is not None and self._guess[0] == key:
            return
        if self._guess is not None:
            self._guess[1].cancel()  # the words went on: a guess not started yet need not run
        if self._queue is not None:
            future = self._queue.submit(lambda: self._read(agent_text, caller_text), waited_on=False)
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="read-ahead")
            future = self._pool.submit(self._read, agent_text, caller_text)
        self._guess = (key, future)

    def __call__(self, agent_text: str | None, caller_text: str) -> TurnAction | None:
        """The reading of the final words: the guess when it was for these words, else read now."""
        guess, self._guess = self._guess, None
        if guess is not None and guess[0] == (agent_text, caller_text) and not guess[1].cancelled():
            self.hits += 1
            with contextlib.suppress(CancelledError):  # dropped by the queue's bound after all: read it now
                if self._queue is not None:
                    self._queue.hurry(guess[1])
                    return self._queue.wait(guess[1])
                return guess[1].result()
        if guess is not None:
            guess[1].cancel()
        if self._queue is not None:
            return self._queue.wait(self._queue.submit(lambda: self._read(agent_text, caller_text), waited_on=True))
        return self._read(agent_text, caller_text)

    def close(self) -> None:
        """Stop the reading thread (a reading under way finishes; nothing waits for it)."""
        if self._guess is not None:
            self._guess[1].cancel()
            self._guess = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
