"""Retries, throttle waits and rate-limit headroom on the real ``openai`` clients (SPEC §4).

The server answers 429 / 5xx as planned, with ``retry-after`` in seconds, ``retry-after-ms``, an
HTTP date, or nothing (the SDK's own backoff). Every sleep that happened is checked on the record, the
span events, the session, ``stats()`` and the metrics, against what the server asked and against the
gap the server itself saw between two attempts. Tolerances are what a loaded CI machine can hold:
slept >= asked - 5 ms and <= asked + 0.5 s.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import tenacity
from _checks import (
    EARLY,
    LATE,
    Planned,
    cause_of,
    check_retry_events,
    check_retry_metrics,
    check_tokens_counted_once,
    rate_limit_gauge,
    retry_events,
    sleeps_by_cause,
)
from test_openai_e2e import CHAT_MODEL, MESSAGES, check_span, openai_client, truth_of

import tokenmetry
from tokenmetry.testing import LocalAPIServer, Reply
from tokenmetry.usage import CallRecord, Usage


@pytest.fixture(scope="module")
def shared_server() -> Iterator[LocalAPIServer]:
    with LocalAPIServer() as server:
        yield server


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


def _http_date(seconds_ahead: float) -> str:
    return email.utils.formatdate(time.time() + seconds_ahead, usegmt=True)


def _planned(asked: list[float | None], backoff: tuple[float, float] | None) -> list[Planned]:
    """How long each sleep should be: what the server asked, else the SDK's own backoff range."""
    planned: list[Planned] = []
    for wanted in asked:
        if wanted is None:
            assert backoff is not None, "nothing asked: the backoff range is needed"
            planned.append(backoff)
        else:
            planned.append(wanted)
    return planned


def check_totals(record: CallRecord, session: Any, *, retries: int, throttle: float, retry_wait: float,
                 throttle_events: int) -> None:
    assert record.retries == retries
    assert record.throttle_wait_s == pytest.approx(throttle, rel=1e-12)
    assert record.retry_wait_s == pytest.approx(retry_wait, rel=1e-12)
    summary = session.summary()
    assert summary["retries"] == retries
    assert summary["throttle_wait_s"] == pytest.approx(throttle, rel=1e-12)
    assert summary["retry_wait_s"] == pytest.approx(retry_wait, rel=1e-12)
    assert session.throttle_wait_s == pytest.approx(throttle, rel=1e-12)
    snapshot = tokenmetry.stats()
    for tally in (snapshot, snapshot.by_provider["openai"], snapshot.by_model[f"openai/{CHAT_MODEL}"]):
        assert tally.retries == retries
        assert tally.throttle_events == throttle_events
        assert tally.throttle_wait_s == pytest.approx(throttle, rel=1e-12)
        assert tally.requests == 1
    assert snapshot.retry_wait_s == pytest.approx(retry_wait, rel=1e-12)


# ================================================================================ the SDK's own retries
PLANS = [
    pytest.param([Reply(status=429, headers={"retry-after": "0.2"}), Reply(status=429, headers={"retry-after": "0.1"})],
                 [0.2, 0.1], id="429-retry-after-seconds"),
    pytest.param([Reply(status=429, headers={"retry-after-ms": "150"})], [0.15], id="429-retry-after-ms"),
    pytest.param([Reply(status=429, headers={"retry-after-ms": "40", "retry-after": "3"})], [0.04],
                 id="429-ms-wins-over-seconds"),
    pytest.param([Reply(status=500, headers={"retry-after-ms": "30"}), Reply(status=503, headers={"retry-after-ms": "20"})],
                 [0.03, 0.02], id="500-503"),
    pytest.param([Reply(status=429, headers={"retry-after-ms": "30"}), Reply(status=502, headers={"retry-after-ms": "20"})],
                 [0.03, 0.02], id="429-then-502"),
    pytest.param([Reply(status=408, headers={"retry-after-ms": "25"})], [0.025], id="408"),
]


