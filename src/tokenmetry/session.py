"""Sessions: who a call belongs to, and the running totals of each conversation.

A session is scoped with contextvars, so threads and asyncio tasks each see their own; calls made
outside any session go to the process-wide default session. Totals are exact however many calls a
session makes; the per-call history is bounded (``history_limit``).
"""

from __future__ import annotations

import contextvars
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .history import CallHistory
from .pending import apply_pending
from .rate import CallSums, Totals
from .usage import CallRecord, Cost, Usage

if TYPE_CHECKING:
    from .budget import Budget
    from .call import Call
    from .pricing import Quote

__all__ = ["Session", "SessionManager", "current_session", "session", "sessions"]

DEFAULT_SESSION_ID = "default"
_MAX_TRACKED_SESSIONS = 10_000


class Session:
    """Usage, cost and history of one conversation (or any unit of work you name).

    >>> import tokenmetry
    >>> with tokenmetry.session("chat-42") as s:
    ...     pass  # SDK calls made here are attributed to s
    >>> s.usage.total_tokens
    0
    """

    def __init__(self, session_id: str, history_limit: int = 1000, budget: Budget | None = None,
                 tpm_window_s: int = 60) -> None:
        self.id = session_id
        self.budget = budget
        self._lock = threading.Lock()
        self._history = CallHistory(history_limit)
        self._window_s = tpm_window_s
        self._turn_var: contextvars.ContextVar[int | None] = contextvars.ContextVar(
            f"tokenmetry_turn_{session_id}", default=None)
        self._clear()

    def _clear(self) -> None:
        self._totals = Totals(self._window_s)
        # billed counts per quote (the prices of a call), [reasoning billed with the output, apart]:
        # priced when read, which gives exactly the sum of the calls' costs (see pricing.Quote)
        self._billed: dict[Quote, list[list[int] | None]] = {}
        self._currency: str | None = None
        self._unpriced_calls = 0
        self._turns = 0
        self._loose_calls = 0  # calls made outside any explicit turn: each is its own turn
        self._history.clear()

    # ----------------------------------------------------------------- recording (called by the lifecycle)
    def _add_calls(self, calls: list[Call], sums: CallSums) -> None:
        """Add finished calls of this session (``sums``: what they sum to, and what they are billed)."""
        billed = sums.billed()
        with self._lock:
            self._loose_calls += sums.loose
            self._unpriced_calls += sums.unpriced
            for quote, apart, counts in billed:
                currency = self._currency
                if currency is None:
                    currency = self._currency = quote.currency
                elif quote.currency != currency:  # the options changed currency mid-session
                    from .call import warn_once

                    self._unpriced_calls += counts[-1]  # the requests count: one per call
                    warn_once("session-currency", "tokenmetry: session %r has calls priced in %s and %s; "
                              "the later ones are left out of its cost and counted as unpriced", self.id,
                              currency, quote.currency)
                    continue
                kept = self._billed.get(quote)
                if kept is None:
                    kept = self._billed[quote] = [None, None]
                mine = kept[apart]
                if mine is None:
                    kept[apart] = counts
                else:
                    for index, count in enumerate(counts):
                        mine[index] += count
            self._totals.add_sums(sums)
            self._history.add(calls)

    def _add_retry(self, slept_s: float, cause: str) -> None:
        """A wait between whole calls of a retry loop: the session's, not any one call's."""
        with self._lock:
            self._totals.add_retry(slept_s, cause)

    # ----------------------------------------------------------------- reading
    @property
    def usage(self) -> Usage:
        """Exact totals of every call this session made (history bound or not)."""
        apply_pending()
        with self._lock:
            return self._totals.usage()

    @property
    def cost(self) -> Cost | None:
        """Total cost of the priced calls; ``None`` when no call could be priced."""
        apply_pending()
        with self._lock:
            return self._cost()

    def _cost(self) -> Cost | None:
        total: Cost | None = None
        for quote, billed in self._billed.items():
            for apart, counts in enumerate(billed):
                if counts is not None:
                    cost = quote.cost(counts, bool(apart))
                    total = cost if total is None else total + cost
        return total

    @property
    def calls(self) -> list[CallRecord]:
        """The most recent calls, oldest first (at most ``history_limit``)."""
        apply_pending()
        with self._lock:
            return self._history.records(self.id)

    @property
    def call_count(self) -> int:
        apply_pending()
        with self._lock:
            return self._totals.requests

    @property
    def throttle_wait_s(self) -> float:
        apply_pending()
        with self._lock:
            return self._totals.throttle_wait_s

    def tokens_per_minute(self) -> float:
        apply_pending()
        with self._lock:
            return self._totals.window.per_minute(time.time())

    def summary(self) -> dict[str, Any]:
        """Totals, per-call averages and rates as one plain dict."""
        apply_pending()
        now = time.time()
        with self._lock:
            totals = self._totals
            calls = totals.requests
            usage = totals.usage()
            cost = self._cost()

            def per_call(value: float | None) -> float | None:
                return None if value is None or calls == 0 else value / calls

            return {
                "session_id": self.id,
                "calls": calls,
                "turns": self._turns + self._loose_calls,
                "errors": totals.errors,
                "retries": totals.retries,
                "usage": usage.to_dict(),
                "averages_per_call": {
                    "input_tokens": per_call(usage.input_tokens),
                    "output_tokens": per_call(usage.output_tokens),
                    "total_tokens": per_call(usage.total_tokens),
                    "cache_read_tokens": per_call(usage.cache_read_tokens),
                    "reasoning_tokens": per_call(usage.reasoning_tokens),
                    "duration_s": per_call(totals.duration_s),
                    "cost": None if cost is None or calls == 0 else str(cost.amount / Decimal(calls)),
                },
                "tokens_per_minute": totals.window.per_minute(now),
                "work_rate_tpm": totals.work_rate_tpm(),
                "throttle_wait_s": totals.throttle_wait_s,
                "retry_wait_s": totals.retry_wait_s,
                "cost": None if cost is None else cost.to_dict(),
                "unpriced_calls": self._unpriced_calls,
            }

    def reset(self) -> None:
        """Forget every total and the history (the session stays in use)."""
        apply_pending()
        with self._lock:
            self._clear()

    # ----------------------------------------------------------------- turns
    @contextmanager
    def turn(self) -> Iterator[int]:
        """Group the calls of one user turn: ``summary()["turns"]`` counts turns, not calls."""
        with self._lock:
            self._turns += 1
            number = self._turns
        token = self._turn_var.set(number)
        try:
            yield number
        finally:
            self._turn_var.reset(token)

    # ----------------------------------------------------------------- scoping
    def __enter__(self) -> Session:
        # the reset token lives in the context too, so one Session may be entered by many
        # threads and tasks at once
        token = _current.set(self)
        _scope_tokens.set((*_scope_tokens.get(), token))
        return self

    def __exit__(self, *exc: object) -> None:
        stack = _scope_tokens.get()
        _scope_tokens.set(stack[:-1])
        _current.reset(stack[-1])

    async def __aenter__(self) -> Session:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__()

    def __repr__(self) -> str:
        return f"Session({self.id!r}, calls={self.call_count}, usage={self.usage!r})"


