"""Retry accounting for retry loops that tenacity runs: the user's own, and google-genai's.

``retry_hooks()`` gives ``before_sleep`` / ``before`` hooks for any ``tenacity.Retrying``,
``AsyncRetrying`` or ``@retry``: ``before_sleep`` notes when a backoff sleep starts and why (the
status and the server's ``Retry-After``), and the ``before`` hook of the next attempt measures how
long the sleep really took on the monotonic clock. No sleep function is replaced, so sync and async
loops are handled alike.

Where the wait goes: inside an SDK call (google-genai's own tenacity loop) it belongs to that call
(span event, ``CallRecord.retries`` / ``throttle_wait_s``). Around whole SDK calls (the user's loop)
each attempt is its own call and the wait belongs to the logical operation: it is added to the
session in scope and to ``stats()`` (under the provider and model of the attempt that failed), to the
retry metrics, and becomes a ``tokenmetry.retry`` event on the span current in the user's code, if any.

``@tokenmetry.retry(...)`` is a ready tenacity decorator: it retries 429, 408, 409, 5xx, 529 and
connection errors, waits what the server asked (``retry-after-ms``, ``retry-after`` in seconds or as
an HTTP date, Google's ``RetryInfo.retryDelay``) or else a jittered exponential backoff, and records
every wait through the same hooks.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

__all__ = ["retry_hooks", "retry", "retry_after_seconds", "retry_cause", "error_facts", "is_retryable",
           "RetryAfterWait"]

_perf = time.perf_counter
F = TypeVar("F", bound=Callable[..., Any])
_RETRYABLE_STATUS = frozenset({408, 409, 429})
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


# ----------------------------------------------------------------------------- what an error says
def retry_after_seconds(headers: Any) -> float | None:
    """What the server asked for: ``retry-after-ms``, else ``retry-after`` (seconds or HTTP date)."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            return float(value) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def google_retry_delay(details: Any) -> float | None:
    """``retryDelay`` of a ``google.rpc.RetryInfo`` detail in a Google error body (e.g. ``"3.5s"``)."""
    if isinstance(details, Mapping):
        error = details.get("error", details)
        items = error.get("details") if isinstance(error, Mapping) else None
    else:
        items = details
    if not isinstance(items, list):
        return None
    for item in items:
        if isinstance(item, Mapping) and str(item.get("@type", "")).endswith("google.rpc.RetryInfo"):
            match = _DURATION.match(str(item.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


def retry_cause(status: int | None) -> str:
    """The cause a retry is filed under: throttle (429), overloaded (529), server_error, connection."""
    if status is None:
        return "connection"
    if status == 429:
        return "throttle"
    if status == 529:
        return "overloaded"
    return "server_error"


def error_facts(error: BaseException | None) -> tuple[int | None, float | None]:
    """(HTTP status, seconds the server asked to wait) of an SDK exception, where it says."""
    if error is None:
        return None, None
    status = getattr(error, "status_code", None)  # openai, anthropic
    if not isinstance(status, int):
        code = getattr(error, "code", None)  # google-genai APIError
        status = code if isinstance(code, int) and 100 <= code < 600 else None
    response = getattr(error, "response", None)
    retry_after = retry_after_seconds(getattr(response, "headers", None))
    if retry_after is None:
        retry_after = google_retry_delay(getattr(error, "details", None))
    return status, retry_after


def is_retryable(error: BaseException) -> bool:
    """429, 408, 409, 5xx (529 included) and connection or timeout failures."""
    status, _ = error_facts(error)
    if status is not None:
        return status in _RETRYABLE_STATUS or status >= 500
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(names & {"APIConnectionError", "APITimeoutError", "TransportError", "TimeoutException"})


# ----------------------------------------------------------------------------- the hooks
def _note_pending(retry_state: Any) -> None:
    outcome = retry_state.outcome
    error = outcome.exception() if outcome is not None and outcome.failed else None
    status, retry_after = error_facts(error)
    retry_state._tokenmetry_pending = (_perf(), status, retry_after, None if error is None else id(error))


def _settle_pending(retry_state: Any) -> None:
    pending = getattr(retry_state, "_tokenmetry_pending", None)
    if pending is None:
        return
    retry_state._tokenmetry_pending = None
    started, status, retry_after, error_id = pending
    from .call import recorder

    # numbered like the SDKs' own retries: 1 is the first retry (tenacity's attempt 2)
    recorder.note_loop_retry(attempt=retry_state.attempt_number - 1, status=status, retry_after_s=retry_after,
                             slept_s=_perf() - started, cause=retry_cause(status), error_id=error_id)


def retry_hooks(*, before: Callable[[Any], Any] | None = None,
                before_sleep: Callable[[Any], Any] | None = None) -> dict[str, Callable[[Any], None]]:
    """Keyword arguments for ``tenacity.Retrying`` / ``AsyncRetrying`` / ``@retry`` that record
    every backoff sleep. Hooks of your own can be passed and are called after tokenmetry's.

    >>> import tenacity, tokenmetry
    >>> for attempt in tenacity.Retrying(stop=tenacity.stop_after_attempt(3),
    ...                                  **tokenmetry.retry_hooks()):  # doctest: +SKIP
    ...     with attempt:
    ...         client.chat.completions.create(...)
    """

    def hook_before(retry_state: Any) -> None:
        try:
            _settle_pending(retry_state)
        except Exception:
            _hook_failed()
        if before is not None:
            before(retry_state)

    def hook_before_sleep(retry_state: Any) -> None:
        try:
            _note_pending(retry_state)
        except Exception:
            _hook_failed()
        if before_sleep is not None:
            before_sleep(retry_state)

    return {"before": hook_before, "before_sleep": hook_before_sleep}


def _hook_failed() -> None:
    from .call import report_failure

    report_failure("retry-hook", "a tenacity retry hook")


# ----------------------------------------------------------------------------- the decorator
class RetryAfterWait:
    """A tenacity wait: the server's requested delay when it gave one, else jittered exponential."""

    def __init__(self, initial_delay: float = 0.5, max_delay: float = 60.0, multiplier: float = 2.0,
                 jitter: bool = True, max_retry_after: float = 300.0) -> None:
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self.multiplier = multiplier
        self.jitter = jitter
        self.max_retry_after = max_retry_after

    def __call__(self, retry_state: Any) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None and outcome.failed else None
        _, retry_after = error_facts(error)
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        ceiling = min(self.max_delay, self.initial_delay * self.multiplier ** (retry_state.attempt_number - 1))
        if not self.jitter:
            return ceiling
        # "equal jitter": at least half the backoff, so retries never stampede back at once
        return ceiling / 2 + random.uniform(0, ceiling / 2)


def retry(fn: F | None = None, *, attempts: int = 5, initial_delay: float = 0.5, max_delay: float = 60.0,
          multiplier: float = 2.0, jitter: bool = True, max_retry_after: float = 300.0,
          retry_on: Callable[[BaseException], bool] | None = None) -> Any:
    """Retry a function (sync or async) on retryable LLM API errors, recording every wait.

    The last error is re-raised as the SDK raised it (``reraise=True``).

    >>> @tokenmetry.retry(attempts=4)  # doctest: +SKIP
    ... def ask(question): return client.chat.completions.create(...)
    """
    from .errors import TokenmetryError

    if not isinstance(attempts, int) or attempts < 1:
        raise TokenmetryError(f"tokenmetry.retry: attempts must be an integer >= 1, got {attempts!r}")
    for name, value in (("initial_delay", initial_delay), ("max_delay", max_delay),
                        ("multiplier", multiplier), ("max_retry_after", max_retry_after)):
        if not isinstance(value, (int, float)) or value < 0:
            raise TokenmetryError(f"tokenmetry.retry: {name} must be a number >= 0, got {value!r}")
    import tenacity

    decorator = tenacity.retry(  # type: ignore[call-overload]  # hooks passed as **kwargs
        stop=tenacity.stop_after_attempt(attempts),
        wait=RetryAfterWait(initial_delay, max_delay, multiplier, jitter, max_retry_after),
        retry=tenacity.retry_if_exception(retry_on or is_retryable),
        reraise=True,
        **retry_hooks(),
    )
    return decorator(fn) if fn is not None else decorator
