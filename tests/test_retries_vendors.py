"""Issue 4 on the real ``anthropic`` and ``google-genai`` clients: retries, throttle waits, rate limits.

The local server answers planned 429 / 5xx (529 = Anthropic "overloaded") before a success, with the
delay asked in ``retry-after`` seconds, ``retry-after-ms``, an HTTP date, Google's ``RetryInfo``, or
not at all. Every wait that happened is checked against the plan on the span events, the CallRecord,
the session, ``stats()`` and the metrics, and against the gap the server itself saw between two
attempts (``RecordedRequest.received_at``, monotonic clock of this process). Tolerances are what a
loaded CI machine can hold: slept >= planned - 5 ms and <= planned + 0.5 s.

What the SDKs honour (checked here, as installed):

* anthropic retries itself (``max_retries``) and sleeps what the server asked: ``retry-after-ms``, else
  ``retry-after`` in seconds or as an HTTP date; without either (or with 0) its own backoff,
  0.5 s x (0.75..1.0) for the first retry.
* google-genai retries through tenacity built from ``HttpRetryOptions``: ``wait_exponential_jitter``
  only. It honours neither ``retry-after`` nor ``RetryInfo``: the wait is its backoff, and tokenmetry
  still records what the server asked (``retry_after_s``).
* ``@tokenmetry.retry`` honours all four ways of asking.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

import anthropic
import pytest
import tenacity
from _checks import (
    EARLY,
    LATE,
    Planned,
    check_retry_events,
    check_retry_metrics,
    check_tokens_counted_once,
    only,
    rate_limit_gauge,
    retry_events,
    sleeps_by_cause,
    tokenmetry_spans,
)
from google.genai import errors as genai_errors
from google.genai import types
from test_anthropic import sent_truth
from test_google_genai import expected_usage

import tokenmetry
from tokenmetry.testing import LocalAPIServer, Reply
from tokenmetry.usage import CallRecord, Usage

CLAUDE = "claude-sonnet-4-6"
GEMINI = "gemini-2.5-flash"
CLAUDE_ARGS: dict[str, Any] = {"model": CLAUDE, "max_tokens": 100,
                               "messages": [{"role": "user", "content": "Name two rivers in France"}]}
GEMINI_PROMPT = "Name two rivers in Spain"
ANTHROPIC, GEMINI_API = "anthropic", "gcp.gemini"

# google-genai's own retries made deterministic: tenacity waits 0.05, 0.1, 0.1, 0.1 s (no jitter)
GENAI_RETRIES = types.HttpRetryOptions(attempts=5, initial_delay=0.05, max_delay=0.1, exp_base=2, jitter=0.0,
                                       http_status_codes=[429, 500, 503, 529])
GENAI_BACKOFF = [0.05, 0.1, 0.1, 0.1]


# ================================================================================ fixtures and helpers
@pytest.fixture(scope="module")
def shared_server() -> Iterator[LocalAPIServer]:
    with LocalAPIServer() as local:
        yield local


@pytest.fixture
def server(shared_server: LocalAPIServer) -> Iterator[LocalAPIServer]:
    shared_server.reset()
    yield shared_server
    shared_server.reset()


@pytest.fixture
def records() -> Iterator[list[CallRecord]]:
    found: list[CallRecord] = []
    unsubscribe = tokenmetry.on_record(found.append)
    yield found
    unsubscribe()


class Between:
    """Equal to any number in [low, high]: for a figure only known within a range (HTTP dates)."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high

    def __eq__(self, other: object) -> bool:
        return isinstance(other, (int, float)) and self.low <= other <= self.high

    def __repr__(self) -> str:
        return f"Between({self.low:.4f}, {self.high:.4f})"


class DateAhead:
    """An HTTP date (whole seconds) 0.5 to 1.5 s ahead, and the same instant on the monotonic clock
    the server stamps requests with."""

    def __init__(self) -> None:
        wall, mono = time.time(), time.monotonic()
        self.wall = math.floor(wall) + (1 if wall % 1 < 0.5 else 2)
        self.mono = mono + (self.wall - wall)
        self.header = email.utils.formatdate(self.wall, usegmt=True)

    def asked_at(self, answered_after: float) -> Between:
        """What the server asked, as read when the response to a request received at monotonic
        ``answered_after`` came back (a little later on a loaded machine)."""
        return Between(self.mono - answered_after - LATE, self.mono - answered_after + EARLY)


def check_totals(session: Any, provider: str, model: str, causes: dict[str, list[float]], *,
                 calls: int, errors: int) -> None:
    """The session's summary and every level of ``stats()`` add up the waits, split by cause."""
    throttle = sum(causes.get("throttle", []))
    other = sum(sum(v) for k, v in causes.items() if k != "throttle")
    retries = sum(len(v) for v in causes.values())
    summary = session.summary()
    assert (summary["calls"], summary["errors"], summary["retries"]) == (calls, errors, retries)
    assert summary["throttle_wait_s"] == pytest.approx(throttle, rel=1e-9, abs=1e-12)
    assert summary["retry_wait_s"] == pytest.approx(other, rel=1e-9, abs=1e-12)
    assert session.throttle_wait_s == pytest.approx(throttle, rel=1e-9, abs=1e-12)
    snapshot = tokenmetry.stats()
    assert set(snapshot.by_provider) == {provider}
    assert set(snapshot.by_model) == {f"{provider}/{model}"}
    throttle_events = len(causes.get("throttle", []))
    for tally in (snapshot, snapshot.by_provider[provider], snapshot.by_model[f"{provider}/{model}"]):
        assert (tally.requests, tally.errors, tally.retries, tally.throttle_events) == \
            (calls, errors, retries, throttle_events)
        assert tally.throttle_wait_s == pytest.approx(throttle, rel=1e-9, abs=1e-12)
    assert snapshot.retry_wait_s == pytest.approx(other, rel=1e-9, abs=1e-12)