class SessionManager:
    """The sessions known to the process, by id (the most recent 10,000 are kept)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self.history_limit = 1000
        self.tpm_window_s = 60
        self.default = Session(DEFAULT_SESSION_ID, self.history_limit)

    def configure(self, history_limit: int, tpm_window_s: int) -> None:
        self.history_limit = history_limit
        self.tpm_window_s = tpm_window_s
        with self.default._lock:
            self.default._history.resize(history_limit)

    def open(self, session_id: str | None = None, budget: Budget | None = None) -> Session:
        """The session with this id (created on first use); a fresh id when ``None``."""
        if session_id is None:
            session_id = uuid.uuid4().hex
        elif not isinstance(session_id, str) or not session_id:
            from .errors import TokenmetryError

            raise TokenmetryError(f"session id must be a non-empty string, got {session_id!r}")
        if session_id == DEFAULT_SESSION_ID:
            return self.default
        with self._lock:
            found = self._sessions.get(session_id)
            if found is None:
                found = self._sessions[session_id] = Session(
                    session_id, self.history_limit, tpm_window_s=self.tpm_window_s)
                while len(self._sessions) > _MAX_TRACKED_SESSIONS:
                    self._sessions.popitem(last=False)
            else:
                self._sessions.move_to_end(session_id)
        if budget is not None:
            found.budget = budget
        return found

    def get(self, session_id: str) -> Session | None:
        if session_id == DEFAULT_SESSION_ID:
            return self.default
        with self._lock:
            return self._sessions.get(session_id)

    def reset(self, session_id: str) -> None:
        found = self.get(session_id)
        if found is not None:
            found.reset()

    def ids(self) -> list[str]:
        with self._lock:
            return [DEFAULT_SESSION_ID, *self._sessions]

    def clear(self) -> None:
        """Forget every session and reset the default one."""
        apply_pending()  # calls finished before clear() are forgotten with their sessions
        with self._lock:
            self._sessions.clear()
        self.default.reset()


sessions = SessionManager()
_current: contextvars.ContextVar[Session | None] = contextvars.ContextVar("tokenmetry_session", default=None)
_scope_tokens: contextvars.ContextVar[tuple[contextvars.Token[Session | None], ...]] = contextvars.ContextVar(
    "tokenmetry_session_scopes", default=())


def current_session() -> Session:
    """The session in scope here, or the process-wide default session."""
    return _current.get() or sessions.default


def session(session_id: str | None = None, *, budget: Budget | None = None) -> Session:
    """Open (or reopen) a session; use it as ``with``/``async with`` to attribute calls to it."""
    return sessions.open(session_id, budget)