def _check_retried_call(server: LocalAPIServer, otel: Any, records: list[CallRecord], session: Any,
                        plan: list[Reply], asked: list[float | None], *, stream: bool = False,
                        backoff: tuple[float, float] | None = None) -> None:
    assert len(server.requests) == len(plan) + 1
    statuses = [r.status for r in plan]
    causes = [cause_of(s) for s in statuses]
    assert len(records) == 1  # counted once: the attempt that succeeded
    record = records[0]
    truth = truth_of(server.last_response, "chat")
    assert record.usage == truth.usage and record.usage_source == "provider"
    assert session.usage == truth.usage and tokenmetry.stats().usage == truth.usage
    assert record.response_id == truth.response_id and record.error_type is None and record.stream is stream
    span = otel.finished_spans()[0]
    slept = check_retry_events(retry_events(span), server, statuses=statuses, asked=asked,
                               planned=_planned(asked, backoff))
    throttle = sum(s for s, c in zip(slept, causes) if c == "throttle")
    retry_wait = sum(s for s, c in zip(slept, causes) if c != "throttle")
    check_totals(record, session, retries=len(plan), throttle=throttle, retry_wait=retry_wait,
                 throttle_events=causes.count("throttle"))
    check_span(span, record, port=server.port)
    check_retry_metrics(otel, "openai", CHAT_MODEL, sleeps_by_cause(slept, statuses))
    check_tokens_counted_once(otel, truth.usage)