def check_call_retries(record: CallRecord, span: Any, causes: dict[str, list[float]]) -> None:
    """The record's and its span's retry figures (retries inside one SDK call)."""
    throttle = sum(causes.get("throttle", []))
    other = sum(sum(v) for k, v in causes.items() if k != "throttle")
    assert record.retries == sum(len(v) for v in causes.values())
    assert record.throttle_wait_s == pytest.approx(throttle, rel=1e-9, abs=1e-12)
    assert record.retry_wait_s == pytest.approx(other, rel=1e-9, abs=1e-12)
    attributes = span.attributes
    assert attributes["tokenmetry.retries"] == record.retries
    assert attributes["tokenmetry.throttle_wait_s"] == record.throttle_wait_s
    if record.retry_wait_s:
        assert attributes["tokenmetry.retry_wait_s"] == record.retry_wait_s
    else:
        assert "tokenmetry.retry_wait_s" not in attributes


def anthropic_usage(server: LocalAPIServer) -> Usage:
    usage, _, _ = sent_truth(server)
    return usage


def statuses_of(plan: Sequence[Reply]) -> list[int]:
    return [reply.status for reply in plan]


# ================================================================================ anthropic: the SDK's retries
def ms(value: int) -> dict[str, str]:
    return {"retry-after-ms": str(value)}


ANTHROPIC_PLANS = [
    pytest.param([Reply(status=429, headers={"retry-after": "0.2"}), Reply(status=429, headers={"retry-after": "0.1"})],
                 [0.2, 0.1], id="429-retry-after-seconds"),
    pytest.param([Reply(status=429, headers=ms(150))], [0.15], id="429-retry-after-ms"),
    pytest.param([Reply(status=429, headers={"retry-after-ms": "40", "retry-after": "3"})], [0.04],
                 id="429-ms-wins-over-seconds"),
    pytest.param([Reply(status=500, headers=ms(30)), Reply(status=503, headers=ms(20))], [0.03, 0.02],
                 id="500-503"),
    pytest.param([Reply(status=529, headers=ms(50))], [0.05], id="529-overloaded"),
    pytest.param([Reply(status=429, headers=ms(30)), Reply(status=529, headers=ms(20)),
                  Reply(status=500, headers=ms(10))], [0.03, 0.02, 0.01], id="429-529-500"),
]


async def anthropic_create(server: LocalAPIServer, async_: bool, *, stream: bool = False,
                           **client_options: Any) -> Any:
    """One ``messages.create`` (or a ``messages.stream()`` read to its end) on a fresh client."""
    if async_:
        async with server.anthropic_client(async_=True, **client_options) as client:
            if stream:
                async with client.messages.stream(**CLAUDE_ARGS) as events:
                    return await events.get_final_message()
            return await client.messages.create(**CLAUDE_ARGS)
    with server.anthropic_client(**client_options) as client:
        if stream:
            with client.messages.stream(**CLAUDE_ARGS) as events:
                return events.get_final_message()
        return client.messages.create(**CLAUDE_ARGS)


def check_anthropic_retried_call(server: LocalAPIServer, otel: Any, records: list[CallRecord], session: Any,
                                 message: Any, statuses: list[int], asked: Sequence[Any],
                                 planned: Sequence[Planned], *, stream: bool = False) -> list[float]:
    assert [r.response.status for r in server.requests] == [*statuses, 200]
    record = only(records)  # one call, recorded once: the attempt that succeeded
    usage = anthropic_usage(server)
    assert message.id == server.last_response.response_id == record.response_id
    assert (record.usage, record.usage_source, record.error_type) == (usage, "provider", None)
    assert (record.request_model, record.response_model, record.stream) == (CLAUDE, CLAUDE, stream)
    assert session.usage == usage and tokenmetry.stats().usage == usage
    span = only(tokenmetry_spans(otel))
    assert span.status.status_code.name == "UNSET" and "error.type" not in span.attributes
    slept = check_retry_events(retry_events(span), server, statuses=statuses, asked=asked, planned=planned)
    causes = sleeps_by_cause(slept, statuses)
    check_call_retries(record, span, causes)
    check_totals(session, ANTHROPIC, CLAUDE, causes, calls=1, errors=0)
    check_retry_metrics(otel, ANTHROPIC, CLAUDE, causes)
    check_tokens_counted_once(otel, usage)
    return slept


