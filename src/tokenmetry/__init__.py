"""tokenmetry: exact token usage, cost, latency, retries and rate-limit waits for LLM SDK calls.

>>> import tokenmetry
>>> tokenmetry.instrument()                    # doctest: +SKIP
>>> with tokenmetry.session("chat-42") as s:   # doctest: +SKIP
...     client.chat.completions.create(...)
>>> s.usage, s.cost, tokenmetry.stats()        # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__version__ = "0.1.0"

from .errors import BudgetExceeded, ConfigError, TokenmetryError
from .instrumentation import instrument, uninstrument, wrap
from .session import Session, SessionManager, current_session, session, sessions
from .usage import CallRecord, Cost, ModelStats, PerformanceSnapshot, TokenCount, Usage

__all__ = [
    "__version__",
    "instrument", "uninstrument", "wrap",
    "session", "current_session", "sessions", "stats", "on_record",
    "count_tokens", "price", "retry_hooks", "retry", "Budget",
    "Usage", "CallRecord", "Cost", "TokenCount", "PerformanceSnapshot", "ModelStats",
    "Session", "SessionManager",
    "TokenmetryError", "ConfigError", "BudgetExceeded",
]


def stats() -> PerformanceSnapshot:
    """The process's tokens per minute, work rate, throttling and rate-limit headroom, also per
    provider and per model."""
    from .call import recorder

    return recorder.stats.snapshot()


def on_record(callback: Callable[[CallRecord], Any]) -> Callable[[], None]:
    """Call ``callback(record)`` after every recorded call; returns a function that unsubscribes.

    A callback's exception is logged on the ``tokenmetry`` logger, never raised into the call.
    """
    from .call import recorder

    return recorder.subscribe(callback)


def __getattr__(name: str) -> Any:
    # counting, pricing, retries and budgets load their heavy dependencies only when first used
    if name == "count_tokens":
        from .counting import count_tokens

        return count_tokens
    if name == "price":
        from .pricing import price

        return price
    if name in ("retry_hooks", "retry"):
        from . import retries

        return getattr(retries, name)
    if name == "Budget":
        from .budget import Budget

        return Budget
    raise AttributeError(f"module 'tokenmetry' has no attribute {name!r}")
