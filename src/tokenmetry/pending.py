"""Finished calls not yet added to the sessions, statistics, price totals and metric instruments.

The call lifecycle does per call only what cannot wait: the span, a budget, the sinks and
``on_record`` callbacks (pricing the call first when any of them needs the cost). Adding a call to
its session and the process statistics, pricing it (when nothing needed the cost at once) and
recording its metric points happen in batches, in the thread that finishes every ``FOLD_BATCH``-th
call, which costs far less CPU than doing it between two SDK calls that have evicted tokenmetry's
code from the processor's caches. The public readers of those totals (a session's properties,
``stats()``, ``unpriced_count()``, ``unpriced_models()``, the gauges, and every metric collection
through tokenmetry's observable callbacks) apply the pending calls first (:func:`apply_pending`),
so what they return is exact. Two exceptions, by design: a reader running inside a batch (an
``on_unpriced`` hook) sees the calls applied before it, and a call finished by a finaliser (a
stream garbage-collected unfinished) waits for the next batch, the next call or the next reader,
since a finaliser may run while this thread holds a lock the batch needs. Calls still pending at
interpreter exit are applied then.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["apply_pending", "set_applier", "FOLD_BATCH"]

#: calls held before the finishing thread applies them; readers apply at once whatever is held
FOLD_BATCH = 16


def _nothing() -> None:
    return None


_apply: Callable[[], None] = _nothing


def set_applier(apply: Callable[[], None]) -> None:
    """Set by the call lifecycle (:mod:`tokenmetry.call`) when its recorder is created."""
    global _apply
    _apply = apply


def apply_pending() -> None:
    """Add every finished call still held to its session and the statistics (readers call this)."""
    _apply()