@pytest.mark.parametrize("async_", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(("plan", "asked"), ANTHROPIC_PLANS)
async def test_anthropic_sdk_retries(server: LocalAPIServer, otel: Any, records: list[CallRecord],
                                     plan: list[Reply], asked: list[float], async_: bool) -> None:
    tokenmetry.instrument(**otel.kwargs())
    server.enqueue("anthropic.messages", *plan)
    with tokenmetry.session("anthropic-sdk") as session:
        message = await anthropic_create(server, async_, max_retries=3)
    check_anthropic_retried_call(server, otel, records, session, message, statuses_of(plan), asked, asked)


@pytest.mark.parametrize("async_", [False, True], ids=["sync", "async"])
async def test_anthropic_sdk_retries_a_stream(server: LocalAPIServer, otel: Any, records: list[CallRecord],
                                              async_: bool) -> None:
    tokenmetry.instrument(**otel.kwargs())
    plan = [Reply(status=529, headers=ms(40)), Reply(status=429, headers={"retry-after": "0.06"})]
    server.enqueue("anthropic.messages", *plan)
    with tokenmetry.session("anthropic-stream") as session:
        message = await anthropic_create(server, async_, stream=True, max_retries=2)
    assert message.content[0].text == server.last_response.text
    check_anthropic_retried_call(server, otel, records, session, message, [529, 429], [0.04, 0.06],
                                 [0.04, 0.06], stream=True)


@pytest.mark.parametrize("async_", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("headers", [{}, {"retry-after": "0"}], ids=["no-retry-after", "retry-after-0"])
async def test_anthropic_sdk_backoff_without_a_usable_retry_after(
        server: LocalAPIServer, otel: Any, records: list[CallRecord], async_: bool, headers: dict[str, str]) -> None:
    """Nothing (or 0) asked: the SDK's own backoff, 0.5 s x 0.75-1.0 jitter for the first retry."""
    tokenmetry.instrument(**otel.kwargs())
    server.enqueue("anthropic.messages", Reply(status=429, headers=headers))
    with tokenmetry.session("anthropic-backoff") as session:
        message = await anthropic_create(server, async_, max_retries=1)
    asked = [0.0] if headers else [None]
    check_anthropic_retried_call(server, otel, records, session, message, [429], asked, [(0.375, 0.5)])


@pytest.mark.parametrize("async_", [False, True], ids=["sync", "async"])
async def test_anthropic_sdk_sleeps_until_an_http_date(server: LocalAPIServer, otel: Any,
                                                       records: list[CallRecord], async_: bool) -> None:
    """``retry-after`` as an HTTP date: the SDK sleeps until then; tokenmetry records that sleep and
    what was asked when the 429 arrived (not after the sleep, when the date is ~0 s away)."""
    tokenmetry.instrument(**otel.kwargs())
    date = DateAhead()
    server.enqueue("anthropic.messages", Reply(status=429, headers={"retry-after": date.header}))
    with tokenmetry.session("anthropic-date") as session:
        message = await anthropic_create(server, async_, max_retries=1)
    first, second = server.requests
    assert second.received_at >= date.mono - EARLY  # the SDK did wait for the date
    until_date = date.mono - first.received_at
    # the sleep began once the 429 was read and ended at the date
    slept = check_anthropic_retried_call(server, otel, records, session, message, [429],
                                         [date.asked_at(first.received_at)], [(until_date - LATE, until_date)])
    event = only(retry_events(only(tokenmetry_spans(otel))))
    assert event["tokenmetry.retry.retry_after_s"] - 0.05 <= slept[0] <= event["tokenmetry.retry.retry_after_s"] + LATE


# ================================================================================ google-genai: the SDK's retries
GENAI_PLANS = [
    pytest.param([Reply(status=429, retry_delay="0.3s")], [0.3], id="429-retryinfo"),
    pytest.param([Reply(status=429, headers={"retry-after": "0.2"}), Reply(status=429, headers=ms(150))],
                 [0.2, 0.15], id="429-retry-after-seconds-and-ms"),
    pytest.param([Reply(status=429)], [None], id="429-nothing-asked"),
    pytest.param([Reply(status=500), Reply(status=503, retry_delay="0.25s")], [None, 0.25], id="500-503"),
    pytest.param([Reply(status=529)], [None], id="529-overloaded"),
    pytest.param([Reply(status=429, retry_delay="0.1s"), Reply(status=503), Reply(status=529)],
                 [0.1, None, None], id="429-503-529"),
]


def genai_client(server: LocalAPIServer, retry_options: types.HttpRetryOptions | None = GENAI_RETRIES) -> Any:
    return server.genai_client(http_options=types.HttpOptions(retry_options=retry_options))


async def genai_generate(client: Any, async_: bool, *, stream: bool = False) -> Any:
    """One ``generate_content`` (or a whole ``generate_content_stream``, as its list of chunks)."""
    if async_:
        if stream:
            return [chunk async for chunk in await client.aio.models.generate_content_stream(
                model=GEMINI, contents=GEMINI_PROMPT)]
        return await client.aio.models.generate_content(model=GEMINI, contents=GEMINI_PROMPT)
    if stream:
        return list(client.models.generate_content_stream(model=GEMINI, contents=GEMINI_PROMPT))
    return client.models.generate_content(model=GEMINI, contents=GEMINI_PROMPT)


def check_genai_retried_call(server: LocalAPIServer, otel: Any, records: list[CallRecord], session: Any,
                             statuses: list[int], asked: Sequence[Any], *, stream: bool = False) -> list[float]:
    assert [r.response.status for r in server.requests] == [*statuses, 200]
    record = only(records)
    usage = expected_usage(server.last_response.usage)
    assert record.response_id == server.last_response.response_id
    assert (record.usage, record.usage_source, record.error_type) == (usage, "provider", None)
    assert (record.provider, record.request_model, record.response_model, record.stream) == \
        (GEMINI_API, GEMINI, GEMINI, stream)
    assert session.usage == usage and tokenmetry.stats().usage == usage
    span = only(tokenmetry_spans(otel))
    assert span.status.status_code.name == "UNSET" and "error.type" not in span.attributes
    # google-genai sleeps its own backoff whatever the server asked
    slept = check_retry_events(retry_events(span), server, statuses=statuses, asked=asked,
                               planned=GENAI_BACKOFF[:len(statuses)])
    causes = sleeps_by_cause(slept, statuses)
    check_call_retries(record, span, causes)
    check_totals(session, GEMINI_API, GEMINI, causes, calls=1, errors=0)
    check_retry_metrics(otel, GEMINI_API, GEMINI, causes)
    check_tokens_counted_once(otel, usage)
    return slept


@pytest.mark.parametrize("async_", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(("plan", "asked"), GENAI_PLANS)
async def test_genai_sdk_retries(server: LocalAPIServer, otel: Any, records: list[CallRecord],
                                 plan: list[Reply], asked: list[float | None], async_: bool) -> None:
    tokenmetry.instrument(**otel.kwargs())
    server.enqueue("gemini", *plan)
    with tokenmetry.session("genai-sdk") as session:
        response = await genai_generate(genai_client(server), async_)
    assert response.text == server.last_response.text
    check_genai_retried_call(server, otel, records, session, statuses_of(plan), asked)


@pytest.mark.parametrize("async_", [False, True], ids=["sync", "async"])
async def test_genai_sdk_retries_a_stream(server: LocalAPIServer, otel: Any, records: list[CallRecord],
                                          async_: bool) -> None:
    tokenmetry.instrument(**otel.kwargs())
    server.enqueue("gemini", Reply(status=503, retry_delay="0.2s"), Reply(status=429, headers=ms(70)))
    with tokenmetry.session("genai-stream") as session:
        chunks = await genai_generate(genai_client(server), async_, stream=True)
    assert "".join(chunk.text for chunk in chunks) == server.last_response.text
    check_genai_retried_call(server, otel, records, session, [503, 429], [0.2, 0.07], stream=True)


@pytest.mark.parametrize("async_", [False, True], ids=["sync", "async"])
async def test_genai_sdk_does_not_honour_what_the_server_asks(server: LocalAPIServer, otel: Any,
                                                              records: list[CallRecord], async_: bool) -> None:
    """Asked for seconds in every form, google-genai still waits its 0.05 / 0.1 s backoff; tokenmetry
    records the sleep that happened and, apart, what was asked."""
    tokenmetry.instrument(**otel.kwargs())
    date = DateAhead()
    server.enqueue("gemini", Reply(status=429, retry_delay="5s"), Reply(status=429, headers={"retry-after": "5"}),
                   Reply(status=503, headers=ms(5000)), Reply(status=429, headers={"retry-after": date.header}))
    with tokenmetry.session("genai-ignores") as session:
        await genai_generate(genai_client(server), async_)
    asked = [5.0, 5.0, 5.0, date.asked_at(server.requests[3].received_at)]
    slept = check_genai_retried_call(server, otel, records, session, [429, 429, 503, 429], asked)
    assert sum(slept) < 1.0 + LATE  # nowhere near the 15.5+ s asked


# ================================================================================ the user's own retry loops
def check_loop(server: LocalAPIServer, otel: Any, records: list[CallRecord], session: Any, parent: Any, *,
               provider: str, model: str, statuses: list[int], errors: list[str], asked: Sequence[Any],
               planned: Sequence[Planned]) -> list[float]:
    """Failed attempts then a success, retried around whole SDK calls (the SDK's retries off)."""
    attempts = len(statuses) + 1
    assert [r.response.status for r in server.requests] == [*statuses, 200]
    # each attempt is its own call; the waits are between calls, on none of them
    assert [r.error_type for r in records] == [*errors, None]
    assert [(r.retries, r.throttle_wait_s, r.retry_wait_s) for r in records] == [(0, 0.0, 0.0)] * attempts
    assert all(r.usage_source == "missing" and r.usage == Usage() for r in records[:-1])
    assert records[-1].response_id == server.last_response.response_id
    # the waits are events on the span current in the user's code, numbered by the attempt that followed
    slept = check_retry_events(retry_events(parent), server, statuses=statuses, asked=asked,
                               planned=planned, extra={"gen_ai.provider.name": provider})
    causes = sleeps_by_cause(slept, statuses)
    check_totals(session, provider, model, causes, calls=attempts, errors=len(statuses))
    check_retry_metrics(otel, provider, model, causes)
    spans = tokenmetry_spans(otel)
    assert len(spans) == attempts
    assert all(s.parent.span_id == parent.context.span_id for s in spans)
    assert all(retry_events(s) == [] for s in spans)
    assert [s.attributes.get("error.type") for s in spans] == [*errors, None]
    return slept


def user_tracer(otel: Any) -> Any:
    return otel.tracer_provider.get_tracer("user-code")


def test_anthropic_tenacity_loop(server: LocalAPIServer, otel: Any, records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    server.enqueue("anthropic.messages", Reply(status=429, headers=ms(10)), Reply(status=529, headers=ms(20)))
    with (server.anthropic_client(max_retries=0) as client, tokenmetry.session("loop") as session,
          user_tracer(otel).start_as_current_span("answer") as parent):
        for attempt in tenacity.Retrying(
                stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_fixed(0.05), reraise=True,
                retry=tenacity.retry_if_exception_type((anthropic.RateLimitError, anthropic.InternalServerError)),
                **tokenmetry.retry_hooks()):
            with attempt:
                message = client.messages.create(**CLAUDE_ARGS)
    assert message.id == server.last_response.response_id
    assert records[-1].usage == anthropic_usage(server)
    # the loop sleeps its own 0.05 s; what the server asked is recorded beside it
    check_loop(server, otel, records, session, parent, provider=ANTHROPIC, model=CLAUDE, statuses=[429, 529],
               errors=["RateLimitError", "OverloadedError"], asked=[0.01, 0.02], planned=[0.05, 0.05])


async def test_anthropic_async_tenacity_loop(server: LocalAPIServer, otel: Any, records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    server.enqueue("anthropic.messages", Reply(status=503), Reply(status=429, headers={"retry-after": "1"}))
    user_hooks: list[str] = []
    async with server.anthropic_client(async_=True, max_retries=0) as client:
        with tokenmetry.session("aloop") as session, user_tracer(otel).start_as_current_span("answer") as parent:
            async for attempt in tenacity.AsyncRetrying(
                    stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_fixed(0.04), reraise=True,
                    retry=tenacity.retry_if_exception_type(anthropic.APIStatusError),
                    **tokenmetry.retry_hooks(before=lambda s: user_hooks.append(f"before {s.attempt_number}"),
                                             before_sleep=lambda s: user_hooks.append("sleep"))):
                with attempt:
                    await client.messages.create(**CLAUDE_ARGS)
    # the user's own hooks still run, after tokenmetry's
    assert user_hooks == ["before 1", "sleep", "before 2", "sleep", "before 3"]
    check_loop(server, otel, records, session, parent, provider=ANTHROPIC, model=CLAUDE, statuses=[503, 429],
               errors=["ServiceUnavailableError", "RateLimitError"], asked=[None, 1.0], planned=[0.04, 0.04])


def test_genai_tenacity_loop(server: LocalAPIServer, otel: Any, records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    server.enqueue("gemini", Reply(status=429, retry_delay="0.02s"), Reply(status=500))
    client = genai_client(server, retry_options=None)  # the SDK does not retry
    with tokenmetry.session("gloop") as session, user_tracer(otel).start_as_current_span("answer") as parent:
        for attempt in tenacity.Retrying(stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_fixed(0.05),
                                         retry=tenacity.retry_if_exception_type(genai_errors.APIError),
                                         reraise=True, **tokenmetry.retry_hooks()):
            with attempt:
                response = client.models.generate_content(model=GEMINI, contents=GEMINI_PROMPT)
    assert response.text == server.last_response.text
    assert records[-1].usage == expected_usage(server.last_response.usage)
    check_loop(server, otel, records, session, parent, provider=GEMINI_API, model=GEMINI, statuses=[429, 500],
               errors=["ClientError", "ServerError"], asked=[0.02, None], planned=[0.05, 0.05])


async def test_genai_async_tenacity_loop(server: LocalAPIServer, otel: Any, records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    server.enqueue("gemini", Reply(status=503, headers=ms(30)), Reply(status=429, headers={"retry-after": "0.01"}))
    client = genai_client(server, retry_options=None)
    with tokenmetry.session("agloop") as session, user_tracer(otel).start_as_current_span("answer") as parent:
        async for attempt in tenacity.AsyncRetrying(
                stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_fixed(0.03), reraise=True,
                retry=tenacity.retry_if_exception_type(genai_errors.APIError), **tokenmetry.retry_hooks()):
            with attempt:
                await client.aio.models.generate_content(model=GEMINI, contents=GEMINI_PROMPT)
    check_loop(server, otel, records, session, parent, provider=GEMINI_API, model=GEMINI, statuses=[503, 429],
               errors=["ServerError", "ClientError"], asked=[0.03, 0.01], planned=[0.03, 0.03])


# ---------------------------------------------------------------------------- @tokenmetry.retry
# initial_delay=5 s: a wait that fell back to the backoff instead of what the server asked fails the test
DECORATOR = {"attempts": 3, "initial_delay": 5.0, "jitter": False}


def test_anthropic_retry_decorator_honours_what_is_asked(server: LocalAPIServer, otel: Any,
                                                         records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    server.enqueue("anthropic.messages", Reply(status=529, headers=ms(30)),
                   Reply(status=429, headers={"retry-after": "0.05"}))
    with server.anthropic_client(max_retries=0) as client, tokenmetry.session("decorated") as session:
        @tokenmetry.retry(**DECORATOR)
        def ask() -> Any:
            return client.messages.create(**CLAUDE_ARGS)

        with user_tracer(otel).start_as_current_span("ask") as parent:
            message = ask()
    assert message.id == server.last_response.response_id
    check_loop(server, otel, records, session, parent, provider=ANTHROPIC, model=CLAUDE, statuses=[529, 429],
               errors=["OverloadedError", "RateLimitError"], asked=[0.03, 0.05], planned=[0.03, 0.05])


async def test_anthropic_async_retry_decorator_and_http_date(server: LocalAPIServer, otel: Any,
                                                             records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    date = DateAhead()
    server.enqueue("anthropic.messages", Reply(status=500, headers=ms(20)),
                   Reply(status=429, headers={"retry-after": date.header}))
    async with server.anthropic_client(async_=True, max_retries=0) as client:
        @tokenmetry.retry(**DECORATOR)
        async def ask() -> Any:
            return await client.messages.create(**CLAUDE_ARGS)

        with tokenmetry.session("adecorated") as session, user_tracer(otel).start_as_current_span("ask") as parent:
            await ask()
    asked_date = retry_events(parent)[1]["tokenmetry.retry.retry_after_s"]
    assert asked_date == date.asked_at(server.requests[1].received_at)
    assert server.requests[2].received_at >= date.mono - EARLY  # the decorator waited for the date
    check_loop(server, otel, records, session, parent, provider=ANTHROPIC, model=CLAUDE, statuses=[500, 429],
               errors=["InternalServerError", "RateLimitError"], asked=[0.02, asked_date],
               planned=[0.02, asked_date])


def test_genai_retry_decorator_honours_retry_info_and_headers(server: LocalAPIServer, otel: Any,
                                                              records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    server.enqueue("gemini", Reply(status=429, retry_delay="0.12s"), Reply(status=503, headers={"retry-after": "0.05"}))
    client = genai_client(server, retry_options=None)

    @tokenmetry.retry(**DECORATOR)
    def ask() -> Any:
        return client.models.generate_content(model=GEMINI, contents=GEMINI_PROMPT)

    with tokenmetry.session("gdecorated") as session, user_tracer(otel).start_as_current_span("ask") as parent:
        response = ask()
    assert response.text == server.last_response.text
    check_loop(server, otel, records, session, parent, provider=GEMINI_API, model=GEMINI, statuses=[429, 503],
               errors=["ClientError", "ServerError"], asked=[0.12, 0.05], planned=[0.12, 0.05])


async def test_genai_async_retry_decorator_and_http_date(server: LocalAPIServer, otel: Any,
                                                         records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    date = DateAhead()
    server.enqueue("gemini", Reply(status=429, headers=ms(40)), Reply(status=503, headers={"retry-after": date.header}))
    client = genai_client(server, retry_options=None)

    @tokenmetry.retry(**DECORATOR)
    async def ask() -> Any:
        return await client.aio.models.generate_content(model=GEMINI, contents=GEMINI_PROMPT)

    with tokenmetry.session("agdecorated") as session, user_tracer(otel).start_as_current_span("ask") as parent:
        await ask()
    asked_date = retry_events(parent)[1]["tokenmetry.retry.retry_after_s"]
    assert asked_date == date.asked_at(server.requests[1].received_at)
    assert server.requests[2].received_at >= date.mono - EARLY
    check_loop(server, otel, records, session, parent, provider=GEMINI_API, model=GEMINI, statuses=[429, 503],
               errors=["ClientError", "ServerError"], asked=[0.04, asked_date], planned=[0.04, asked_date])


# ================================================================================ retries exhausted
def error_facts_anthropic(error: anthropic.APIStatusError) -> tuple[Any, ...]:
    """What a user sees of an anthropic error (the request id is the server's index: runs compare)."""
    return (type(error), error.status_code, str(error), error.message, error.body, error.request_id,
            error.response.headers.get("retry-after-ms"))


def error_facts_genai(error: genai_errors.APIError) -> tuple[Any, ...]:
    return (type(error), error.code, error.status, error.message, error.details, str(error))


@pytest.mark.parametrize("async_", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("status", [429, 503, 529])
async def test_anthropic_sdk_retries_exhausted(server: LocalAPIServer, otel: Any, records: list[CallRecord],
                                               status: int, async_: bool) -> None:
    plan = [Reply(status=status, headers=ms(20), message="Try later.") for _ in range(3)]

    async def run() -> anthropic.APIStatusError:
        server.reset()
        server.enqueue("anthropic.messages", *plan)
        with pytest.raises(anthropic.APIStatusError) as raised:
            await anthropic_create(server, async_, max_retries=2)
        return raised.value

    bare = await run()  # without tokenmetry: the SDK's own error
    tokenmetry.instrument(**otel.kwargs())
    with tokenmetry.session("exhausted") as session:
        error = await run()
    assert error_facts_anthropic(error) == error_facts_anthropic(bare)
    assert error.body == server.last_response.json and len(server.requests) == 3
    record = only(records)
    assert record.error_type == type(bare).__qualname__
    assert (record.usage_source, record.usage) == ("missing", Usage())
    span = only(tokenmetry_spans(otel))
    assert span.attributes["error.type"] == type(bare).__qualname__
    assert span.status.status_code.name == "ERROR"
    slept = check_retry_events(retry_events(span), server, statuses=[status, status],
                               asked=[0.02, 0.02], planned=[0.02, 0.02])
    causes = sleeps_by_cause(slept, [status, status])
    check_call_retries(record, span, causes)
    check_totals(session, ANTHROPIC, CLAUDE, causes, calls=1, errors=1)
    check_retry_metrics(otel, ANTHROPIC, CLAUDE, causes)


@pytest.mark.parametrize("async_", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("status", [429, 503])
async def test_genai_sdk_retries_exhausted(server: LocalAPIServer, otel: Any, records: list[CallRecord],
                                           status: int, async_: bool) -> None:
    plan = [Reply(status=status, retry_delay="0.01s") for _ in range(3)]
    options = types.HttpRetryOptions(attempts=3, initial_delay=0.05, max_delay=0.1, jitter=0.0,
                                     http_status_codes=[status])

    async def run() -> genai_errors.APIError:
        server.reset()
        server.enqueue("gemini", *plan)
        with pytest.raises(genai_errors.APIError) as raised:
            await genai_generate(genai_client(server, options), async_)
        return raised.value

    bare = await run()
    tokenmetry.instrument(**otel.kwargs())
    with tokenmetry.session("gexhausted") as session:
        error = await run()
    assert error_facts_genai(error) == error_facts_genai(bare)
    assert type(error) is (genai_errors.ClientError if status == 429 else genai_errors.ServerError)
    assert error.details == server.last_response.json and len(server.requests) == 3
    record = only(records)
    assert record.error_type == type(bare).__qualname__ and record.usage_source == "missing"
    span = only(tokenmetry_spans(otel))
    assert span.attributes["error.type"] == type(bare).__qualname__
    slept = check_retry_events(retry_events(span), server, statuses=[status, status],
                               asked=[0.01, 0.01], planned=GENAI_BACKOFF[:2])
    causes = sleeps_by_cause(slept, [status, status])
    check_call_retries(record, span, causes)
    check_totals(session, GEMINI_API, GEMINI, causes, calls=1, errors=1)
    check_retry_metrics(otel, GEMINI_API, GEMINI, causes)


def test_anthropic_retry_decorator_gives_up_with_the_sdks_error(server: LocalAPIServer, otel: Any,
                                                                records: list[CallRecord]) -> None:
    plan = [Reply(status=529, headers=ms(15)) for _ in range(3)]

    def run(retrying: Any) -> anthropic.APIStatusError:
        server.reset()
        server.enqueue("anthropic.messages", *plan)
        with server.anthropic_client(max_retries=0) as client:
            ask = retrying(lambda: client.messages.create(**CLAUDE_ARGS))
            with pytest.raises(anthropic.APIStatusError) as raised:
                ask()
        return raised.value

    # the same loop without tokenmetry: plain tenacity, same stop and wait
    bare = run(tenacity.retry(stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_fixed(0.015), reraise=True))
    tokenmetry.instrument(**otel.kwargs())
    with tokenmetry.session("gives-up") as session, user_tracer(otel).start_as_current_span("ask") as parent:
        error = run(tokenmetry.retry(**DECORATOR))
    assert type(error) is anthropic.OverloadedError
    assert error_facts_anthropic(error) == error_facts_anthropic(bare)
    assert [r.error_type for r in records] == ["OverloadedError"] * 3
    slept = check_retry_events(retry_events(parent), server, statuses=[529, 529],
                               asked=[0.015, 0.015], planned=[0.015, 0.015],
                               extra={"gen_ai.provider.name": ANTHROPIC})
    # the last error is not followed by a wait: two waits for three attempts
    check_totals(session, ANTHROPIC, CLAUDE, {"overloaded": slept}, calls=3, errors=3)
    check_retry_metrics(otel, ANTHROPIC, CLAUDE, {"overloaded": slept})


async def test_genai_async_retry_decorator_gives_up_with_the_sdks_error(server: LocalAPIServer, otel: Any,
                                                                        records: list[CallRecord]) -> None:
    plan = [Reply(status=503, retry_delay="0.015s") for _ in range(3)]

    async def run(retrying: Any) -> genai_errors.APIError:
        server.reset()
        server.enqueue("gemini", *plan)
        client = genai_client(server, retry_options=None)

        @retrying
        async def ask() -> Any:
            return await client.aio.models.generate_content(model=GEMINI, contents=GEMINI_PROMPT)

        with pytest.raises(genai_errors.APIError) as raised:
            await ask()
        return raised.value

    bare = await run(tenacity.retry(stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_fixed(0.015),
                                    reraise=True))
    tokenmetry.instrument(**otel.kwargs())
    with tokenmetry.session("ggives-up") as session, user_tracer(otel).start_as_current_span("ask") as parent:
        error = await run(tokenmetry.retry(**DECORATOR))
    assert type(error) is genai_errors.ServerError
    assert error_facts_genai(error) == error_facts_genai(bare)
    assert [r.error_type for r in records] == ["ServerError"] * 3
    slept = check_retry_events(retry_events(parent), server, statuses=[503, 503],
                               asked=[0.015, 0.015], planned=[0.015, 0.015],
                               extra={"gen_ai.provider.name": GEMINI_API})
    check_totals(session, GEMINI_API, GEMINI, {"server_error": slept}, calls=3, errors=3)
    check_retry_metrics(otel, GEMINI_API, GEMINI, {"server_error": slept})


# ================================================================================ anthropic rate-limit headers
def rate_limit_headers(requests: int, tokens: int, input_tokens: int, output_tokens: int) -> dict[str, str]:
    headers = {}
    for kind, remaining, limit in (("requests", requests, 4000), ("tokens", tokens, 480000),
                                   ("input-tokens", input_tokens, 400000), ("output-tokens", output_tokens, 80000)):
        headers[f"anthropic-ratelimit-{kind}-limit"] = str(limit)
        headers[f"anthropic-ratelimit-{kind}-remaining"] = str(remaining)
        headers[f"anthropic-ratelimit-{kind}-reset"] = f"2026-11-23T14:00:{len(kind):02d}Z"
    return headers


def expected_limits(headers: dict[str, str]) -> dict[str, Any]:
    """The header values as tokenmetry reports them: ``remaining_tokens``, ``limit_requests``, ..."""
    found: dict[str, Any] = {}
    for name, value in headers.items():
        kind, _, field = name.removeprefix("anthropic-ratelimit-").rpartition("-")
        found[f"{field}_{kind.replace('-', '_')}"] = value if field == "reset" else int(value)
    return found


async def test_anthropic_rate_limit_headers(server: LocalAPIServer, otel: Any, records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    first = rate_limit_headers(3999, 479000, 399100, 79900)
    # a retried call: the success's headers are what remains
    server.enqueue("anthropic.messages", Reply(status=429, headers={**ms(10), **rate_limit_headers(0, 0, 0, 0)}),
                   Reply(headers=first))
    await anthropic_create(server, False, max_retries=1)
    key = f"anthropic/{CLAUDE}"
    snapshot = tokenmetry.stats()
    assert snapshot.rate_limit_remaining == {key: expected_limits(first)}
    assert snapshot.by_model[key].rate_limit_remaining == expected_limits(first)
    assert snapshot.by_provider[ANTHROPIC].rate_limit_remaining == {key: expected_limits(first)}
    assert rate_limit_gauge(otel) == {
        (ANTHROPIC, CLAUDE, "requests"): 3999, (ANTHROPIC, CLAUDE, "tokens"): 479000,
        (ANTHROPIC, CLAUDE, "input_tokens"): 399100, (ANTHROPIC, CLAUDE, "output_tokens"): 79900}
    # the latest response wins, on an async stream too
    second = rate_limit_headers(3998, 478500, 398800, 79700)
    server.enqueue("anthropic.messages", Reply(headers=second))
    await anthropic_create(server, True, stream=True, max_retries=0)
    assert tokenmetry.stats().rate_limit_remaining == {key: expected_limits(second)}
    assert rate_limit_gauge(otel) == {
        (ANTHROPIC, CLAUDE, "requests"): 3998, (ANTHROPIC, CLAUDE, "tokens"): 478500,
        (ANTHROPIC, CLAUDE, "input_tokens"): 398800, (ANTHROPIC, CLAUDE, "output_tokens"): 79700}
    # a response without the headers changes nothing; a partial set updates only what it gives
    await anthropic_create(server, True, max_retries=0)
    partial = {"anthropic-ratelimit-tokens-remaining": "478000"}
    server.enqueue("anthropic.messages", Reply(headers=partial))
    await anthropic_create(server, False, max_retries=0)
    assert tokenmetry.stats().rate_limit_remaining == {key: {**expected_limits(second), "remaining_tokens": 478000}}
    assert rate_limit_gauge(otel)[(ANTHROPIC, CLAUDE, "tokens")] == 478000
    assert len(records) == 4 and all(r.error_type is None for r in records)


async def test_anthropic_rate_limit_headers_of_a_retried_429(server: LocalAPIServer, otel: Any) -> None:
    """A 429 the SDK retries is when "remaining: 0" matters most: its headers count too."""
    tokenmetry.instrument(**otel.kwargs())
    exhausted = rate_limit_headers(0, 0, 0, 0)
    server.enqueue("anthropic.messages", Reply(status=429, headers={**ms(10), **exhausted}))
    await anthropic_create(server, True, max_retries=1)  # the success carries no rate-limit headers
    assert tokenmetry.stats().rate_limit_remaining == {f"anthropic/{CLAUDE}": expected_limits(exhausted)}
    assert rate_limit_gauge(otel) == {(ANTHROPIC, CLAUDE, kind): 0
                                      for kind in ("requests", "tokens", "input_tokens", "output_tokens")}


def test_anthropic_rate_limit_headers_of_the_final_429(server: LocalAPIServer, otel: Any) -> None:
    tokenmetry.instrument(**otel.kwargs())
    exhausted = rate_limit_headers(0, 0, 0, 0)
    server.enqueue("anthropic.messages", Reply(status=429, headers=exhausted))
    with pytest.raises(anthropic.RateLimitError), server.anthropic_client(max_retries=0) as client:
        client.messages.create(**CLAUDE_ARGS)
    assert tokenmetry.stats().rate_limit_remaining == {f"anthropic/{CLAUDE}": expected_limits(exhausted)}
