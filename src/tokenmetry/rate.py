"""Process-wide throughput and throttling figures: tokens per minute, work rate, retries,
throttle wait and rate-limit headroom, per process, per provider and per (provider, model).

The tokens-per-minute window is a fixed ring of one-second buckets read against the clock, so
it decays to 0 when idle and its memory is O(window), whatever the call rate.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from .pending import apply_pending
from .usage import ModelStats, PerformanceSnapshot, Usage

if TYPE_CHECKING:
    from .call import Call

__all__ = ["RateWindow", "ProcessStats"]


class RateWindow:
    """Tokens completed in the last ``window_s`` seconds, in one-second buckets.

    Not locked: the owner (:class:`ProcessStats`) serialises ``add``.
    """

    __slots__ = ("window_s", "_seconds", "_tokens")

    def __init__(self, window_s: int = 60) -> None:
        self.window_s = window_s
        self._seconds = [-1] * window_s  # which wall-clock second each bucket currently holds
        self._tokens = [0] * window_s

    def add(self, tokens: int, now: float) -> None:
        """Add tokens completed at ``now`` (a call's end: calls are applied in batches, so ``now``
        may be a little in the past, but never older than a bucket's current second)."""
        second = int(now)
        index = second % self.window_s
        held = self._seconds[index]
        if held != second:
            if held > second:
                return  # a whole window older than tokens already counted: out of the window
            self._seconds[index] = second
            self._tokens[index] = tokens
        else:
            self._tokens[index] += tokens

    def total(self, now: float) -> int:
        oldest = int(now) - self.window_s
        return sum(t for s, t in zip(self._seconds, self._tokens) if s > oldest)

    def per_minute(self, now: float) -> float:
        return self.total(now) * 60.0 / self.window_s


class _Tally:
    """Running totals for one key (the process, a provider, or a provider/model pair)."""

    __slots__ = (
        "requests", "errors", "retries", "throttle_events", "throttle_wait_s", "retry_wait_s",
        "input", "output", "cache_read", "cache_write", "reasoning", "tool", "busy_s", "window",
    )

    def __init__(self, window_s: int) -> None:
        self.requests = self.errors = self.retries = self.throttle_events = 0
        self.throttle_wait_s = self.retry_wait_s = self.busy_s = 0.0
        self.input = self.output = 0
        self.cache_read: int | None = None
        self.cache_write: int | None = None
        self.reasoning: int | None = None
        self.tool: int | None = None
        self.window = RateWindow(window_s)

    def work_rate_tpm(self) -> float:
        return 60.0 * (self.input + self.output) / self.busy_s if self.busy_s > 0 else 0.0

    def usage(self) -> Usage:
        return Usage(self.input, self.output, self.cache_read, self.cache_write, self.reasoning, self.tool)

    def stats(self, now: float, rate_limits: dict[str, Any] | None = None) -> ModelStats:
        return ModelStats(
            tokens_per_minute=self.window.per_minute(now),
            work_rate_tpm=self.work_rate_tpm(),
            throttle_wait_s=self.throttle_wait_s,
            throttle_events=self.throttle_events,
            retries=self.retries,
            requests=self.requests,
            errors=self.errors,
            usage=self.usage(),
            rate_limit_remaining=dict(rate_limits or {}),
            retry_wait_s=self.retry_wait_s,
        )


def model_key(provider: str, model: str | None) -> str:
    return f"{provider}/{model or 'unknown'}"


class ProcessStats:
    """The sink behind :func:`tokenmetry.stats`: one lock, three tallies per call."""

    def __init__(self, window_s: int = 60) -> None:
        self._lock = threading.Lock()
        self._window_s = window_s
        self._process = _Tally(window_s)
        self._providers: dict[str, _Tally] = {}
        self._models: dict[tuple[str, str | None], _Tally] = {}
        # latest rate-limit header values per "provider/model"
        self._rate_limits: dict[str, dict[str, Any]] = {}

    def add(self, call: Call) -> None:
        """Add a finished call to the process, its provider and its (provider, model) tallies."""
        now = call.started_at + call.duration_s  # the call's end: the tokens-per-minute second
        name = call.provider
        model = call.response_model or call.request_model
        # every call passes here: read the call once, then update the three tallies in one loop
        failed = call.error_type is not None
        retries = call.retries
        throttle_events = call.throttle_events
        throttle_wait_s = call.throttle_wait_s
        retry_wait_s = call.retry_wait_s
        input_tokens = call.input_tokens
        output_tokens = call.output_tokens
        tokens = input_tokens + output_tokens
        duration_s = call.duration_s
        cache_read = call.cache_read_tokens
        cache_write = call.cache_write_tokens
        reasoning = call.reasoning_tokens
        tool = call.tool_tokens
        second = int(now)  # the TPM bucket, the same in the three windows (they share window_s)
        index = second % self._window_s
        with self._lock:
            provider = self._providers.get(name)
            if provider is None:
                provider = self._providers[name] = _Tally(self._window_s)
            key = (name, model)
            per_model = self._models.get(key)
            if per_model is None:
                per_model = self._models[key] = _Tally(self._window_s)
            for tally in (self._process, provider, per_model):
                tally.requests += 1
                if failed:
                    tally.errors += 1
                tally.retries += retries
                tally.throttle_events += throttle_events
                tally.throttle_wait_s += throttle_wait_s
                tally.retry_wait_s += retry_wait_s
                tally.input += input_tokens
                tally.output += output_tokens
                if cache_read is not None:
                    tally.cache_read = (tally.cache_read or 0) + cache_read
                if cache_write is not None:
                    tally.cache_write = (tally.cache_write or 0) + cache_write
                if reasoning is not None:
                    tally.reasoning = (tally.reasoning or 0) + reasoning
                if tool is not None:
                    tally.tool = (tally.tool or 0) + tool
                if tokens:  # work rate is throughput while producing tokens: token counting is not work
                    tally.busy_s += duration_s
                    window = tally.window  # RateWindow.add, inlined
                    held = window._seconds[index]
                    if held != second:
                        if held > second:
                            continue  # out of the window already
                        window._seconds[index] = second
                        window._tokens[index] = tokens
                    else:
                        window._tokens[index] += tokens

    def add_retry(self, provider: str, model: str | None, slept_s: float, cause: str) -> None:
        """A wait of a retry loop around whole calls (no call of its own to carry it)."""
        with self._lock:
            tallies = [self._process]
            provider_tally = self._providers.get(provider)
            if provider_tally is None:
                provider_tally = self._providers[provider] = _Tally(self._window_s)
            tallies.append(provider_tally)
            model_tally = self._models.get((provider, model))
            if model_tally is None:
                model_tally = self._models[(provider, model)] = _Tally(self._window_s)
            tallies.append(model_tally)
            for tally in tallies:
                tally.retries += 1
                if cause == "throttle":
                    tally.throttle_events += 1
                    tally.throttle_wait_s += slept_s
                else:
                    tally.retry_wait_s += slept_s

    def note_rate_limits(self, provider: str, model: str | None, values: dict[str, Any]) -> None:
        """Keep the latest rate-limit figures a response's headers gave for ``provider/model``."""
        key = f"{provider}/{model or 'unknown'}"  # model_key(), inlined: once per call
        with self._lock:
            current = self._rate_limits.get(key)
            if current is None:
                self._rate_limits[key] = dict(values)
            else:
                current.update(values)

    def rate_limits(self) -> dict[str, dict[str, Any]]:
        apply_pending()
        with self._lock:
            return {k: dict(v) for k, v in self._rate_limits.items()}

    def tokens_per_minute(self) -> list[tuple[str, str | None, float]]:
        """(provider, model, tpm) for every model seen, for the observable gauge."""
        apply_pending()
        now = time.time()
        with self._lock:
            return [(p, m, t.window.per_minute(now)) for (p, m), t in self._models.items()]

    def snapshot(self) -> PerformanceSnapshot:
        apply_pending()
        now = time.time()
        with self._lock:
            limits = {k: dict(v) for k, v in self._rate_limits.items()}
            by_provider = {
                name: tally.stats(now, {k: v for k, v in limits.items() if k.startswith(name + "/")})
                for name, tally in self._providers.items()
            }
            by_model = {}
            for (provider, model), tally in self._models.items():
                key = model_key(provider, model)
                by_model[key] = tally.stats(now, limits.get(key))
            process = self._process
            return PerformanceSnapshot(
                tokens_per_minute=process.window.per_minute(now),
                work_rate_tpm=process.work_rate_tpm(),
                throttle_wait_s=process.throttle_wait_s,
                throttle_events=process.throttle_events,
                retries=process.retries,
                requests=process.requests,
                errors=process.errors,
                usage=process.usage(),
                rate_limit_remaining=limits,
                by_provider=by_provider,
                by_model=by_model,
                retry_wait_s=process.retry_wait_s,
            )

    def reset(self) -> None:
        apply_pending()
        with self._lock:
            self._process = _Tally(self._window_s)
            self._providers.clear()
            self._models.clear()
            self._rate_limits.clear()