@pytest.mark.parametrize(("plan", "asked"), PLANS)
def test_sdk_retries(server: LocalAPIServer, otel: Any, records: list[CallRecord], plan: list[Reply],
                     asked: list[float]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    server.enqueue("openai.chat", *plan)
    with openai_client(server, max_retries=3) as client, tokenmetry.session("sdk-retries") as session:
        client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
    _check_retried_call(server, otel, records, session, plan, list(asked))


@pytest.mark.parametrize(("plan", "asked"), [PLANS[0], PLANS[3]])
async def test_async_sdk_retries(server: LocalAPIServer, otel: Any, records: list[CallRecord], plan: list[Reply],
                                 asked: list[float]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    server.enqueue("openai.chat", *plan)
    async with openai_client(server, async_=True, max_retries=3) as client:
        async with tokenmetry.session("async-sdk-retries") as session:
            await client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
    _check_retried_call(server, otel, records, session, plan, list(asked))


def test_retried_stream(server: LocalAPIServer, otel: Any, records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    plan = [Reply(status=429, headers={"retry-after-ms": "30"})]
    server.enqueue("openai.chat", *plan)
    with openai_client(server) as client, tokenmetry.session("stream-retry") as session:
        chunks = list(client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, stream=True))
    assert all(c.choices for c in chunks)
    _check_retried_call(server, otel, records, session, plan, [0.03], stream=True)


@pytest.mark.parametrize("async_", [False, True], ids=["sync", "async"])
async def test_sdk_backoff_without_retry_after(server: LocalAPIServer, otel: Any, records: list[CallRecord],
                                               async_: bool) -> None:
    """No retry header: the SDK's exponential backoff (0.5 s x 0.75-1.0 jitter for the first retry)."""
    tokenmetry.instrument(**otel.kwargs())
    plan = [Reply(status=429)]
    server.enqueue("openai.chat", *plan)
    if async_:
        async with openai_client(server, async_=True, max_retries=1) as client:
            async with tokenmetry.session("backoff") as session:
                await client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
    else:
        with openai_client(server, max_retries=1) as client, tokenmetry.session("backoff") as session:
            client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
    _check_retried_call(server, otel, records, session, plan, [None], backoff=(0.375, 0.5))


def test_sdk_retry_after_http_date(server: LocalAPIServer, otel: Any, records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    server.enqueue("openai.chat", Reply(status=429, headers={"retry-after": _http_date(2)}))
    with openai_client(server) as client:
        client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
    event = retry_events(otel.finished_spans()[0])[0]
    slept = event["tokenmetry.retry.slept_s"]
    assert 0.9 <= slept <= 2.0 + LATE  # the date has one-second resolution
    assert event["tokenmetry.retry.retry_after_s"] == pytest.approx(slept, abs=0.05)


def test_sdk_retry_after_http_date_sleep_is_measured(server: LocalAPIServer, records: list[CallRecord]) -> None:
    """Whatever the 'asked' figure, the wait recorded is the sleep that happened."""
    tokenmetry.instrument()
    server.enqueue("openai.chat", Reply(status=429, headers={"retry-after": _http_date(2)}))
    with openai_client(server) as client:
        client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
    requests = server.requests
    gap = requests[1].received_at - requests[0].received_at
    record = records[0]
    assert 0.9 <= record.throttle_wait_s <= gap
    assert record.throttle_wait_s <= 2.0 + LATE
    assert record.retries == 1


@pytest.mark.parametrize("async_", [False, True], ids=["sync", "async"])
async def test_retries_exhausted(server: LocalAPIServer, otel: Any, records: list[CallRecord], async_: bool) -> None:
    tokenmetry.instrument(**otel.kwargs())
    plan = [Reply(status=429, headers={"retry-after-ms": "20"}, message="Slow down.") for _ in range(3)]
    server.enqueue("openai.chat", *plan)
    with pytest.raises(openai.RateLimitError) as info:
        if async_:
            async with openai_client(server, async_=True, max_retries=2) as client:
                async with tokenmetry.session("exhausted") as session:
                    await client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
        else:
            with openai_client(server, max_retries=2) as client, tokenmetry.session("exhausted") as session:
                client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
    error = info.value
    assert type(error) is openai.RateLimitError
    assert error.status_code == 429 and error.message == "Error code: 429 - Slow down."
    assert error.response.headers["retry-after-ms"] == "20"
    assert error.body == server.last_response.json["error"]
    assert len(server.requests) == 3
    record = records[0]
    assert len(records) == 1
    assert record.error_type == "RateLimitError"
    assert record.usage_source == "missing" and record.usage == Usage()
    span = otel.finished_spans()[0]
    assert span.attributes["error.type"] == "RateLimitError"
    slept = check_retry_events(retry_events(span), server, statuses=[429, 429], asked=[0.02, 0.02],
                               planned=[0.02, 0.02])
    assert record.retries == 2
    assert record.throttle_wait_s == pytest.approx(sum(slept), rel=1e-12)
    assert session.summary()["errors"] == 1
    assert session.summary()["throttle_wait_s"] == pytest.approx(sum(slept), rel=1e-12)
    snapshot = tokenmetry.stats()
    assert (snapshot.requests, snapshot.errors, snapshot.retries, snapshot.throttle_events) == (1, 1, 2, 2)
    check_span(span, record, port=server.port, usage_reported=False)
    check_retry_metrics(otel, "openai", CHAT_MODEL, {"throttle": slept})


def test_connection_retries(otel: Any, records: list[CallRecord]) -> None:
    with LocalAPIServer() as gone:
        url = gone.url
    tokenmetry.instrument(**otel.kwargs())
    with openai.OpenAI(api_key="test", base_url=url + "/v1", max_retries=1) as client:
        with pytest.raises(openai.APIConnectionError):
            client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
    record = records[0]
    assert record.error_type == "APIConnectionError"
    assert record.retries == 1 and record.throttle_wait_s == 0.0
    assert 0.375 - EARLY <= record.retry_wait_s <= 0.5 + LATE
    event = retry_events(otel.finished_spans()[0])[0]
    assert event == {"tokenmetry.retry.attempt": 1, "tokenmetry.retry.cause": "connection",
                     "tokenmetry.retry.slept_s": record.retry_wait_s}


# ================================================================================ the user's own retry loops
def _loop_checks(server: LocalAPIServer, otel: Any, records: list[CallRecord], session: Any, parent: Any,
                 asked: list[float | None], *, backoff: tuple[float, float] | None = None) -> list[float]:
    """Two 429s then a success, retried around whole SDK calls (SDK max_retries=0)."""
    assert len(server.requests) == 3
    assert [r.error_type for r in records] == ["RateLimitError", "RateLimitError", None]
    assert [r.retries for r in records] == [0, 0, 0]  # each attempt is its own call
    truth = truth_of(server.last_response, "chat")
    assert records[2].usage == truth.usage
    events = retry_events(parent)
    # on the user's span, numbered like the SDK's own retries (1 = the first retry)
    slept = check_retry_events(events, server, statuses=[429, 429], asked=asked,
                               planned=_planned(asked, backoff), extra={"gen_ai.provider.name": "openai"})
    summary = session.summary()
    assert (summary["calls"], summary["errors"], summary["retries"]) == (3, 2, 2)
    assert summary["throttle_wait_s"] == pytest.approx(sum(slept), rel=1e-12)
    assert session.usage == truth.usage
    snapshot = tokenmetry.stats()
    for tally in (snapshot, snapshot.by_provider["openai"], snapshot.by_model[f"openai/{CHAT_MODEL}"]):
        assert (tally.requests, tally.errors, tally.retries, tally.throttle_events) == (3, 2, 2, 2)
        assert tally.throttle_wait_s == pytest.approx(sum(slept), rel=1e-12)
    check_retry_metrics(otel, "openai", CHAT_MODEL, {"throttle": slept})
    spans = [s for s in otel.finished_spans() if s.name == f"chat {CHAT_MODEL}"]
    assert len(spans) == 3 and all(s.parent.span_id == parent.context.span_id for s in spans)
    return slept


def test_tenacity_loop_with_retry_hooks(server: LocalAPIServer, otel: Any, records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    tracer = otel.tracer_provider.get_tracer("user-code")
    server.enqueue("openai.chat", *[Reply(status=429, headers={"retry-after-ms": "10"}) for _ in range(2)])
    with openai_client(server, max_retries=0) as client, tokenmetry.session("tenacity") as session:
        with tracer.start_as_current_span("answer-question") as parent:
            for attempt in tenacity.Retrying(stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_fixed(0.05),
                                             retry=tenacity.retry_if_exception_type(openai.RateLimitError),
                                             reraise=True, **tokenmetry.retry_hooks()):
                with attempt:
                    client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
    # the loop waited 0.05 s (its own wait_fixed); the server had asked 0.01 s
    slept = _loop_checks(server, otel, records, session, parent, [0.01, 0.01], )
    assert all(0.05 - EARLY <= s <= 0.05 + LATE for s in slept)


async def test_async_tenacity_loop_with_retry_hooks(server: LocalAPIServer, otel: Any,
                                                    records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    tracer = otel.tracer_provider.get_tracer("user-code")
    server.enqueue("openai.chat", *[Reply(status=429, headers={"retry-after-ms": "30"}) for _ in range(2)])
    async with openai_client(server, async_=True, max_retries=0) as client:
        async with tokenmetry.session("atenacity") as session:
            with tracer.start_as_current_span("answer-question") as parent:
                async for attempt in tenacity.AsyncRetrying(
                        stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_fixed(0.03),
                        retry=tenacity.retry_if_exception_type(openai.RateLimitError), reraise=True,
                        **tokenmetry.retry_hooks()):
                    with attempt:
                        await client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
    _loop_checks(server, otel, records, session, parent, [0.03, 0.03])


def test_retry_decorator_honours_retry_after(server: LocalAPIServer, otel: Any, records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    tracer = otel.tracer_provider.get_tracer("user-code")
    server.enqueue("openai.chat", Reply(status=429, headers={"retry-after-ms": "30"}),
                   Reply(status=429, headers={"retry-after": "0.05"}))

    with openai_client(server, max_retries=0) as client, tokenmetry.session("decorated") as session:
        @tokenmetry.retry(attempts=3, initial_delay=5.0, jitter=False)  # 5 s would fail the test: not used
        def ask() -> Any:
            return client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)

        with tracer.start_as_current_span("ask") as parent:
            result = ask()
    assert result.id == server.last_response.response_id
    _loop_checks(server, otel, records, session, parent, [0.03, 0.05])


async def test_async_retry_decorator_and_http_date(server: LocalAPIServer, otel: Any,
                                                   records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    tracer = otel.tracer_provider.get_tracer("user-code")
    server.enqueue("openai.chat", Reply(status=429, headers={"retry-after-ms": "20"}),
                   Reply(status=429, headers={"retry-after": _http_date(2)}))
    async with openai_client(server, async_=True, max_retries=0) as client:
        @tokenmetry.retry(attempts=3, initial_delay=5.0, jitter=False)
        async def ask() -> Any:
            return await client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)

        async with tokenmetry.session("adecorated") as session:
            with tracer.start_as_current_span("ask") as parent:
                await ask()
    events = retry_events(parent)
    asked_date = events[1]["tokenmetry.retry.retry_after_s"]
    assert 0.9 <= asked_date <= 2.0  # one-second resolution of the date
    _loop_checks(server, otel, records, session, parent, [0.02, asked_date])


def test_retry_decorator_gives_up_with_the_sdks_error(server: LocalAPIServer, records: list[CallRecord]) -> None:
    tokenmetry.instrument()
    server.enqueue("openai.chat", *[Reply(status=503, headers={"retry-after-ms": "10"}) for _ in range(2)])
    with openai_client(server, max_retries=0) as client, tokenmetry.session("gives-up") as session:
        @tokenmetry.retry(attempts=2)
        def ask() -> Any:
            return client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)

        with pytest.raises(openai.InternalServerError) as info:
            ask()
    assert info.value.status_code == 503
    assert [r.error_type for r in records] == ["InternalServerError", "InternalServerError"]
    summary = session.summary()
    assert (summary["retries"], summary["throttle_wait_s"]) == (1, 0.0)
    assert 0.01 - EARLY <= summary["retry_wait_s"] <= 0.01 + LATE
    assert tokenmetry.stats().by_model[f"openai/{CHAT_MODEL}"].retries == 1


def test_retry_decorator_does_not_retry_a_400(server: LocalAPIServer, records: list[CallRecord]) -> None:
    tokenmetry.instrument()
    server.enqueue("openai.chat", Reply(status=400))
    with openai_client(server, max_retries=0) as client:
        @tokenmetry.retry(attempts=3, initial_delay=0.01)
        def ask() -> Any:
            return client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)

        with pytest.raises(openai.BadRequestError):
            ask()
    assert len(server.requests) == 1 and len(records) == 1
    assert tokenmetry.stats().retries == 0


def test_retry_decorator_rejects_bad_arguments() -> None:
    with pytest.raises(tokenmetry.TokenmetryError, match="attempts"):
        tokenmetry.retry(attempts=0)
    with pytest.raises(tokenmetry.TokenmetryError, match="initial_delay"):
        tokenmetry.retry(initial_delay=-1)


# ================================================================================ rate-limit headers
LIMITS = {"x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "499",
          "x-ratelimit-limit-tokens": "200000", "x-ratelimit-remaining-tokens": "199950",
          "x-ratelimit-reset-requests": "120ms", "x-ratelimit-reset-tokens": "15ms"}


def test_rate_limit_headers(server: LocalAPIServer, otel: Any) -> None:
    tokenmetry.instrument(**otel.kwargs())
    server.default_headers.update(LIMITS)
    server.response_models["gpt-4o"] = "gpt-4o-2024-11-20"
    with openai_client(server) as client:
        client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
        expected = {"remaining_requests": 499, "remaining_tokens": 199950, "limit_requests": 500,
                    "limit_tokens": 200000, "reset_requests": "120ms", "reset_tokens": "15ms"}
        snapshot = tokenmetry.stats()
        assert snapshot.rate_limit_remaining == {f"openai/{CHAT_MODEL}": expected}
        assert snapshot.by_model[f"openai/{CHAT_MODEL}"].rate_limit_remaining == expected
        assert snapshot.by_provider["openai"].rate_limit_remaining == {f"openai/{CHAT_MODEL}": expected}
        assert rate_limit_gauge(otel) == {("openai", CHAT_MODEL, "requests"): 499,
                                          ("openai", CHAT_MODEL, "tokens"): 199950}

        # the latest response wins; a streamed call reads them too; the key is the response model
        server.enqueue("openai.chat", Reply(headers={"x-ratelimit-remaining-requests": "498",
                                                     "x-ratelimit-remaining-tokens": "199000"}))
        list(client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, stream=True))
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    limits = tokenmetry.stats().rate_limit_remaining
    assert limits[f"openai/{CHAT_MODEL}"] == {**expected, "remaining_requests": 498, "remaining_tokens": 199000}
    assert limits["openai/gpt-4o-2024-11-20"] == expected
    assert set(limits) == {f"openai/{CHAT_MODEL}", "openai/gpt-4o-2024-11-20"}
    assert rate_limit_gauge(otel) == {("openai", CHAT_MODEL, "requests"): 498,
                                      ("openai", CHAT_MODEL, "tokens"): 199000,
                                      ("openai", "gpt-4o-2024-11-20", "requests"): 499,
                                      ("openai", "gpt-4o-2024-11-20", "tokens"): 199950}


def test_rate_limit_headers_layout_changes_and_bad_values(server: LocalAPIServer) -> None:
    """Headers are read where the last complete response had them; a malformed value there or
    another layout is read exactly as a first response is (the malformed value left out)."""
    tokenmetry.instrument()
    server.default_headers.update(LIMITS)
    expected = {"remaining_requests": 499, "remaining_tokens": 199950, "limit_requests": 500,
                "limit_tokens": 200000, "reset_requests": "120ms", "reset_tokens": "15ms"}
    key = f"openai/{CHAT_MODEL}"

    def call(**headers: str) -> dict[str, Any]:
        if headers:
            server.enqueue("openai.chat", Reply(headers=headers))
        client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
        return tokenmetry.stats().rate_limit_remaining[key]

    with openai_client(server) as client:
        assert call() == expected
        assert call(**{"x-ratelimit-remaining-requests": "498"}) == {**expected, "remaining_requests": 498}
        # same layout, one value malformed: the others are read, that one keeps its last figure
        assert call(**{"x-ratelimit-remaining-requests": "497", "x-ratelimit-remaining-tokens": "many"}) == \
            {**expected, "remaining_requests": 497}
        # another layout (one more header): read by name
        assert call(**{"x-extra": "1", "x-ratelimit-remaining-tokens": "100"}) == \
            {**expected, "remaining_tokens": 100}
        # and back
        assert call(**{"x-ratelimit-reset-tokens": "9ms"}) == {**expected, "reset_tokens": "9ms"}
        # a response with some of them only updates those
        server.default_headers.clear()
        assert call(**{"x-ratelimit-remaining-tokens": "7"}) == {**expected, "reset_tokens": "9ms",
                                                                 "remaining_tokens": 7}
        server.default_headers.update(LIMITS)
        assert call() == expected


BAD_COMPLETION = {"id": "chatcmpl-bad", "object": "chat.completion", "created": 1, "model": CHAT_MODEL,
                  "choices": "not a list"}  # strict validation rejects it inside the SDK's _process_response


def _enqueue_bad_completion(server: LocalAPIServer) -> None:
    server.enqueue("openai.chat", Reply(body=BAD_COMPLETION, headers={"x-ratelimit-remaining-requests": "42"}))


def _check_failed_validation(records: list[CallRecord]) -> None:
    failed = records[-1]
    assert (failed.error_type, failed.usage_source, failed.response_id) == \
        ("APIResponseValidationError", "missing", None)  # (this body has no usage to read)
    # its headers were read before the SDK's step raised
    assert tokenmetry.stats().rate_limit_remaining[f"openai/{CHAT_MODEL}"]["remaining_requests"] == 42


def _check_ran_once(records: list[CallRecord], caplog: pytest.LogCaptureFixture) -> None:
    assert [r.error_type for r in records] == ["APIResponseValidationError", None, "APIResponseValidationError"]
    assert not [r for r in caplog.records if "instrumentation step" in r.getMessage()]


def test_sdk_response_step_runs_once_when_it_raises(server: LocalAPIServer, records: list[CallRecord],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """The header hook wraps the SDK's ``_process_response``: when that step raises (a body strict
    validation rejects), the user gets its exception from its one run, and the hook's own failure
    handling never sees it. Checked with the headers' layout not yet learned, then learned."""
    tokenmetry.instrument()
    server.default_headers.update(LIMITS)
    with openai_client(server, _strict_response_validation=True) as client, \
            caplog.at_level("DEBUG", logger="tokenmetry"):
        for learned in (False, True):
            if learned:
                client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)  # the layout is learned
            _enqueue_bad_completion(server)
            with pytest.raises(openai.APIResponseValidationError):
                client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
            _check_failed_validation(records)
    _check_ran_once(records, caplog)


async def test_async_sdk_response_step_runs_once_when_it_raises(
        server: LocalAPIServer, records: list[CallRecord], caplog: pytest.LogCaptureFixture) -> None:
    tokenmetry.instrument()
    server.default_headers.update(LIMITS)
    with caplog.at_level("DEBUG", logger="tokenmetry"):
        async with openai_client(server, async_=True, _strict_response_validation=True) as client:
            for learned in (False, True):
                if learned:
                    await client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
                _enqueue_bad_completion(server)
                with pytest.raises(openai.APIResponseValidationError):
                    await client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
                _check_failed_validation(records)
    _check_ran_once(records, caplog)


def test_rate_limit_headers_of_calls_applied_together(server: LocalAPIServer) -> None:
    """Calls applied in one batch: each kind takes the newest value that parses, whichever call of
    the batch gave it (values are parsed when the calls are applied, newest call first), and a
    failed call's figures count in their turn."""
    tokenmetry.instrument()
    server.default_headers.update(LIMITS)
    key = f"openai/{CHAT_MODEL}"
    with openai_client(server, max_retries=0) as client:
        client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
        assert tokenmetry.stats().rate_limit_remaining[key]["remaining_tokens"] == 199950  # layout learned
        server.enqueue("openai.chat", Reply(status=429, headers={"x-ratelimit-limit-tokens": "90000",
                                                                 "x-ratelimit-remaining-tokens": "0",
                                                                 "retry-after": "0"}))
        server.enqueue("openai.chat", Reply(headers={"x-ratelimit-remaining-tokens": "1000",
                                                     "x-ratelimit-remaining-requests": "400"}))
        server.enqueue("openai.chat", Reply(headers={"x-ratelimit-remaining-tokens": "many",
                                                     "x-ratelimit-remaining-requests": "300"}))
        server.enqueue("openai.chat", Reply(headers={"x-ratelimit-remaining-tokens": "also bad",
                                                     "x-ratelimit-remaining-requests": "?",
                                                     "x-ratelimit-reset-tokens": "3ms"}))
        for _ in range(4):
            try:
                client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
            except openai.RateLimitError:
                pass
        assert tokenmetry.stats().rate_limit_remaining[key] == {
            "remaining_requests": 300, "remaining_tokens": 1000, "limit_requests": 500, "limit_tokens": 200000,
            "reset_requests": "120ms", "reset_tokens": "3ms"}
        # the failed call alone: the figures of its 429 are the newest
        server.enqueue("openai.chat", Reply(status=429, headers={"x-ratelimit-limit-tokens": "90000",
                                                                 "x-ratelimit-remaining-tokens": "0",
                                                                 "retry-after": "0"}))
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
        assert tokenmetry.stats().rate_limit_remaining[key] == {
            "remaining_requests": 499, "remaining_tokens": 0, "limit_requests": 500, "limit_tokens": 90000,
            "reset_requests": "120ms", "reset_tokens": "15ms"}


async def test_async_rate_limit_headers_partial_and_bad(server: LocalAPIServer, otel: Any) -> None:
    tokenmetry.instrument(**otel.kwargs())
    async with openai_client(server, async_=True) as client:
        server.enqueue("openai.chat", Reply(headers={"x-ratelimit-remaining-tokens": "1000",
                                                     "x-ratelimit-limit-tokens": "not-a-number"}))
        await client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
        await client.embeddings.create(model="text-embedding-3-small", input="a b", encoding_format="float")
    # a malformed value is skipped, never raised; a response without the headers changes nothing
    assert tokenmetry.stats().rate_limit_remaining == {f"openai/{CHAT_MODEL}": {"remaining_tokens": 1000}}
    assert rate_limit_gauge(otel) == {("openai", CHAT_MODEL, "tokens"): 1000}


def test_no_rate_limit_headers_no_entry(server: LocalAPIServer, otel: Any) -> None:
    tokenmetry.instrument(**otel.kwargs())
    with openai_client(server) as client:
        client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
    assert tokenmetry.stats().rate_limit_remaining == {}
    assert rate_limit_gauge(otel) == {}
