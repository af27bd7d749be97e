"""Plain data: what one call used and what it cost. No I/O, no OpenTelemetry.

Every type here is an immutable dataclass with ``to_dict()`` for export.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

__all__ = ["Usage", "Cost", "CallRecord", "TokenCount", "PerformanceSnapshot", "ModelStats"]


_Number = TypeVar("_Number", int, Decimal)


def add_optional(a: _Number | None, b: _Number | None) -> _Number | None:
    """``a + b`` where ``None`` means "not reported": None only when both are None."""
    if a is None:
        return b
    if b is None:
        return a
    return a + b


@dataclass(frozen=True, slots=True)
class Usage:
    """Normalised token usage of one call, or a sum of calls.

    ``input_tokens`` holds every prompt-side token (cache reads and writes included);
    ``output_tokens`` every generated token (reasoning included). The detail fields are
    ``None`` when the response did not report them, never a silent 0.

    >>> Usage(input_tokens=10, output_tokens=5, cache_read_tokens=4).total_tokens
    15
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    tool_tokens: int | None = None

    @property
    def total_tokens(self) -> int:
        """``input_tokens + output_tokens``: cache tokens are already inside the input."""
        return self.input_tokens + self.output_tokens

    def __add__(self, other: object) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            add_optional(self.cache_read_tokens, other.cache_read_tokens),
            add_optional(self.cache_write_tokens, other.cache_write_tokens),
            add_optional(self.reasoning_tokens, other.reasoning_tokens),
            add_optional(self.tool_tokens, other.tool_tokens),
        )

    def __radd__(self, other: object) -> Usage:
        # lets sum(usages) work with its integer start value
        if other == 0:
            return self
        return NotImplemented

    def to_dict(self) -> dict[str, int | None]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "tool_tokens": self.tool_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(frozen=True, slots=True)
class Cost:
    """The price of some usage, in ``currency``; all amounts are ``Decimal``."""

    amount: Decimal
    currency: str = "USD"
    input: Decimal | None = None
    output: Decimal | None = None
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    source: str = "genai-prices"

    def __add__(self, other: object) -> Cost:
        if not isinstance(other, Cost):
            return NotImplemented
        if other.currency != self.currency:
            raise ValueError(f"cannot add costs in {self.currency} and {other.currency}")

        return Cost(
            self.amount + other.amount,
            self.currency,
            add_optional(self.input, other.input),
            add_optional(self.output, other.output),
            add_optional(self.cache_read, other.cache_read),
            add_optional(self.cache_write, other.cache_write),
            self.source if self.source == other.source else "mixed",
        )

    def __radd__(self, other: object) -> Cost:
        if other == 0:
            return self
        return NotImplemented

    def to_dict(self) -> dict[str, Any]:
        def s(v: Decimal | None) -> str | None:
            return None if v is None else str(v)

        return {
            "amount": str(self.amount),
            "currency": self.currency,
            "input": s(self.input),
            "output": s(self.output),
            "cache_read": s(self.cache_read),
            "cache_write": s(self.cache_write),
            "source": self.source,
        }


@dataclass(frozen=True, slots=True)
class CallRecord:
    """Everything tokenmetry knows about one API call, once it has finished."""

    provider: str
    operation: str
    request_model: str | None
    response_model: str | None
    response_id: str | None
    usage: Usage
    usage_source: str  # "provider" | "estimated" | "missing"
    cost: Cost | None
    stream: bool
    started_at: float  # wall-clock epoch seconds
    duration_s: float
    time_to_first_chunk_s: float | None
    retries: int
    throttle_wait_s: float
    error_type: str | None
    session_id: str
    finish_reasons: tuple[str, ...] = ()
    server_address: str | None = None
    turn: int | None = None
    retry_wait_s: float = 0.0  # waits after 408/409/5xx/overload; throttle_wait_s is 429 only

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "operation": self.operation,
            "request_model": self.request_model,
            "response_model": self.response_model,
            "response_id": self.response_id,
            "usage": self.usage.to_dict(),
            "usage_source": self.usage_source,
            "cost": None if self.cost is None else self.cost.to_dict(),
            "stream": self.stream,
            "started_at": self.started_at,
            "duration_s": self.duration_s,
            "time_to_first_chunk_s": self.time_to_first_chunk_s,
            "retries": self.retries,
            "throttle_wait_s": self.throttle_wait_s,
            "retry_wait_s": self.retry_wait_s,
            "error_type": self.error_type,
            "session_id": self.session_id,
            "finish_reasons": list(self.finish_reasons),
            "server_address": self.server_address,
            "turn": self.turn,
        }


@dataclass(frozen=True, slots=True)
class TokenCount:
    """A token count made before a call: ``exact`` only where the method is exact."""

    tokens: int
    exact: bool
    method: str

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "exact": self.exact, "method": self.method}


@dataclass(frozen=True, slots=True)
class ModelStats:
    """Throughput and throttling for one provider or one (provider, model)."""

    tokens_per_minute: float
    work_rate_tpm: float
    throttle_wait_s: float
    throttle_events: int
    retries: int
    requests: int
    errors: int
    usage: Usage
    rate_limit_remaining: dict[str, Any] = field(default_factory=dict)
    retry_wait_s: float = 0.0  # waits after 408/409/5xx/overload; throttle_wait_s is 429 only

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokens_per_minute": self.tokens_per_minute,
            "work_rate_tpm": self.work_rate_tpm,
            "throttle_wait_s": self.throttle_wait_s,
            "retry_wait_s": self.retry_wait_s,
            "throttle_events": self.throttle_events,
            "retries": self.retries,
            "requests": self.requests,
            "errors": self.errors,
            "usage": self.usage.to_dict(),
            "rate_limit_remaining": dict(self.rate_limit_remaining),
        }


@dataclass(frozen=True, slots=True)
class PerformanceSnapshot:
    """The process's figures at one instant: totals, then ``by_provider`` and ``by_model``.

    ``by_model`` is keyed by ``"provider/model"``; ``rate_limit_remaining`` maps the same keys to
    the latest rate-limit header values seen for them.
    """

    tokens_per_minute: float
    work_rate_tpm: float
    throttle_wait_s: float
    throttle_events: int
    retries: int
    requests: int
    errors: int
    usage: Usage
    rate_limit_remaining: dict[str, dict[str, Any]]
    by_provider: dict[str, ModelStats]
    by_model: dict[str, ModelStats]
    retry_wait_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokens_per_minute": self.tokens_per_minute,
            "work_rate_tpm": self.work_rate_tpm,
            "throttle_wait_s": self.throttle_wait_s,
            "retry_wait_s": self.retry_wait_s,
            "throttle_events": self.throttle_events,
            "retries": self.retries,
            "requests": self.requests,
            "errors": self.errors,
            "usage": self.usage.to_dict(),
            "rate_limit_remaining": {k: dict(v) for k, v in self.rate_limit_remaining.items()},
            "by_provider": {k: v.to_dict() for k, v in self.by_provider.items()},
            "by_model": {k: v.to_dict() for k, v in self.by_model.items()},
        }
