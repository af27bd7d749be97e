"""Span and metric checks shared by the test modules: metric points keyed by attribute set, histogram
points, tokenmetry's spans and their retry events, the retry metrics and the rate-limit gauge.

Every check compares exact values (floats to a stated relative tolerance) and fails on anything extra.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from tokenmetry.telemetry import DURATION_BUCKETS
from tokenmetry.testing import LocalAPIServer
from tokenmetry.usage import Usage

AttributeKey = frozenset[tuple[str, Any]]
"""A metric point's attribute set, as a dictionary key."""

Planned = float | tuple[float, float]
"""How long retrying code should sleep: exactly a number, or within a (low, high) backoff range."""

TOKENMETRY_SCOPE = "tokenmetry"
EARLY = 0.005  # a sleep may end this much before what was planned (clock granularity)
LATE = 0.5  # ... and this much after (a loaded machine)


# ================================================================================ metric points
def attribute_key(attributes: Mapping[str, Any]) -> AttributeKey:
    """``attributes`` as the key :func:`points_by_attributes` files a point under."""
    return frozenset(attributes.items())


def points_by_attributes(otel: Any, name: str) -> dict[AttributeKey, Any]:
    """The data points of metric ``name`` keyed by their attribute set (each set at most once)."""
    found: dict[AttributeKey, Any] = {}
    for point in otel.metric_points(name):
        key = attribute_key(dict(point.attributes))
        assert key not in found
        found[key] = point
    return found


def check_histograms(otel: Any, name: str, expected: Mapping[AttributeKey, Sequence[float]],
                     bounds: Sequence[float], *, rel: float = 1e-12) -> None:
    """Histogram ``name`` has one point per expected attribute set and no other; each point's count
    and sum are those of its expected values (sum to ``rel``, or 1e-12 absolute), its buckets ``bounds``."""
    found = points_by_attributes(otel, name)
    assert set(found) == set(expected), name
    for key, values in expected.items():
        point = found[key]
        assert point.count == len(values), name
        assert point.sum == pytest.approx(sum(values), rel=rel, abs=1e-12), name
        assert tuple(point.explicit_bounds) == tuple(bounds), name


def check_tokens_counted_once(otel: Any, usage: Usage) -> None:
    """The successful attempt's tokens are counted once, whatever the retries."""
    token_points = points_by_attributes(otel, "gen_ai.client.token.usage")
    assert sorted((p.count, p.sum) for p in token_points.values()) == \
        sorted([(1, usage.input_tokens), (1, usage.output_tokens)])


def rate_limit_gauge(otel: Any) -> dict[tuple[str, str, str], Any]:
    """``tokenmetry.rate_limit.remaining`` as {(provider, request model, kind): value}; each point carries
    exactly those three attributes, each key at most once."""
    found: dict[tuple[str, str, str], Any] = {}
    for point in otel.metric_points("tokenmetry.rate_limit.remaining"):
        attributes = dict(point.attributes)
        assert set(attributes) == {"gen_ai.provider.name", "gen_ai.request.model",
                                   "tokenmetry.rate_limit.kind"}
        key = (attributes["gen_ai.provider.name"], attributes["gen_ai.request.model"],
               attributes["tokenmetry.rate_limit.kind"])
        assert key not in found
        found[key] = point.value
    return found


# ================================================================================ spans
def only(items: Sequence[Any]) -> Any:
    """The one item of ``items`` (fails if there are none or several)."""
    assert len(items) == 1, items
    return items[0]


def tokenmetry_spans(otel: Any) -> list[Any]:
    """The finished spans tokenmetry made (not the SDK's or the user's)."""
    return [s for s in otel.finished_spans() if s.instrumentation_scope.name == TOKENMETRY_SCOPE]


def retry_events(span: Any) -> list[dict[str, Any]]:
    """The attributes of each ``tokenmetry.retry`` event of ``span``, in order."""
    return [dict(e.attributes) for e in span.events if e.name == "tokenmetry.retry"]


# ================================================================================ retries
def cause_of(status: int | None) -> str:
    """The cause SPEC §4 files a retry under (the tests' own table, not tokenmetry's)."""
    return {None: "connection", 429: "throttle", 529: "overloaded"}.get(status, "server_error")


def sleeps_by_cause(slept: Sequence[float], statuses: Sequence[int | None]) -> dict[str, list[float]]:
    """The sleeps grouped by the cause of the failed attempt that preceded each."""
    found: dict[str, list[float]] = {}
    for sleep, status in zip(slept, statuses, strict=True):
        found.setdefault(cause_of(status), []).append(sleep)
    return found


def check_retry_events(events: list[dict[str, Any]], server: LocalAPIServer, *,
                       statuses: Sequence[int | None], asked: Sequence[Any], planned: Sequence[Planned],
                       first_attempt: int = 1, extra: dict[str, Any] | None = None) -> list[float]:
    """Each ``tokenmetry.retry`` event against the plan and the gap the server saw; returns the sleeps.

    ``asked``: what the server asked (None: nothing; a number, to 1e-9; or any object equal to the
    figure, e.g. a range); ``planned``: how long the retrying code should sleep; ``extra``: attributes
    every event carries besides the retry's own.
    """
    assert len(events) == len(statuses) == len(asked) == len(planned)
    requests = server.requests
    slept: list[float] = []
    for index, (event, status, wanted, plan) in enumerate(zip(events, statuses, asked, planned, strict=True)):
        duration = event["tokenmetry.retry.slept_s"]
        expected: dict[str, Any] = {"tokenmetry.retry.attempt": first_attempt + index,
                                    "tokenmetry.retry.cause": cause_of(status),
                                    "tokenmetry.retry.slept_s": duration, **(extra or {})}
        if status is not None:
            expected["http.response.status_code"] = status
        if wanted is not None:
            expected["tokenmetry.retry.retry_after_s"] = \
                pytest.approx(wanted, abs=1e-9) if isinstance(wanted, (int, float)) else wanted
        assert event == expected
        low, high = plan if isinstance(plan, tuple) else (plan, plan)
        assert low - EARLY <= duration <= high + LATE, (index, duration, plan)
        # the failed attempt reached the server before the sleep began, the next one after it ended
        gap = requests[index + 1].received_at - requests[index].received_at
        assert duration <= gap
        slept.append(duration)
    return slept


def check_retry_metrics(otel: Any, provider: str, model: str, causes: Mapping[str, Sequence[float]]) -> None:
    """``tokenmetry.retries`` (one point per cause, counting its sleeps) and ``tokenmetry.throttle.wait``
    (count, sum to 1e-9, duration buckets), and no other point."""
    expected = {attribute_key({"gen_ai.provider.name": provider, "tokenmetry.retry.cause": cause,
                               "gen_ai.request.model": model}): sleeps for cause, sleeps in causes.items()}
    retries = points_by_attributes(otel, "tokenmetry.retries")
    assert {key: point.value for key, point in retries.items()} == {k: len(v) for k, v in expected.items()}
    check_histograms(otel, "tokenmetry.throttle.wait", expected, DURATION_BUCKETS, rel=1e-9)
