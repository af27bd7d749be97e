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

__all__ = ["CallSums", "RateWindow", "Totals", "ProcessStats", "newest_limits"]


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
        may be in the past; tokens a whole window older than a bucket's second are out of the window
        and dropped)."""
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


def add_wait(holder: Any, slept_s: float, cause: str) -> None:
    """Count one retry's wait on ``holder`` (a ``Totals`` or a ``Call``: both keep ``retries``,
    ``throttle_events``, ``throttle_wait_s`` and ``retry_wait_s``); ``cause`` "throttle" is an HTTP 429."""
    holder.retries += 1
    if cause == "throttle":
        holder.throttle_events += 1
        holder.throttle_wait_s += slept_s
    else:
        holder.retry_wait_s += slept_s


class CallSums:
    """What a run of finished calls adds to running totals and to its session's bill, summed in one
    pass over the calls (a session and the statistics then add the sums once, instead of each
    walking every call).

    A detail count (cache read and write, reasoning, tool) is None when no call of the run reported
    it; ``seconds`` holds (second of the wall clock, tokens) for the tokens-per-minute window, one
    entry per second in which calls of the run ended. For the session: ``loose`` calls made outside
    any turn, ``unpriced`` calls with tokens and no quote, and what the priced ones are billed
    (:meth:`billed`, per quote).
    """

    __slots__ = ("requests", "errors", "retries", "throttle_events", "throttle_wait_s", "retry_wait_s",
                 "duration_s", "busy_s", "input", "output", "cache_read", "cache_write", "reasoning", "tool",
                 "seconds", "loose", "unpriced", "_quote", "_plain", "_other")

    def __init__(self, calls: list[Call]) -> None:
        errors = retries = throttle_events = input_total = output_total = loose = unpriced = 0
        throttle_wait_s = retry_wait_s = duration_total = busy_s = 0.0
        cache_read: int | None = None
        cache_write: int | None = None
        reasoning: int | None = None
        tool: int | None = None
        seconds: list[tuple[int, int]] = []
        last_second = -1
        last_tokens = 0
        # billing: the calls of the run's first quote with the usual counts are summed here (every
        # quote bills them linearly, see pricing.Quote.plain_counts); any other call is billed per call
        quote_of_run: Any = None
        uncached_billed = cache_read_billed = cache_write_billed = output_billed = calls_billed = 0
        other: dict[tuple[Any, bool], list[int]] | None = None
        for call in calls:
            if call.error_type is not None:
                errors += 1
            if call.retries:
                retries += call.retries
                throttle_events += call.throttle_events
                throttle_wait_s += call.throttle_wait_s
                retry_wait_s += call.retry_wait_s
            if call.turn is None:
                loose += 1
            duration = call.duration_s
            duration_total += duration
            input_tokens = call.input_tokens
            output_tokens = call.output_tokens
            read = call.cache_read_tokens
            if read is not None:
                cache_read = read if cache_read is None else cache_read + read
            written = call.cache_write_tokens
            if written is not None:
                cache_write = written if cache_write is None else cache_write + written
            thought = call.reasoning_tokens
            if thought is not None:
                reasoning = thought if reasoning is None else reasoning + thought
            value = call.tool_tokens
            if value is not None:
                tool = value if tool is None else tool + value
            if input_tokens or output_tokens:  # work rate is throughput while producing tokens
                input_total += input_tokens
                output_total += output_tokens
                busy_s += duration
                second = int(call.started_at + duration)  # the call's end
                if second != last_second:
                    if last_tokens:
                        seconds.append((last_second, last_tokens))
                    last_second, last_tokens = second, 0
                last_tokens += input_tokens + output_tokens
                quote = call.quote
                if quote is None:
                    unpriced += 1
                    continue
                if quote_of_run is None:
                    quote_of_run = quote
                read = read or 0
                written = written or 0
                uncached = input_tokens - read - written
                if quote is quote_of_run and uncached >= 0 and not call.cache_write_1h_tokens and \
                        not (thought and quote.bills_reasoning):
                    uncached_billed += uncached
                    cache_read_billed += read
                    cache_write_billed += written
                    output_billed += output_tokens
                    calls_billed += 1
                else:  # another quote, a 1-hour cache write, reasoning billed apart, or clipped counts
                    apart = quote.apart(thought)
                    if other is None:
                        other = {}
                    counts = other.get((quote, apart))
                    if counts is None:
                        counts = other[(quote, apart)] = [0, 0, 0, 0, 0, 0, 0]
                    quote.add_call(counts, apart, call)
        if last_tokens:
            seconds.append((last_second, last_tokens))
        self.requests = len(calls)
        self.errors = errors
        self.retries = retries
        self.throttle_events = throttle_events
        self.throttle_wait_s = throttle_wait_s
        self.retry_wait_s = retry_wait_s
        self.duration_s = duration_total
        self.busy_s = busy_s
        self.input = input_total
        self.output = output_total
        self.cache_read = cache_read
        self.cache_write = cache_write
        self.reasoning = reasoning
        self.tool = tool
        self.seconds = seconds
        self.loose = loose
        self.unpriced = unpriced
        self._quote = quote_of_run
        self._plain = (uncached_billed, cache_read_billed, cache_write_billed, output_billed, calls_billed)
        self._other = other

    def billed(self) -> list[tuple[Any, bool, list[int]]]:
        """(quote, reasoning billed apart, billed counts) of the run's priced calls (pricing.Quote's
        count layout), one entry per quote and way of billing reasoning."""
        found = [(self._quote, False, self._quote.plain_counts(*self._plain))] if self._plain[4] else []
        if self._other is not None:  # (after the run's first quote: a session's currency is its first call's)
            found.extend((quote, apart, counts) for (quote, apart), counts in self._other.items())
        return found


def newest_limits(calls: list[Call]) -> dict[str, Any]:
    """The newest rate-limit figure of each kind that a run of finished calls (oldest first) gives.

    Walked newest first: a call's successful response (its raw header values, parsed here) is newer
    than its failed attempts' figures; a value that does not parse is left out, so the kind keeps
    an older call's figure. Once the newer calls gave every kind of the vendor's table, the older
    calls' raw values are dropped unparsed.
    """
    newest: dict[str, Any] = {}
    for call in reversed(calls):
        raw = call.rate_raw
        if raw is not None:
            rows, entries = raw
            for key, parse, offset in rows:
                if key not in newest:
                    try:
                        newest[key] = parse(entries[offset][2])  # (raw name, name, value)
                    except ValueError:
                        pass
            if len(newest) >= len(rows):
                break  # every kind of the table has its newest figure: older calls add nothing
        found = call.rate_limits
        if found:
            for key, value in found.items():
                if key not in newest:
                    newest[key] = value
    return newest


class Totals:
    """Running totals of calls: a session's, or the statistics' per (provider, model), summed at read
    time into a provider's and the process's. Not locked: the owner serialises changes."""

    __slots__ = (
        "requests", "errors", "retries", "throttle_events", "throttle_wait_s", "retry_wait_s", "duration_s",
        "input", "output", "cache_read", "cache_write", "reasoning", "tool", "busy_s", "window",
    )

    def __init__(self, window_s: int) -> None:
        self.requests = self.errors = self.retries = self.throttle_events = 0
        self.throttle_wait_s = self.retry_wait_s = self.duration_s = 0.0
        # duration of the calls that produced tokens: the work rate's denominator
        self.busy_s = 0.0
        self.input = self.output = 0
        self.cache_read: int | None = None
        self.cache_write: int | None = None
        self.reasoning: int | None = None
        self.tool: int | None = None
        self.window = RateWindow(window_s)

    def work_rate_tpm(self) -> float:
        return 60.0 * (self.input + self.output) / self.busy_s if self.busy_s > 0 else 0.0

    def add_sums(self, sums: CallSums) -> None:
        """Add what a run of finished calls sums to (see :class:`CallSums`)."""
        self._add_counts(sums)
        window = self.window
        for second, tokens in sums.seconds:
            window.add(tokens, second)

    def add_retry(self, slept_s: float, cause: str) -> None:
        """A wait of a retry loop between whole calls (no call of its own to carry it)."""
        add_wait(self, slept_s, cause)

    def _add_counts(self, other: Totals | CallSums) -> None:
        """Add the counts of ``other`` (a ``CallSums`` or a ``Totals``: the same names), not its window."""
        self.requests += other.requests
        self.errors += other.errors
        if other.retries:  # every wait counts a retry (add_wait): no retries, no waits
            self.retries += other.retries
            self.throttle_events += other.throttle_events
            self.throttle_wait_s += other.throttle_wait_s
            self.retry_wait_s += other.retry_wait_s
        self.duration_s += other.duration_s
        self.busy_s += other.busy_s
        self.input += other.input
        self.output += other.output
        if other.cache_read is not None:
            self.cache_read = (self.cache_read or 0) + other.cache_read
        if other.cache_write is not None:
            self.cache_write = (self.cache_write or 0) + other.cache_write
        if other.reasoning is not None:
            self.reasoning = (self.reasoning or 0) + other.reasoning
        if other.tool is not None:
            self.tool = (self.tool or 0) + other.tool

    def absorb(self, other: Totals) -> None:
        """Add ``other``'s totals and window into this one (both have the same window length)."""
        self._add_counts(other)
        window, seconds, tokens = self.window, other.window._seconds, other.window._tokens
        for index, second in enumerate(seconds):
            held = window._seconds[index]
            if second == held:
                window._tokens[index] += tokens[index]
            elif second > held:  # a bucket's older second is a whole window older: out of the window
                window._seconds[index] = second
                window._tokens[index] = tokens[index]

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
    """The sink behind :func:`tokenmetry.stats`: one lock, one tally per (provider, model); the
    provider and process figures are their sums, made when read."""

    def __init__(self, window_s: int = 60) -> None:
        self._lock = threading.Lock()
        self._window_s = window_s
        self._models: dict[tuple[str, str | None], Totals] = {}
        # the newest rate-limit figure of each kind per (provider, model), merged in as calls finish
        self._rate_limits: dict[tuple[str, str | None], dict[str, Any]] = {}

    def add_sums(self, provider: str, model: str | None, sums: CallSums) -> None:
        """Add a run of finished calls of one (provider, model) to its tally."""
        key = (provider, model)
        with self._lock:
            tally = self._models.get(key)
            if tally is None:
                tally = self._models[key] = Totals(self._window_s)
            tally.add_sums(sums)

    def add_retry(self, provider: str, model: str | None, slept_s: float, cause: str) -> None:
        """A wait of a retry loop around whole calls (no call of its own to carry it)."""
        with self._lock:
            tally = self._models.get((provider, model))
            if tally is None:
                tally = self._models[(provider, model)] = Totals(self._window_s)
            tally.add_retry(slept_s, cause)

    def rate_limits_of(self, provider: str, model: str | None) -> dict[str, Any]:
        """The newest figure of each kind for ``provider/model``, for the calls applied to update in
        place (``dict.update`` is atomic: figures merge in the order calls are applied)."""
        latest = self._rate_limits.get((provider, model))
        if latest is None:
            with self._lock:
                latest = self._rate_limits.setdefault((provider, model), {})
        return latest

    def _limits_by_key(self) -> dict[str, dict[str, Any]]:
        return {model_key(provider, model): dict(values)
                for (provider, model), values in list(self._rate_limits.items()) if values}

    def rate_limits(self) -> dict[str, dict[str, Any]]:
        apply_pending()
        with self._lock:
            return self._limits_by_key()

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
            limits = self._limits_by_key()
            process = Totals(self._window_s)
            providers: dict[str, Totals] = {}
            by_model = {}
            for (provider, model), tally in self._models.items():
                key = model_key(provider, model)
                by_model[key] = tally.stats(now, limits.get(key))
                process.absorb(tally)
                provider_tally = providers.get(provider)
                if provider_tally is None:
                    provider_tally = providers[provider] = Totals(self._window_s)
                provider_tally.absorb(tally)
            by_provider = {
                name: tally.stats(now, {k: v for k, v in limits.items() if k.startswith(name + "/")})
                for name, tally in providers.items()
            }
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
            self._models.clear()
            self._rate_limits.clear()
