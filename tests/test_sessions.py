"""Sessions (totals, bounded history, summary, reset, turns, nesting, the manager) and the
tokens-per-minute window, with usage from real ``openai`` calls to the local server."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import openai
import pytest
from test_openai_e2e import CHAT_DETAILS, CHAT_MODEL, expected_cost, openai_client, truth_of, usage_of

import tokenmetry
from tokenmetry.rate import CallSums, RateWindow, Totals
from tokenmetry.session import DEFAULT_SESSION_ID
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
def client(server: LocalAPIServer) -> Iterator[Any]:
    with openai_client(server) as oai:
        yield oai


@pytest.fixture
def records() -> Iterator[list[CallRecord]]:
    found: list[CallRecord] = []
    unsubscribe = tokenmetry.on_record(found.append)
    yield found
    unsubscribe()


def ask(client: Any, words: int, **extra: Any) -> Any:
    return client.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": " ".join(["hello"] * words)}], **extra)


def sent_usage(server: LocalAPIServer, start: int = 0) -> Usage:
    return sum((usage_of(r.usage, "chat") for r in server.responses[start:]), Usage())  # type: ignore[union-attr]


# ================================================================================ totals and history
def test_history_is_bounded_totals_stay_exact(server: LocalAPIServer, client: Any) -> None:
    tokenmetry.instrument(history_limit=3)
    with tokenmetry.session("bounded") as session:
        for words in (1, 2, 3, 4, 5):
            ask(client, words)
    ids = [r.response_id for r in server.responses]  # type: ignore[union-attr]
    assert [c.response_id for c in session.calls] == ids[-3:]  # the most recent, oldest first
    assert session.call_count == 5
    assert session.usage == sent_usage(server)
    assert session.summary()["calls"] == 5
    assert session.summary()["usage"] == sent_usage(server).to_dict()


def test_history_limit_zero_keeps_only_totals(server: LocalAPIServer, client: Any) -> None:
    tokenmetry.instrument(history_limit=0)
    with tokenmetry.session("no-history") as session:
        ask(client, 4)
        ask(client, 6)
    assert session.calls == []
    assert session.usage == sent_usage(server)


def test_default_session_history_follows_the_option(server: LocalAPIServer, client: Any) -> None:
    tokenmetry.instrument(history_limit=2)
    for words in (1, 2, 3):
        ask(client, words)
    default = tokenmetry.sessions.default
    assert len(default.calls) == 2 and default.call_count == 3
    assert default.usage == sent_usage(server)


def test_calls_outside_a_session_go_to_the_default(server: LocalAPIServer, client: Any,
                                                   records: list[CallRecord], otel: Any) -> None:
    tokenmetry.instrument(**otel.kwargs())
    assert tokenmetry.current_session() is tokenmetry.sessions.default
    assert tokenmetry.sessions.default.id == DEFAULT_SESSION_ID == "default"
    ask(client, 3)
    assert records[0].session_id == "default"
    assert tokenmetry.sessions.default.calls == records
    assert tokenmetry.sessions.get("default") is tokenmetry.sessions.default
    assert otel.finished_spans()[0].attributes["gen_ai.conversation.id"] == "default"


def test_nested_sessions(server: LocalAPIServer, client: Any, records: list[CallRecord], otel: Any) -> None:
    tokenmetry.instrument(**otel.kwargs())
    with tokenmetry.session("outer") as outer:
        ask(client, 1)
        with tokenmetry.session("inner") as inner:
            assert tokenmetry.current_session() is inner
            ask(client, 2)
        assert tokenmetry.current_session() is outer
        ask(client, 3)
        with outer:  # re-entering the session in scope is harmless
            ask(client, 4)
        assert tokenmetry.current_session() is outer
    assert tokenmetry.current_session() is tokenmetry.sessions.default
    assert [r.session_id for r in records] == ["outer", "inner", "outer", "outer"]
    assert [s.attributes["gen_ai.conversation.id"] for s in otel.finished_spans()] == [
        "outer", "inner", "outer", "outer"]
    truths = [usage_of(r.usage, "chat") for r in server.responses]  # type: ignore[union-attr]
    assert inner.usage == truths[1]
    assert outer.usage == truths[0] + truths[2] + truths[3]
    assert tokenmetry.sessions.default.call_count == 0


async def test_async_sessions_and_reopening(server: LocalAPIServer) -> None:
    tokenmetry.instrument()
    async with openai_client(server, async_=True) as aclient:
        async with tokenmetry.session("reopened") as first:
            await aclient.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": "a b"}])
        async with tokenmetry.session("reopened") as again:
            await aclient.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": "c"}])
    assert again is first  # the same id is the same session: totals accumulate
    assert first.call_count == 2
    assert first.usage == sent_usage(server)


# ================================================================================ summary, turns, reset
def test_summary_fields_and_averages(server: LocalAPIServer, client: Any, records: list[CallRecord]) -> None:
    tokenmetry.instrument()
    server.enqueue("openai.chat", Reply(usage=CHAT_DETAILS), Reply(usage=CHAT_DETAILS))
    with tokenmetry.session("summary") as session:
        ask(client, 5)
        ask(client, 9)
        list(ask(client, 2, stream=True))
    truth = sent_usage(server)
    assert truth.cache_read_tokens == 12 and truth.reasoning_tokens == 10  # the scripted details went out
    summary = session.summary()
    calls = 3
    durations = sum(r.duration_s for r in records)
    costs = [expected_cost("openai", r.usage, r.response_model) for r in records]
    assert [r.cost for r in records] == costs
    assert all(cost is not None for cost in costs)  # gpt-4o-mini is priced
    total_cost = costs[0] + costs[1] + costs[2]  # type: ignore[operator]
    assert summary == {
        "session_id": "summary",
        "calls": calls,
        "turns": calls,  # each call made outside a turn is a turn of its own
        "errors": 0,
        "retries": 0,
        "usage": truth.to_dict(),
        "averages_per_call": {
            "input_tokens": truth.input_tokens / calls,
            "output_tokens": truth.output_tokens / calls,
            "total_tokens": truth.total_tokens / calls,
            "cache_read_tokens": truth.cache_read_tokens / calls,
            "reasoning_tokens": truth.reasoning_tokens / calls,
            "duration_s": pytest.approx(durations / calls, rel=1e-9),
            "cost": str(total_cost.amount / Decimal(calls)),
        },
        # every call completed within the window: the rolling rate is the whole total per minute
        "tokens_per_minute": truth.total_tokens * 60.0 / 60,
        "work_rate_tpm": pytest.approx(60.0 * truth.total_tokens / durations, rel=1e-9),
        "throttle_wait_s": 0.0,
        "retry_wait_s": 0.0,
        "cost": total_cost.to_dict(),
        "unpriced_calls": 0,
    }
    assert session.cost == total_cost
    assert session.tokens_per_minute() == truth.total_tokens


def test_summary_of_an_empty_session() -> None:
    summary = tokenmetry.session("empty").summary()
    assert summary["calls"] == 0 and summary["turns"] == 0
    assert summary["usage"] == Usage().to_dict()
    assert set(summary["averages_per_call"].values()) == {None}
    assert (summary["tokens_per_minute"], summary["work_rate_tpm"], summary["cost"]) == (0.0, 0.0, None)


def test_turns(server: LocalAPIServer, client: Any, records: list[CallRecord]) -> None:
    tokenmetry.instrument()
    with tokenmetry.session("turns") as session:
        with session.turn() as first:
            ask(client, 1)
            ask(client, 2)  # a turn that made two model calls is still one turn
        with session.turn() as second:
            ask(client, 3)
        ask(client, 4)  # outside any turn: its own
    assert (first, second) == (1, 2)
    assert [r.turn for r in records] == [1, 1, 2, None]
    assert session.summary()["turns"] == 3
    assert session.summary()["calls"] == 4
    per_turn: dict[int | None, Usage] = {}
    for record, sent in zip(records, server.responses, strict=True):
        per_turn[record.turn] = per_turn.get(record.turn, Usage()) + usage_of(sent.usage, "chat")  # type: ignore[union-attr]
    assert sum((r.usage for r in records if r.turn == 1), Usage()) == per_turn[1]


def test_reset(server: LocalAPIServer, client: Any) -> None:
    tokenmetry.instrument()
    with tokenmetry.session("to-reset") as session:
        ask(client, 3)
        session.reset()
        assert session.call_count == 0 and session.calls == [] and session.usage == Usage()
        assert session.cost is None and session.summary()["turns"] == 0
        assert session.tokens_per_minute() == 0.0
        ask(client, 7)
    assert session.usage == truth_of(server.last_response, "chat").usage
    assert session.call_count == 1
    # the process statistics are not the session's: both calls are still there
    assert tokenmetry.stats().requests == 2


def test_session_manager(server: LocalAPIServer, client: Any) -> None:
    tokenmetry.instrument()
    assert tokenmetry.sessions.ids() == ["default"]
    assert tokenmetry.sessions.get("nope") is None
    with tokenmetry.session("a") as a:
        ask(client, 2)
    with tokenmetry.session("b") as b:
        ask(client, 3)
    assert tokenmetry.sessions.ids() == ["default", "a", "b"]
    assert tokenmetry.sessions.get("a") is a and tokenmetry.sessions.get("b") is b
    assert tokenmetry.session("a") is a
    tokenmetry.sessions.reset("a")
    assert a.call_count == 0 and b.call_count == 1
    tokenmetry.sessions.reset("unknown")  # nothing to reset: no error
    anonymous = tokenmetry.session()
    assert len(anonymous.id) == 32 and anonymous.id in tokenmetry.sessions.ids()
    assert tokenmetry.session(DEFAULT_SESSION_ID) is tokenmetry.sessions.default
    with pytest.raises(tokenmetry.TokenmetryError):
        tokenmetry.session("")
    with pytest.raises(tokenmetry.TokenmetryError):
        tokenmetry.session(42)  # type: ignore[arg-type]
    tokenmetry.sessions.clear()
    assert tokenmetry.sessions.ids() == ["default"]


def test_session_records_errors_and_usage_none_details(server: LocalAPIServer) -> None:
    tokenmetry.instrument()
    with openai_client(server, max_retries=0) as oai, tokenmetry.session("mixed") as session:
        server.enqueue("openai.chat", Reply(status=400))
        with pytest.raises(openai.BadRequestError):
            ask(oai, 2)
        oai.completions.create(model="gpt-3.5-turbo-instruct", prompt="one two")  # no details in its usage
    assert session.summary()["errors"] == 1
    truth = usage_of(server.last_response.usage, "completions")  # type: ignore[union-attr]
    assert truth.cache_read_tokens is None
    assert session.usage == truth  # the failed call added nothing, details stay None


# ================================================================================ tokens per minute
def test_rate_window_decays_to_zero_when_idle() -> None:
    window = RateWindow(60)
    window.add(100, now=1000.2)
    window.add(50, now=1000.9)
    window.add(30, now=1030.0)
    assert window.total(1030.5) == 180
    assert window.per_minute(1030.5) == 180.0
    assert window.total(1059.99) == 180  # the second 1000 is still inside [1000, 1060)
    assert window.total(1060.0) == 30  # ... and falls out at 1060
    assert window.total(1089.99) == 30
    assert window.total(1090.0) == 0
    assert window.per_minute(5000.0) == 0.0  # idle for long: 0, not the last burst


def test_rate_window_per_minute_scales_with_the_window() -> None:
    window = RateWindow(30)
    window.add(300, now=10.0)
    assert window.per_minute(10.0) == 600.0


def test_rate_window_memory_is_bounded() -> None:
    window = RateWindow(60)
    before = (sys.getsizeof(window._seconds), sys.getsizeof(window._tokens))
    for second in range(100_000):
        window.add(1, now=second + 0.5)
    assert (len(window._seconds), len(window._tokens)) == (60, 60)
    assert (sys.getsizeof(window._seconds), sys.getsizeof(window._tokens)) == before
    assert window.total(99_999.9) == 60  # exactly the last 60 one-second buckets


def test_rate_window_reused_bucket_forgets_the_old_second() -> None:
    window = RateWindow(60)
    window.add(500, now=100.0)
    window.add(7, now=160.0)  # same bucket index, a minute later
    assert window.total(160.0) == 7


def test_stats_tokens_per_minute_and_work_rate(server: LocalAPIServer, client: Any,
                                               records: list[CallRecord]) -> None:
    tokenmetry.instrument(tpm_window_s=30)
    with tokenmetry.session("rate") as session:
        ask(client, 4)
        list(ask(client, 6, stream=True))
    total = sent_usage(server).total_tokens
    busy = sum(r.duration_s for r in records)
    snapshot = tokenmetry.stats()
    # a 30 s window holding every call: tokens in the window x 60 / 30
    assert snapshot.tokens_per_minute == total * 2.0
    assert snapshot.work_rate_tpm == pytest.approx(60.0 * total / busy, rel=1e-9)
    model = snapshot.by_model[f"openai/{CHAT_MODEL}"]
    assert model.tokens_per_minute == total * 2.0
    assert model.work_rate_tpm == pytest.approx(60.0 * total / busy, rel=1e-9)
    assert session.summary()["tokens_per_minute"] == total * 2.0
    assert session.summary()["work_rate_tpm"] == pytest.approx(60.0 * total / busy, rel=1e-9)


def test_tokens_per_minute_gauge(server: LocalAPIServer, client: Any, otel: Any) -> None:
    tokenmetry.instrument(**otel.kwargs())
    ask(client, 4)
    total = sent_usage(server).total_tokens
    gauge = otel.metric_points("tokenmetry.tokens_per_minute")
    assert [(dict(p.attributes), p.value) for p in gauge] == [
        ({"gen_ai.provider.name": "openai", "gen_ai.request.model": CHAT_MODEL}, float(total))]


def test_work_rate_counts_only_time_spent_producing_tokens(server: LocalAPIServer,
                                                           records: list[CallRecord]) -> None:
    """A failed call spent time but produced nothing: the session's work rate and the process's agree."""
    tokenmetry.instrument()
    with openai_client(server, max_retries=0) as oai, tokenmetry.session("work") as session:
        server.enqueue("openai.chat", Reply(status=500, delay=0.05))
        with pytest.raises(openai.InternalServerError):
            ask(oai, 3)
        ask(oai, 5)
    failed, done = records
    assert failed.duration_s >= 0.05 and failed.usage.total_tokens == 0
    total = done.usage.total_tokens
    assert session.summary()["work_rate_tpm"] == pytest.approx(60.0 * total / done.duration_s, rel=1e-9)
    assert tokenmetry.stats().work_rate_tpm == pytest.approx(60.0 * total / done.duration_s, rel=1e-9)
    # the average duration still covers every call
    assert session.summary()["averages_per_call"]["duration_s"] == pytest.approx(
        (failed.duration_s + done.duration_s) / 2, rel=1e-9)


# ================================================================================ pending calls
RATE_LIMIT_HEADERS = {"x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "499",
                      "x-ratelimit-limit-tokens": "200000", "x-ratelimit-remaining-tokens": "199950"}


def test_finished_calls_are_applied_in_batches_and_every_reader_sees_them(server: LocalAPIServer,
                                                                          client: Any) -> None:
    """With nothing needing a call at once (no OpenTelemetry SDK, no on_record, no budget), finished
    calls are held and added to sessions and statistics in batches; any reader applies them first."""
    from tokenmetry.call import recorder
    from tokenmetry.pending import FOLD_BATCH

    tokenmetry.instrument()
    server.default_headers.update(RATE_LIMIT_HEADERS)
    with tokenmetry.session("batched") as session:
        for words in range(1, FOLD_BATCH):
            ask(client, words)
        assert len(recorder._pending) == FOLD_BATCH - 1  # held: nothing asked for them yet
        assert session.usage == sent_usage(server)  # the reader applied them
        assert not recorder._pending
        for words in range(1, FOLD_BATCH + 4):
            ask(client, words)
        assert len(recorder._pending) == 3  # the 16th finished call applied its batch
    expected = sent_usage(server)
    calls = 2 * FOLD_BATCH + 2
    assert session.call_count == calls and session.usage == expected
    costs = [expected_cost("openai", usage_of(r.usage, "chat"), r.model, CHAT_MODEL)  # type: ignore[union-attr]
             for r in server.responses]
    assert all(cost is not None for cost in costs)
    assert session.cost == sum(costs)  # type: ignore[arg-type]
    assert [record.cost for record in session.calls] == costs
    snapshot = tokenmetry.stats()
    assert snapshot.requests == calls and snapshot.usage == expected
    assert snapshot.rate_limit_remaining == {f"openai/{CHAT_MODEL}": {
        "remaining_requests": 499, "remaining_tokens": 199950, "limit_requests": 500, "limit_tokens": 200000}}
    assert not recorder._pending


def test_a_reader_inside_an_unpriced_hook_sees_the_calls_applied_so_far(server: LocalAPIServer,
                                                                        client: Any) -> None:
    """Pricing a held call can run user code (an on_unpriced hook) that reads a session: it must not
    wait for the batch it is part of (a deadlock) and sees the calls applied before it."""
    from tokenmetry.pricing import on_unpriced

    tokenmetry.instrument()
    seen: list[int] = []
    unsubscribe = on_unpriced(lambda model, provider: seen.append(tokenmetry.current_session().call_count))
    try:
        with tokenmetry.session("hooked") as session:
            ask(client, 3)
            client.chat.completions.create(model="no-such-model-anywhere",
                                           messages=[{"role": "user", "content": "hi"}])
            assert session.call_count == 2  # applies both; the hook runs while the second is priced
    finally:
        unsubscribe()
    assert seen == [1]  # ran while the second call was priced: the first one applied, not the second
    assert session.calls[0].cost is not None and session.calls[1].cost is None


def test_rate_window_drops_tokens_older_than_what_a_bucket_holds() -> None:
    window = RateWindow(60)
    window.add(10, 1_000_120.5)
    window.add(7, 1_000_060.2)  # same bucket, one window earlier: applied late, already out of the window
    assert window.total(1_000_120.9) == 10
    window.add(5, 1_000_119.0)  # a second still in the window
    assert window.total(1_000_120.9) == 15


def test_rate_limits_are_read_when_asked_and_the_newest_figure_of_each_kind_wins(server: LocalAPIServer,
                                                                                client: Any) -> None:
    """Responses' rate-limit headers are kept unread until stats() asks; then each kind takes its
    value from the newest response that carried it, and responses without the vendor's headers
    change nothing."""
    tokenmetry.instrument()
    server.default_headers.update({**RATE_LIMIT_HEADERS, "x-ratelimit-reset-requests": "120ms"})
    ask(client, 3)
    server.default_headers.clear()
    server.enqueue("openai.chat", Reply(headers={"x-ratelimit-remaining-requests": "498",
                                                 "x-ratelimit-remaining-tokens": "not-a-number"}))
    ask(client, 4)
    ask(client, 5)  # no rate-limit headers at all: a proxy, or another platform
    assert tokenmetry.stats().rate_limit_remaining == {f"openai/{CHAT_MODEL}": {
        "remaining_requests": 498, "remaining_tokens": 199950, "limit_requests": 500, "limit_tokens": 200000,
        "reset_requests": "120ms"}}
    server.enqueue("openai.chat", Reply(headers={"x-ratelimit-remaining-tokens": "150000"}))
    ask(client, 6)
    assert tokenmetry.stats().by_model[f"openai/{CHAT_MODEL}"].rate_limit_remaining == {
        "remaining_requests": 498, "remaining_tokens": 150000, "limit_requests": 500, "limit_tokens": 200000,
        "reset_requests": "120ms"}


def test_calls_finished_by_finalisers_are_applied_by_the_next_call(server: LocalAPIServer, client: Any) -> None:
    """A finaliser (a stream garbage-collected unread) never applies pending calls itself; the next
    call does, so a workload that abandons every stream does not keep them all."""
    import gc

    from tokenmetry.call import recorder
    from tokenmetry.pending import FOLD_BATCH

    tokenmetry.instrument()
    for _ in range(FOLD_BATCH + 2):
        stream = client.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}],
                                                stream=True)
        del stream
        gc.collect()
        if len(recorder._pending) < FOLD_BATCH:
            assert recorder._pending[-1].error_type == "_OTHER"  # finished by the finaliser, left pending
    # the finalisers applied nothing: the (FOLD_BATCH + 1)-th call's begin() applied the first batch
    assert len(recorder._pending) == 2
    assert tokenmetry.stats().requests == FOLD_BATCH + 2


def test_a_run_of_calls_adds_its_sums_exactly() -> None:
    """A run of calls is summed in one pass: the totals, the per-second tokens of the window (calls
    ending in different seconds) and the detail counts (None until some call reports one)."""
    from types import SimpleNamespace

    def call(end: float, input_tokens: int, output_tokens: int, **details: Any) -> Any:
        fields = {"cache_read_tokens": None, "cache_write_tokens": None, "reasoning_tokens": None,
                  "tool_tokens": None, "error_type": None, "retries": 0, "throttle_events": 0,
                  "throttle_wait_s": 0.0, "retry_wait_s": 0.0, "turn": None, "quote": None, **details}
        return SimpleNamespace(started_at=end - 0.5, duration_s=0.5, input_tokens=input_tokens,
                               output_tokens=output_tokens, **fields)

    now = 1_000_000.0
    calls = [call(now + 0.1, 10, 5), call(now + 0.7, 20, 5, cache_read_tokens=4),
             call(now + 1.2, 0, 0, error_type="APIError"),  # failed before any tokens: no busy time
             call(now + 1.3, 30, 10, reasoning_tokens=0, retries=2, throttle_events=1, throttle_wait_s=1.5,
                  retry_wait_s=0.25),
             call(now + 3.9, 1, 1, cache_read_tokens=6, tool_tokens=3)]
    sums = CallSums(calls)
    assert sums.seconds == [(1_000_000, 40), (1_000_001, 40), (1_000_003, 2)]
    totals = Totals(60)
    totals.add_sums(sums)
    assert (totals.requests, totals.errors, totals.retries, totals.throttle_events) == (5, 1, 2, 1)
    assert (totals.throttle_wait_s, totals.retry_wait_s) == (1.5, 0.25)
    assert totals.duration_s == 2.5 and totals.busy_s == 2.0
    assert totals.usage() == Usage(61, 21, cache_read_tokens=10, cache_write_tokens=None, reasoning_tokens=0,
                                   tool_tokens=3)
    assert totals.window.total(now + 4) == 82
    assert totals.window.total(now + 60.5) == 42  # the first second has left the window
    totals.add_sums(CallSums([call(now + 4.0, 3, 3)]))
    assert totals.usage() == Usage(64, 24, cache_read_tokens=10, cache_write_tokens=None, reasoning_tokens=0,
                                   tool_tokens=3)
