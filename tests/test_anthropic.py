"""End-to-end tests of the anthropic adapter: the real ``anthropic`` clients over HTTP to the local
vendor server, every number checked against what the server sent.

Truth: ``server.responses[i].usage`` (non-streamed) and ``.usage_pieces`` (``message_start`` then
``message_delta`` usage, for streams), normalised here by the SPEC §3 rules, independently of the
adapter's code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
from _checks import TOKENMETRY_SCOPE, only, tokenmetry_spans

import tokenmetry
from tokenmetry.counting import estimate_tokens
from tokenmetry.testing import LocalAPIServer, Reply, SSEEvent
from tokenmetry.usage import Usage
from realdata import REAL_RESPONSES

MODEL = "claude-sonnet-4-6"
PROMPT = "Tell me three short facts about river otters please"
MESSAGES = [{"role": "user", "content": PROMPT}]
ARGS: dict[str, Any] = {"model": MODEL, "max_tokens": 200, "messages": MESSAGES}
REAL = REAL_RESPONSES
SDK_SCOPE = "com.anthropic.sdk.python"


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def server() -> Iterator[LocalAPIServer]:
    with LocalAPIServer() as local:
        yield local


@pytest.fixture(autouse=True)
def fresh_server(server: LocalAPIServer) -> Iterator[None]:
    server.reset()
    yield
    server.reset()


@pytest.fixture
def records() -> Iterator[list[Any]]:
    seen: list[Any] = []
    unsubscribe = tokenmetry.on_record(seen.append)
    yield seen
    unsubscribe()


@pytest.fixture
def tm(otel: Any) -> Any:
    """tokenmetry instrumenting anthropic, with in-memory OpenTelemetry."""
    tokenmetry.instrument(providers=["anthropic"], **otel.kwargs())
    return otel


@pytest.fixture
def sdk_hook_restored() -> Iterator[None]:
    """wrap() installs the SDK-span hook for good: put the SDK's own function back afterwards."""
    import anthropic._base_client as base

    original = base.__dict__["start_api_call_span"]
    yield
    base.start_api_call_span = original


def client(server: LocalAPIServer, **kwargs: Any) -> Any:
    return server.anthropic_client(**{"max_retries": 0, **kwargs})


def aclient(server: LocalAPIServer, **kwargs: Any) -> Any:
    return server.anthropic_client(async_=True, **{"max_retries": 0, **kwargs})


# ----------------------------------------------------------------------------- truth (SPEC §3)
def spec_usage(raw: dict[str, Any]) -> tuple[Usage, int | None]:
    """SPEC §3 on one raw usage object: (Usage, 1-hour cache writes)."""
    input_tokens = raw.get("input_tokens") or 0
    output = raw.get("output_tokens") or 0
    cache_read = raw.get("cache_read_input_tokens")
    cache_write = raw.get("cache_creation_input_tokens")
    one_hour = (raw.get("cache_creation") or {}).get("ephemeral_1h_input_tokens")
    for entry in raw.get("iterations") or []:
        if entry["type"] == "compaction":  # not in the top-level fields: added
            input_tokens += entry["input_tokens"]
            output += entry["output_tokens"]
            cache_read = (cache_read or 0) + entry["cache_read_input_tokens"]
            cache_write = (cache_write or 0) + entry["cache_creation_input_tokens"]
            entry_1h = (entry.get("cache_creation") or {}).get("ephemeral_1h_input_tokens")
            if entry_1h is not None:
                one_hour = (one_hour or 0) + entry_1h
    reasoning = (raw.get("output_tokens_details") or {}).get("thinking_tokens")
    total_input = input_tokens + (cache_read or 0) + (cache_write or 0)
    return Usage(total_input, output, cache_read, cache_write, reasoning, None), one_hour


def merged_stream_usage(pieces: list[dict[str, Any]]) -> dict[str, Any]:
    """``message_start`` usage, each later piece's non-null fields replacing (never adding to) it."""
    merged = dict(pieces[0])
    for piece in pieces[1:]:
        merged.update({key: value for key, value in piece.items() if value is not None})
    return merged


def sent_truth(server: LocalAPIServer, index: int = -1) -> tuple[Usage, int | None, Any]:
    """(Usage, 1-hour writes, response) of the ``index``-th answered request, by the SPEC rules."""
    sent = server.responses[index]
    assert sent is not None
    if sent.stream:
        return (*spec_usage(merged_stream_usage(sent.usage_pieces)), sent)
    return (*spec_usage(sent.usage), sent)


def expected_cost(model: str, usage: Usage, one_hour: int | None) -> Any:
    return tokenmetry.price(model, usage, provider="anthropic", cache_write_1h_tokens=one_hour)


# ----------------------------------------------------------------------------- checks
def check_record(record: Any, server: LocalAPIServer, *, stream: bool, index: int = -1,
                 operation: str = "chat", provider: str = "anthropic", session_id: str = "default",
                 retries: int = 0) -> Usage:
    """Every CallRecord field against the server's truth; returns the expected Usage."""
    usage, one_hour, sent = sent_truth(server, index)
    assert record.provider == provider
    assert record.operation == operation
    assert record.request_model == MODEL
    assert record.response_model == sent.model
    assert record.response_id == sent.response_id
    assert record.usage == usage
    assert record.usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert record.usage_source == "provider"
    assert record.stream is stream
    assert record.retries == retries
    assert record.error_type is None
    assert record.session_id == session_id
    assert record.server_address == "127.0.0.1"
    assert record.finish_reasons == ("end_turn",)
    assert record.cost == expected_cost(sent.model, usage, one_hour)
    assert record.cost is not None
    if stream:
        assert record.time_to_first_chunk_s is not None
        assert 0 < record.time_to_first_chunk_s <= record.duration_s
    else:
        assert record.time_to_first_chunk_s is None
    return usage


def check_span(span: Any, record: Any, server: LocalAPIServer, *, provider: str = "anthropic") -> None:
    """Every attribute of tokenmetry's span against the record (itself checked against the server)."""
    usage = record.usage
    attributes = dict(span.attributes)
    expected: dict[str, Any] = {
        "gen_ai.operation.name": record.operation,
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": MODEL,
        "gen_ai.request.stream": record.stream,
        "gen_ai.conversation.id": record.session_id,
        "server.address": "127.0.0.1",
        "server.port": server.port,
        "gen_ai.response.model": record.response_model,
        "gen_ai.response.id": record.response_id,
        "gen_ai.response.finish_reasons": record.finish_reasons,
        "gen_ai.usage.input_tokens": usage.input_tokens,
        "gen_ai.usage.output_tokens": usage.output_tokens,
        "tokenmetry.usage.source": "provider",
        "tokenmetry.retries": record.retries,
        "tokenmetry.throttle_wait_s": record.throttle_wait_s,
        "tokenmetry.cost.amount": float(record.cost.amount),
        "tokenmetry.cost.currency": "USD",
    }
    optional = {
        "gen_ai.usage.cache_read.input_tokens": usage.cache_read_tokens,
        "gen_ai.usage.cache_write.input_tokens": usage.cache_write_tokens,
        "gen_ai.usage.reasoning.output_tokens": usage.reasoning_tokens,
        "tokenmetry.time_to_first_chunk_s": record.time_to_first_chunk_s,
    }
    expected.update({key: value for key, value in optional.items() if value is not None})
    if record.retry_wait_s:
        expected["tokenmetry.retry_wait_s"] = record.retry_wait_s
    assert attributes == expected
    assert span.name == f"{record.operation} {MODEL}"
    assert span.kind.name == "CLIENT"
    assert span.status.status_code.name == "UNSET"


def metric_sums(otel: Any, name: str, **match: Any) -> tuple[int, float]:
    """(count, sum) over the points of ``name`` whose attributes include ``match``."""
    count, total = 0, 0.0
    for point in otel.metric_points(name):
        attributes = dict(point.attributes)
        if all(attributes.get(key) == value for key, value in match.items()):
            count += getattr(point, "count", 1)
            total += point.sum if hasattr(point, "sum") else point.value
    return count, total


def check_metrics(otel: Any, records: list[Any], server: LocalAPIServer) -> None:
    """Token usage, duration and detail counters add up to the records, with the right attributes."""
    for record in records:
        base = {"gen_ai.operation.name": record.operation, "gen_ai.provider.name": record.provider,
                "gen_ai.request.model": record.request_model, "gen_ai.response.model": record.response_model,
                "server.address": "127.0.0.1", "server.port": server.port}
        for token_type, expected in (("input", "input_tokens"), ("output", "output_tokens")):
            mine = [r for r in records if r.response_model == record.response_model]
            count, total = metric_sums(otel, "gen_ai.client.token.usage",
                                       **base, **{"gen_ai.token.type": token_type})
            assert count == len(mine)
            assert total == sum(getattr(r.usage, expected) for r in mine)
        duration_count, _ = metric_sums(otel, "gen_ai.client.operation.duration", **base)
        assert duration_count == len([r for r in records if r.response_model == record.response_model])
    for kind, field in (("cache_read", "cache_read_tokens"), ("cache_write", "cache_write_tokens"),
                        ("reasoning", "reasoning_tokens")):
        _, total = metric_sums(otel, "tokenmetry.tokens", **{"tokenmetry.token.kind": kind})
        assert total == sum(getattr(r.usage, field) or 0 for r in records)


CACHED_THINKING_USAGE = {
    "cache_read_input_tokens": 1200,
    "cache_creation_input_tokens": 300,
    "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
    "output_tokens_details": {"thinking_tokens": 7},
}


# ----------------------------------------------------------------------------- messages.create
def test_create_sync_every_field(server: LocalAPIServer, tm: Any, records: list[Any]) -> None:
    server.enqueue("anthropic.messages", Reply(usage=CACHED_THINKING_USAGE))
    with tokenmetry.session("s-create") as session:
        message = client(server).messages.create(**ARGS)
    record = only(records)
    usage = check_record(record, server, stream=False, session_id="s-create")
    # the scripted numbers, normalised by hand: 1200 read + 300 written + the uncached prompt
    sent = server.last_response.usage
    assert usage == Usage(sent["input_tokens"] + 1500, sent["output_tokens"], 1200, 300, 7, None)
    assert message.usage.input_tokens == sent["input_tokens"]  # the user's object is untouched
    assert session.usage == usage and session.calls == [record]
    # the 1-hour writes are priced as such: the cost differs from pricing them all as 5-minute writes
    assert record.cost != expected_cost(record.response_model, usage, None)
    check_span(only(tm.finished_spans()), record, server)
    check_metrics(tm, records, server)


async def test_create_async_every_field(server: LocalAPIServer, tm: Any, records: list[Any]) -> None:
    server.enqueue("anthropic.messages", Reply(usage=CACHED_THINKING_USAGE))
    message = await aclient(server).messages.create(**ARGS)
    record = only(records)
    check_record(record, server, stream=False)
    assert message.id == record.response_id
    check_span(only(tm.finished_spans()), record, server)
    check_metrics(tm, records, server)


def test_create_without_usage_is_estimated(server: LocalAPIServer, tm: Any, records: list[Any]) -> None:
    server.enqueue("anthropic.messages", Reply(omit_usage=True), Reply(omit_usage=True))
    c = client(server)
    c.messages.create(**ARGS)
    for _ in c.messages.create(**ARGS, stream=True):
        pass
    for record in records:
        assert record.usage_source == "estimated"
        assert record.usage.input_tokens > 0 and record.usage.output_tokens > 0
    assert [r.stream for r in records] == [False, True]


def test_parse_structured_output(server: LocalAPIServer, tm: Any, records: list[Any]) -> None:
    import pydantic

    class Facts(pydantic.BaseModel):
        facts: list[str]

    parsed = client(server).messages.parse(**ARGS, output_format=Facts)
    assert parsed.parsed_output == Facts(facts=["example"])
    check_record(only(records), server, stream=False)


# ----------------------------------------------------------------------------- streams
@pytest.mark.parametrize("delta_usage", [None, "output_only",
                                         {"input_tokens": 900, "cache_read_input_tokens": 40}])
def test_create_stream_sync(server: LocalAPIServer, tm: Any, records: list[Any], delta_usage: Any) -> None:
    server.enqueue("anthropic.messages", Reply(usage=CACHED_THINKING_USAGE, delta_usage=delta_usage))
    events = list(client(server).messages.create(**ARGS,
                                                 thinking={"type": "enabled", "budget_tokens": 1024},
                                                 stream=True))
    record = only(records)
    usage = check_record(record, server, stream=True)
    start, delta = server.last_response.usage_pieces
    # cumulative output assigned, not added; omitted fields keep the start's value
    assert usage.output_tokens == delta["output_tokens"]
    assert usage.cache_write_tokens == start["cache_creation_input_tokens"]
    if isinstance(delta_usage, dict):
        assert usage.input_tokens == 900 + 40 + start["cache_creation_input_tokens"]
    # the thinking count rides on message_delta (the server leaves it out of a scripted delta)
    assert usage.reasoning_tokens == (None if isinstance(delta_usage, dict) else 7)
    assert [e.type for e in events][0] == "message_start" and events[-1].type == "message_stop"
    check_span(only(tm.finished_spans()), record, server)
    check_metrics(tm, records, server)
    count, _ = metric_sums(tm, "gen_ai.client.operation.time_to_first_chunk")
    assert count == 1
    count, _ = metric_sums(tm, "gen_ai.client.operation.time_per_output_chunk")
    assert count == 1


async def test_create_stream_async(server: LocalAPIServer, tm: Any, records: list[Any]) -> None:
    server.enqueue("anthropic.messages", Reply(usage=CACHED_THINKING_USAGE))
    stream = await aclient(server).messages.create(**ARGS, stream=True)
    assert isinstance(stream, anthropic.AsyncStream)
    types = [event.type async for event in stream]
    assert types[0] == "message_start"
    record = only(records)
    check_record(record, server, stream=True)
    check_span(only(tm.finished_spans()), record, server)
    check_metrics(tm, records, server)


def test_stream_with_several_message_deltas(server: LocalAPIServer, tm: Any, records: list[Any]) -> None:
    """Each delta's non-null fields replace the earlier values; omitted ones are kept; output is
    cumulative (9, not 5 + 9)."""
    message = {"id": "msg_multi", "type": "message", "role": "assistant", "model": MODEL, "content": [],
               "stop_reason": None, "stop_sequence": None,
               "usage": {"input_tokens": 30, "output_tokens": 1, "cache_read_input_tokens": 500,
                         "cache_creation_input_tokens": 70}}
    events = [
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "message_delta", "delta": {"stop_reason": None, "stop_sequence": None},
         "usage": {"output_tokens": 5, "input_tokens": 45, "cache_read_input_tokens": None}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " there"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
         "usage": {"output_tokens": 9, "output_tokens_details": {"thinking_tokens": 2}}},
        {"type": "message_stop"},
    ]
    server.enqueue("anthropic.messages", Reply(events=events))
    for _ in client(server).messages.create(**ARGS, stream=True):
        pass
    record = only(records)
    assert record.usage == Usage(45 + 500 + 70, 9, 500, 70, 2, None)
    assert record.finish_reasons == ("end_turn",)
    assert record.response_id == "msg_multi"


@pytest.mark.parametrize("beta", [False, True])
def test_stream_helper_sync(server: LocalAPIServer, tm: Any, records: list[Any], beta: bool) -> None:
    server.enqueue("anthropic.messages", Reply(usage=CACHED_THINKING_USAGE))
    c = client(server)
    messages = c.beta.messages if beta else c.messages
    with messages.stream(**ARGS) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == server.last_response.text == final.content[0].text
    record = only(records)
    usage = check_record(record, server, stream=True)
    assert final.usage.output_tokens == usage.output_tokens
    check_span(only(tm.finished_spans()), record, server)


def test_stream_helper_until_done(server: LocalAPIServer, tm: Any, records: list[Any]) -> None:
    with client(server).messages.stream(**ARGS) as stream:
        stream.until_done()
        assert stream.get_final_text() == server.last_response.text
    check_record(only(records), server, stream=True)


async def test_stream_helper_async(server: LocalAPIServer, tm: Any, records: list[Any]) -> None:
    server.enqueue("anthropic.messages", Reply(usage=CACHED_THINKING_USAGE))
    async with aclient(server).messages.stream(**ARGS) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(pieces) == server.last_response.text
    record = only(records)
    check_record(record, server, stream=True)
    assert final.id == record.response_id
    check_span(only(tm.finished_spans()), record, server)


async def test_stream_helper_async_until_done(server: LocalAPIServer, tm: Any, records: list[Any]) -> None:
    async with aclient(server).beta.messages.stream(**ARGS) as stream:
        await stream.until_done()
        assert await stream.get_final_text() == server.last_response.text
    check_record(only(records), server, stream=True)


# ----------------------------------------------------------------------------- streams left early
def start_truth(server: LocalAPIServer) -> Usage:
    """What ``message_start`` alone reported (a stream left before ``message_delta``)."""
    return spec_usage(server.last_response.usage_pieces[0])[0]


def first_text_sent(server: LocalAPIServer) -> str:
    return next(event.data["delta"]["text"] for event in server.last_response.events
                if event.event == "content_block_delta")


def check_left_early(record: Any, server: LocalAPIServer, error_type: str | None,
                     delivered: bool = True) -> None:
    """``message_start``'s exact input and cache counts; its output (a placeholder) raised to what
    the text delivered before the stream was left accounts for."""
    start = start_truth(server)
    if delivered:
        estimated = estimate_tokens(MODEL, first_text_sent(server))
        assert estimated > start.output_tokens  # else this test would not exercise the top-up
        assert record.usage == dataclasses.replace(start, output_tokens=estimated)
        assert record.usage_source == "estimated"
    else:
        assert record.usage == start
        assert record.usage_source == "provider"
    assert record.error_type == error_type
    assert record.finish_reasons == ()
    assert record.stream is True


def test_stream_break_then_garbage_collected(server: LocalAPIServer, tm: Any, records: list[Any]) -> None:
    stream = client(server).messages.create(**ARGS, stream=True)
    for event in stream:
        if event.type == "content_block_delta":
            break
    assert records == []  # the user may still go on reading
    del stream, event
    gc.collect()
    check_left_early(only(records), server, "_OTHER")
    span = only(tm.finished_spans())
    assert span.attributes["error.type"] == "_OTHER"
    assert span.attributes["gen_ai.usage.output_tokens"] == only(records).usage.output_tokens


def test_stream_closed_early(server: LocalAPIServer, tm: Any, records: list[Any]) -> None:
    stream = client(server).messages.create(**ARGS, stream=True)
    assert next(iter(stream)).type == "message_start"
    stream.close()
    check_left_early(only(records), server, None, delivered=False)
    stream.close()  # twice: still one record
    del stream
    gc.collect()
    assert len(records) == 1 and len(tm.finished_spans()) == 1


def test_stream_context_manager_left_early(server: LocalAPIServer, tm: Any, records: list[Any]) -> None:
    with client(server).messages.create(**ARGS, stream=True) as stream:
        for event in stream:
            if event.type == "content_block_delta":
                break
    check_left_early(only(records), server, None)


def test_stream_helper_left_early(server: LocalAPIServer, tm: Any, records: list[Any]) -> None:
    with client(server).messages.stream(**ARGS) as stream:
        for _ in stream.text_stream:
            break
        assert records == []
    check_left_early(only(records), server, None)


async def test_async_stream_left_early(server: LocalAPIServer, tm: Any, records: list[Any]) -> None:
    stream = await aclient(server).messages.create(**ARGS, stream=True)
    async for event in stream:
        if event.type == "content_block_delta":
            break
    await stream.close()
    check_left_early(only(records), server, None)
    async with aclient(server).messages.stream(**ARGS) as helper:
        async for _ in helper.text_stream:
            break
    assert len(records) == 2
    check_left_early(records[1], server, None)


async def test_async_stream_break_then_garbage_collected(server: LocalAPIServer, tm: Any,
                                                         records: list[Any]) -> None:
    stream = await aclient(server).messages.create(**ARGS, stream=True)
    async for event in stream:
        if event.type == "content_block_delta":
            break
    del stream, event
    gc.collect()
    await asyncio.sleep(0.05)  # the loop finalises abandoned async generators in a task
    gc.collect()
    check_left_early(only(records), server, "_OTHER")


# ----------------------------------------------------------------------------- beta, count_tokens
def test_beta_create_and_stream(server: LocalAPIServer, tm: Any, records: list[Any]) -> None:
    c = client(server)
    message = c.beta.messages.create(**ARGS, betas=["context-1m-2025-08-07"])
    assert server.last_request.headers["anthropic-beta"] == "context-1m-2025-08-07"
    assert type(message).__name__ == "BetaMessage"
    check_record(records[0], server, stream=False)
    for _ in c.beta.messages.create(**ARGS, stream=True):
        pass
    check_record(records[1], server, stream=True)
    for span, record in zip(tokenmetry_spans(tm), records, strict=True):
        check_span(span, record, server)


COMPACTION = [
    {"type": "compaction", "input_tokens": 100, "output_tokens": 83, "cache_read_input_tokens": 5000,
     "cache_creation_input_tokens": 60,
     "cache_creation": {"ephemeral_5m_input_tokens": 20, "ephemeral_1h_input_tokens": 40}},
    {"type": "message", "input_tokens": 181, "output_tokens": 8, "cache_read_input_tokens": 0,
     "cache_creation_input_tokens": 0},
]


@pytest.mark.parametrize("stream", [False, True])
def test_beta_compaction_iterations_are_added(server: LocalAPIServer, tm: Any, records: list[Any],
                                              stream: bool) -> None:
    usage = {"input_tokens": 181, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0,
             "iterations": COMPACTION}
    delta = {"input_tokens": 181, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0,
             "iterations": COMPACTION}
    server.enqueue("anthropic.messages", Reply(usage=usage, delta_usage=delta if stream else None))
    result = client(server).beta.messages.create(**ARGS, stream=stream)
    if stream:
        for _ in result:
            pass
    record = only(records)
    truth = check_record(record, server, stream=stream)
    sent = server.last_response
    output = (sent.usage_pieces[-1] if stream else sent.usage)["output_tokens"]
    assert truth == Usage(181 + 100 + 5000 + 60, output + 83, 5000, 60, None, None)
    check_span(only(tm.finished_spans()), record, server)


@pytest.mark.parametrize("beta", [False, True])
def test_count_tokens_sync(server: LocalAPIServer, tm: Any, records: list[Any], beta: bool) -> None:
    c = client(server)
    with tokenmetry.session("counting") as session:
        counted = (c.beta.messages if beta else c.messages).count_tokens(model=MODEL, messages=MESSAGES)
        c.messages.create(**ARGS)
    assert counted.input_tokens == server.responses[0].json["input_tokens"]
    count_record, chat_record = records
    assert count_record.operation == "count_tokens"
    assert count_record.provider == "anthropic"
    assert count_record.request_model == MODEL
    assert count_record.usage == Usage(0, 0)  # counting bills nothing
    assert count_record.usage_source == "provider"
    assert count_record.cost is None
    assert count_record.error_type is None
    # the session's totals are the generation's alone, the count call is in its history
    assert session.usage == chat_record.usage
    assert session.calls == [count_record, chat_record]
    span = tokenmetry_spans(tm)[0]
    assert dict(span.attributes) == {
        "gen_ai.operation.name": "count_tokens", "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": MODEL, "gen_ai.request.stream": False, "gen_ai.conversation.id": "counting",
        "server.address": "127.0.0.1", "server.port": server.port,
        "tokenmetry.counted.input_tokens": counted.input_tokens,
        "gen_ai.usage.input_tokens": 0, "gen_ai.usage.output_tokens": 0,
        "tokenmetry.usage.source": "provider", "tokenmetry.retries": 0, "tokenmetry.throttle_wait_s": 0.0,
    }
    assert span.name == f"count_tokens {MODEL}"
    _, input_total = metric_sums(tm, "gen_ai.client.token.usage", **{"gen_ai.token.type": "input"})
    assert input_total == chat_record.usage.input_tokens
    count, _ = metric_sums(tm, "gen_ai.client.operation.duration",
                           **{"gen_ai.operation.name": "count_tokens"})
    assert count == 1


async def test_count_tokens_async(server: LocalAPIServer, tm: Any, records: list[Any]) -> None:
    counted = await aclient(server).messages.count_tokens(model=MODEL, messages=MESSAGES)
    record = only(records)
    assert record.operation == "count_tokens" and record.usage == Usage(0, 0)
    span = only(tm.finished_spans())
    assert span.attributes["tokenmetry.counted.input_tokens"] == counted.input_tokens


# ----------------------------------------------------------------------------- raw responses
def test_with_raw_response_sync(server: LocalAPIServer, tm: Any, records: list[Any]) -> None:
    c = client(server)
    raw = c.messages.with_raw_response.create(**ARGS)
    assert raw.headers["request-id"] == "req_local000000"
    check_record(only(records), server, stream=False)
    assert raw.parse().id == records[0].response_id
    raw_stream = c.messages.with_raw_response.create(**ARGS, stream=True)
    assert len(records) == 1  # a stream is accounted once it is read
    events = list(raw_stream.parse())
    assert events[-1].type == "message_stop"
    check_record(records[1], server, stream=True)
    counted = c.messages.with_raw_response.count_tokens(model=MODEL, messages=MESSAGES)
    assert counted.parse().input_tokens == server.last_response.json["input_tokens"]
    assert records[2].operation == "count_tokens"
    assert len(tm.finished_spans()) == 3


def test_with_streaming_response_sync(server: LocalAPIServer, tm: Any, records: list[Any]) -> None:
    c = client(server)
    with c.messages.with_streaming_response.create(**ARGS) as response:
        message = response.parse()
    check_record(only(records), server, stream=False)
    assert message.id == records[0].response_id
    with c.messages.with_streaming_response.create(**ARGS,
                                                   stream=True) as response:
        events = list(response.parse())
    assert events[0].type == "message_start"
    check_record(records[1], server, stream=True)
    with c.messages.with_streaming_response.create(**ARGS) as response:
        pass  # closed unread: no usage was seen, the prompt side is estimated
    assert len(records) == 3
    assert (records[2].response_model, records[2].usage_source, records[2].usage.output_tokens) == \
        (None, "estimated", 0)


async def test_raw_responses_async(server: LocalAPIServer, tm: Any, records: list[Any]) -> None:
    c = aclient(server)
    raw = await c.messages.with_raw_response.create(**ARGS)
    message = await raw.parse()
    check_record(only(records), server, stream=False)
    assert message.id == records[0].response_id
    async with c.messages.with_streaming_response.create(**ARGS,
                                                         stream=True) as response:
        events = [event async for event in await response.parse()]
    assert events[-1].type == "message_stop"
    check_record(records[1], server, stream=True)


# ----------------------------------------------------------------------------- errors and retries
def test_api_error_reaches_caller_unchanged(server: LocalAPIServer, tm: Any, records: list[Any]) -> None:
    server.enqueue("anthropic.messages", Reply(status=400, message="max_tokens: too large"))
    with pytest.raises(anthropic.BadRequestError) as raised:
        client(server).messages.create(**ARGS)
    error = raised.value
    assert error.status_code == 400
    assert error.body == server.last_response.json
    assert error.request_id == server.last_response.headers["request-id"]
    record = only(records)
    assert record.error_type == "BadRequestError"
    assert record.usage == Usage(0, 0) and record.usage_source == "missing"
    span = only(tm.finished_spans())
    assert span.attributes["error.type"] == "BadRequestError"
    assert span.status.status_code.name == "ERROR"
    assert "gen_ai.usage.input_tokens" not in span.attributes
    count, _ = metric_sums(tm, "gen_ai.client.operation.duration", **{"error.type": "BadRequestError"})
    assert count == 1
    assert tm.metric_points("gen_ai.client.token.usage") == []


def test_error_event_mid_stream(server: LocalAPIServer, tm: Any, records: list[Any]) -> None:
    message = {"id": "msg_err", "type": "message", "role": "assistant", "model": MODEL, "content": [],
               "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 21, "output_tokens": 1}}
    server.enqueue("anthropic.messages", Reply(events=[
        {"type": "message_start", "message": message},
        SSEEvent("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    ]))
    seen = []
    with pytest.raises(anthropic.APIStatusError) as raised:
        for event in client(server).messages.create(**ARGS, stream=True):
            seen.append(event.type)
    assert seen == ["message_start"]
    assert raised.value.body == {"type": "error",
                                 "error": {"type": "overloaded_error", "message": "Overloaded"}}
    record = only(records)
    assert record.error_type == "APIStatusError"
    assert record.usage == Usage(21, 1)  # what message_start reported
    assert only(tm.finished_spans()).attributes["error.type"] == "APIStatusError"


def test_connection_dropped_mid_stream(server: LocalAPIServer, tm: Any, records: list[Any]) -> None:
    server.enqueue("anthropic.messages", Reply(abort_after=3))
    with pytest.raises(Exception) as raised:
        for _ in client(server).messages.create(**ARGS, stream=True):
            pass
    record = only(records)
    assert record.error_type == type(raised.value).__qualname__
    assert record.usage == start_truth(server)


@pytest.mark.parametrize("async_", [False, True])
async def test_retry_after_429_is_one_call(server: LocalAPIServer, tm: Any, records: list[Any],
                                           async_: bool) -> None:
    server.enqueue("anthropic.messages", Reply(status=429, headers={"retry-after": "0"}))
    if async_:
        await aclient(server, max_retries=2).messages.create(**ARGS)
    else:
        client(server, max_retries=2).messages.create(**ARGS)
    assert [r.response.status for r in server.requests] == [429, 200]
    record = only(records)
    check_record(record, server, stream=False, retries=1)
    assert record.throttle_wait_s > 0  # retry-after 0 falls back to the SDK's own backoff, measured
    assert record.retry_wait_s == 0.0
    span = only(tm.finished_spans())
    check_span(span, record, server)
    event = only(list(span.events))
    assert event.name == "tokenmetry.retry"
    assert dict(event.attributes) == {
        "tokenmetry.retry.attempt": 1, "tokenmetry.retry.slept_s": record.throttle_wait_s,
        "tokenmetry.retry.cause": "throttle", "http.response.status_code": 429,
        "tokenmetry.retry.retry_after_s": 0.0,
    }
    count, total = metric_sums(tm, "tokenmetry.retries", **{"tokenmetry.retry.cause": "throttle"})
    assert (count, total) == (1, 1)
    count, total = metric_sums(tm, "tokenmetry.throttle.wait", **{"tokenmetry.retry.cause": "throttle"})
    assert (count, total) == (1, record.throttle_wait_s)
    assert tokenmetry.stats().by_provider["anthropic"].throttle_events == 1


def test_retry_after_529_overloaded(server: LocalAPIServer, tm: Any, records: list[Any]) -> None:
    server.enqueue("anthropic.messages", Reply(status=529, headers={"retry-after-ms": "5"}))
    with client(server, max_retries=1).messages.stream(**ARGS) as stream:
        stream.until_done()
    record = only(records)
    check_record(record, server, stream=True, retries=1)
    assert record.throttle_wait_s == 0.0 and record.retry_wait_s >= 0.005
    event = only(list(only(tm.finished_spans()).events))
    assert event.attributes["tokenmetry.retry.cause"] == "overloaded"
    assert event.attributes["http.response.status_code"] == 529
    assert event.attributes["tokenmetry.retry.retry_after_s"] == 0.005


def test_overloaded_without_retries_raises(server: LocalAPIServer, tm: Any, records: list[Any]) -> None:
    server.enqueue("anthropic.messages", Reply(status=529))
    with pytest.raises(anthropic.OverloadedError):
        client(server).messages.create(**ARGS)
    assert only(records).error_type == "OverloadedError"


# ----------------------------------------------------------------------------- rate-limit headers
RATE_LIMIT_HEADERS = {
    "anthropic-ratelimit-requests-limit": "4000",
    "anthropic-ratelimit-requests-remaining": "3999",
    "anthropic-ratelimit-requests-reset": "2026-11-23T14:00:01Z",
    "anthropic-ratelimit-tokens-limit": "480000",
    "anthropic-ratelimit-tokens-remaining": "479000",
    "anthropic-ratelimit-tokens-reset": "2026-11-23T14:00:02Z",
    "anthropic-ratelimit-input-tokens-limit": "400000",
    "anthropic-ratelimit-input-tokens-remaining": "399100",
    "anthropic-ratelimit-input-tokens-reset": "2026-11-23T14:00:03Z",
    "anthropic-ratelimit-output-tokens-limit": "80000",
    "anthropic-ratelimit-output-tokens-remaining": "79900",
    "anthropic-ratelimit-output-tokens-reset": "2026-11-23T14:00:04Z",
}


def test_rate_limit_headers(server: LocalAPIServer, tm: Any, records: list[Any]) -> None:
    server.enqueue("anthropic.messages", Reply(headers=RATE_LIMIT_HEADERS))
    client(server).messages.create(**ARGS)
    expected = {
        "limit_requests": 4000, "remaining_requests": 3999, "reset_requests": "2026-11-23T14:00:01Z",
        "limit_tokens": 480000, "remaining_tokens": 479000, "reset_tokens": "2026-11-23T14:00:02Z",
        "limit_input_tokens": 400000, "remaining_input_tokens": 399100,
        "reset_input_tokens": "2026-11-23T14:00:03Z",
        "limit_output_tokens": 80000, "remaining_output_tokens": 79900,
        "reset_output_tokens": "2026-11-23T14:00:04Z",
    }
    snapshot = tokenmetry.stats()
    assert snapshot.rate_limit_remaining == {f"anthropic/{MODEL}": expected}
    assert snapshot.by_model[f"anthropic/{MODEL}"].rate_limit_remaining == expected
    gauge = {dict(p.attributes)["tokenmetry.rate_limit.kind"]: p.value
             for p in tm.metric_points("tokenmetry.rate_limit.remaining")
             if dict(p.attributes)["gen_ai.provider.name"] == "anthropic"}
    assert gauge == {"requests": 3999, "tokens": 479000, "input_tokens": 399100, "output_tokens": 79900}


# ----------------------------------------------------------------------------- Vertex AI, Bedrock
def vertex(server: LocalAPIServer, async_: bool = False) -> Any:
    cls = anthropic.AsyncAnthropicVertex if async_ else anthropic.AnthropicVertex
    return cls(region="us-east5", project_id="local-project", access_token="token",
               base_url=server.url + "/v1", max_retries=0)


def test_vertex_sync(server: LocalAPIServer, tm: Any, records: list[Any]) -> None:
    c = vertex(server)
    c.messages.create(**ARGS)
    assert server.last_request.path.endswith(f"/publishers/anthropic/models/{MODEL}:rawPredict")
    for _ in c.messages.create(**ARGS, stream=True):
        pass
    assert server.last_request.path.endswith(f"/publishers/anthropic/models/{MODEL}:streamRawPredict")
    c.messages.count_tokens(model=MODEL, messages=MESSAGES)
    assert server.last_request.path.endswith("/publishers/anthropic/models/count-tokens:rawPredict")
    check_record(records[0], server, stream=False, index=0, provider="gcp.vertex_ai")
    check_record(records[1], server, stream=True, index=1, provider="gcp.vertex_ai")
    assert (records[2].provider, records[2].operation, records[2].usage) == ("gcp.vertex_ai", "count_tokens",
                                                                             Usage(0, 0))
    spans = tokenmetry_spans(tm)
    check_span(spans[0], records[0], server, provider="gcp.vertex_ai")
    check_span(spans[1], records[1], server, provider="gcp.vertex_ai")


async def test_vertex_async(server: LocalAPIServer, tm: Any, records: list[Any]) -> None:
    c = vertex(server, async_=True)
    async with c.messages.stream(**ARGS) as stream:
        await stream.until_done()
    check_record(only(records), server, stream=True, provider="gcp.vertex_ai")


BEDROCK_MODEL = "anthropic.claude-sonnet-4-6-v1:0"


def bedrock(server: LocalAPIServer, async_: bool = False) -> Any:
    cls = anthropic.AsyncAnthropicBedrock if async_ else anthropic.AnthropicBedrock
    return cls(api_key="key", aws_region="us-east-1", base_url=server.url, max_retries=0)


def check_bedrock(record: Any, span: Any, server: LocalAPIServer) -> None:
    """A Bedrock call's record and span against what the server sent: every usage field exact, the
    provider the SDK names (aws.bedrock), priced at the Bedrock model id's price."""
    usage, one_hour, sent = sent_truth(server)
    assert server.last_request.path == f"/model/{BEDROCK_MODEL}/invoke"
    assert (record.provider, record.operation, record.request_model, record.response_model, record.response_id) \
        == ("aws.bedrock", "chat", BEDROCK_MODEL, sent.model, sent.response_id)
    assert (record.usage, record.usage_source, record.stream, record.error_type, record.finish_reasons) == \
        (usage, "provider", False, None, ("end_turn",))
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    assert record.cost is not None
    assert record.cost == tokenmetry.price(BEDROCK_MODEL, usage, provider="aws.bedrock",
                                           cache_write_1h_tokens=one_hour)
    attributes = dict(span.attributes)
    assert {key: attributes[key] for key in (
        "gen_ai.provider.name", "gen_ai.request.model", "gen_ai.response.model", "gen_ai.response.id",
        "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", "server.port", "tokenmetry.cost.amount")} == {
        "gen_ai.provider.name": "aws.bedrock", "gen_ai.request.model": BEDROCK_MODEL,
        "gen_ai.response.model": sent.model, "gen_ai.response.id": sent.response_id,
        "gen_ai.usage.input_tokens": usage.input_tokens, "gen_ai.usage.output_tokens": usage.output_tokens,
        "server.port": server.port, "tokenmetry.cost.amount": float(record.cost.amount)}


def test_bedrock_sync(server: LocalAPIServer, tm: Any, records: list[Any]) -> None:
    bedrock(server).messages.create(model=BEDROCK_MODEL, max_tokens=200, messages=MESSAGES)
    check_bedrock(only(records), only(tm.finished_spans()), server)


async def test_bedrock_async(server: LocalAPIServer, tm: Any, records: list[Any]) -> None:
    await bedrock(server, async_=True).messages.create(model=BEDROCK_MODEL, max_tokens=200, messages=MESSAGES)
    check_bedrock(only(records), only(tm.finished_spans()), server)


def test_bedrock_stream_routing(server: LocalAPIServer, tm: Any, records: list[Any]) -> None:
    """A Bedrock stream answers in AWS's binary event-stream framing, which the SDK decodes with
    botocore (not installed here), so the local server does not serve it (404): this checks what
    tokenmetry makes of the request the real AnthropicBedrock client sends."""
    with pytest.raises(anthropic.NotFoundError):
        bedrock(server).messages.create(model=BEDROCK_MODEL, max_tokens=200, messages=MESSAGES, stream=True)
    assert server.last_request.path == f"/model/{BEDROCK_MODEL}/invoke-with-response-stream"
    record = only(records)
    assert (record.provider, record.operation, record.request_model, record.stream, record.error_type) == \
        ("aws.bedrock", "chat", BEDROCK_MODEL, True, "NotFoundError")
    span = only(tm.finished_spans())
    assert span.attributes["gen_ai.provider.name"] == "aws.bedrock"
    assert span.attributes["server.port"] == server.port


# ----------------------------------------------------------------------------- recorded real responses
INDEX = json.loads((REAL / "INDEX.json").read_text()) if (REAL / "INDEX.json").exists() else []
ANTHROPIC_FILES = [entry for entry in INDEX if entry["vendor"] == "anthropic"]

# the SPEC §3 result of every recorded body, worked out by hand: guards the rule implemented above
HAND_CHECKED = {
    "messages-claude-sonnet-4-basic.json": Usage(19, 9, 0, 0, None),
    "messages-claude-3-5-sonnet-cache-write.json": Usage(1167, 187, 0, 1163, None),
    "messages-claude-3-5-sonnet-cache-read.json": Usage(1167, 202, 1163, 0, None),
    "messages-claude-sonnet-4-6-thinking.json": Usage(52, 221, 0, 0, 65),
    "messages-claude-sonnet-4-5-cache-5m-write-and-read.json": Usage(1532, 33, 1111, 418, None),
    "messages-stream-claude-sonnet-4-basic.sse": Usage(19, 9, 0, 0, None),
    "messages-stream-claude-3-5-sonnet-cache-write.sse": Usage(1169, 201, 0, 1165, None),
    "messages-stream-claude-3-5-sonnet-cache-read.sse": Usage(1169, 221, 1165, 0, None),
    "messages-stream-claude-3-7-sonnet-thinking.sse": Usage(52, 216, 0, 0, None),
    "messages-stream-claude-sonnet-4-6-thinking.sse": Usage(52, 204, 0, 0, 54),
    # compaction: top-level (from message_delta) 181 + compaction 100 + 55096 cached; output 8 + 83
    "messages-stream-claude-sonnet-4-6-compaction-cache-read.sse": Usage(55377, 91, 55096, 0, None),
    "messages-stream-claude-sonnet-4-web-fetch.sse": Usage(7244, 153, 0, 0, None),
}


def index_truth(entry: dict[str, Any]) -> Usage:
    if entry["stream"]:
        pieces = entry["usage_pieces"]
        return spec_usage(merged_stream_usage([pieces["message_start"], pieces["message_delta"]]))[0]
    return spec_usage(entry["usage"])[0]


def test_every_recorded_body_is_listed() -> None:
    assert sorted(Path(e["file"]).name for e in ANTHROPIC_FILES) == sorted(HAND_CHECKED)
    assert sorted(p.name for p in (REAL / "anthropic").iterdir()) == sorted(HAND_CHECKED)
    for entry in ANTHROPIC_FILES:
        assert index_truth(entry) == HAND_CHECKED[Path(entry["file"]).name], entry["file"]


SURFACES = ["create", "beta.create", "raw.create", "async.create"]
STREAM_SURFACES = [*SURFACES, "stream", "beta.stream", "async.stream"]


def _real_cases() -> list[Any]:
    cases = []
    for entry in ANTHROPIC_FILES:
        for surface in STREAM_SURFACES if entry["stream"] else SURFACES:
            cases.append(pytest.param(entry, surface, id=f"{Path(entry['file']).stem}-{surface}"))
    return cases


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(("entry", "surface"), _real_cases())
async def test_recorded_response_normalises(server: LocalAPIServer, tm: Any, records: list[Any],
                                            entry: dict[str, Any], surface: str) -> None:
    server.replay("anthropic.messages", REAL / entry["file"])
    stream = entry["stream"]
    params = {"model": entry["request_model"], "max_tokens": 1024, "messages": MESSAGES}
    sync, async_ = client(server), aclient(server)
    if surface == "create":
        result = sync.messages.create(**params, stream=stream)
        if stream:
            list(result)
    elif surface == "beta.create":
        result = sync.beta.messages.create(**params, stream=stream)
        if stream:
            list(result)
    elif surface == "raw.create":
        result = sync.messages.with_raw_response.create(**params, stream=stream).parse()
        if stream:
            list(result)
    elif surface == "async.create":
        result = await async_.messages.create(**params, stream=stream)
        if stream:
            [event async for event in result]
    elif surface == "stream":
        with sync.messages.stream(**params) as helper:
            helper.until_done()
    elif surface == "beta.stream":
        with sync.beta.messages.stream(**params) as helper:
            helper.until_done()
    else:
        async with async_.messages.stream(**params) as async_helper:
            await async_helper.until_done()
    record = only(records)
    assert record.usage == HAND_CHECKED[Path(entry["file"]).name]
    assert record.usage_source == "provider"
    assert record.response_model == entry["response_model"]
    assert record.request_model == entry["request_model"]
    assert record.error_type is None and record.stream is stream
    span = only(tm.finished_spans())
    assert span.attributes["gen_ai.usage.input_tokens"] == record.usage.input_tokens
    assert span.attributes["gen_ai.usage.output_tokens"] == record.usage.output_tokens


# ----------------------------------------------------------------------------- the SDK's own tracing
def sdk_traced_client(server: LocalAPIServer, otel: Any, **kwargs: Any) -> Any:
    """The SDK's own tracing on (it is by default) and pointed at the test's tracer provider."""
    return client(server, open_telemetry={"tracer_provider": otel.tracer_provider}, **kwargs)


def test_sdk_traces_itself_without_tokenmetry(server: LocalAPIServer, otel: Any) -> None:
    """The premise: without tokenmetry the SDK emits its own span, usage included."""
    sdk_traced_client(server, otel).messages.create(**ARGS)
    span = only(otel.finished_spans())
    assert span.instrumentation_scope.name == SDK_SCOPE
    assert span.attributes["gen_ai.usage.input_tokens"] == server.last_response.usage["input_tokens"]
    traceparent = server.last_request.headers["traceparent"]
    assert traceparent.split("-")[2] == format(span.context.span_id, "016x")


def test_one_span_per_call_with_sdk_tracing(server: LocalAPIServer, tm: Any, records: list[Any]) -> None:
    c = sdk_traced_client(server, tm)
    c.messages.create(**ARGS)
    for _ in c.messages.create(**ARGS, stream=True):
        pass
    with c.messages.stream(**ARGS) as stream:
        stream.until_done()
    c.beta.messages.create(**ARGS)
    c.messages.count_tokens(model=MODEL, messages=MESSAGES)
    c.messages.with_raw_response.create(**ARGS).parse()
    spans = tm.finished_spans()
    assert len(records) == len(spans) == len(server.requests) == 6
    assert {s.instrumentation_scope.name for s in spans} == {TOKENMETRY_SCOPE}
    for span, record in zip(spans, records, strict=True):
        assert span.attributes["gen_ai.operation.name"] == record.operation
        if record.operation == "chat":
            check_span(span, record, server)
    # trace context still reaches the API, naming the span that is exported
    for request, span in zip(server.requests, spans, strict=True):
        assert request.headers["traceparent"].split("-")[1:3] == [format(span.context.trace_id, "032x"),
                                                                  format(span.context.span_id, "016x")]
    input_total = sum(s.attributes["gen_ai.usage.input_tokens"] for s in spans)
    assert input_total == sum(r.usage.input_tokens for r in records)


def test_sdk_span_kept_for_calls_tokenmetry_does_not_record(server: LocalAPIServer, tm: Any,
                                                            records: list[Any]) -> None:
    with pytest.raises(anthropic.NotFoundError):  # models.list: no tokens, the local server has no route
        sdk_traced_client(server, tm).models.list()
    assert records == []
    span = only(tm.finished_spans())
    assert span.instrumentation_scope.name == SDK_SCOPE


async def test_one_span_per_call_with_sdk_tracing_async(server: LocalAPIServer, tm: Any,
                                                        records: list[Any]) -> None:
    c = aclient(server, open_telemetry={"tracer_provider": tm.tracer_provider})
    await c.messages.create(**ARGS)
    async with c.messages.stream(**ARGS) as stream:
        await stream.until_done()
    spans = tm.finished_spans()
    assert len(spans) == len(records) == 2
    assert {s.instrumentation_scope.name for s in spans} == {TOKENMETRY_SCOPE}


def test_keeping_the_sdk_span_counts_tokens_once(server: LocalAPIServer, otel: Any,
                                                 records: list[Any]) -> None:
    tokenmetry.instrument(providers=["anthropic"], suppress_sdk_spans=False, **otel.kwargs())
    server.enqueue("anthropic.messages", Reply(usage=CACHED_THINKING_USAGE))
    c = sdk_traced_client(server, otel)
    for _ in c.messages.create(**ARGS, stream=True):
        pass
    record = only(records)
    ours = only(tokenmetry_spans(otel))
    sdk = only([s for s in otel.finished_spans() if s.instrumentation_scope.name == SDK_SCOPE])
    check_span(ours, record, server)
    assert sdk.parent is not None and sdk.parent.span_id == ours.context.span_id
    assert not [key for key in sdk.attributes if key.startswith("gen_ai.usage.")]
    # the SDK's other attributes are kept
    assert sdk.attributes["gen_ai.response.id"] == record.response_id
    assert sdk.attributes["anthropic.request.id"] == server.last_response.headers["request-id"]
    assert server.last_request.headers["traceparent"].split("-")[2] == format(sdk.context.span_id, "016x")


def test_sdk_tracing_off_leaves_one_span(server: LocalAPIServer, tm: Any, records: list[Any]) -> None:
    client(server, open_telemetry=False).messages.create(**ARGS)
    check_span(only(tm.finished_spans()), only(records), server)
    assert "traceparent" not in server.last_request.headers


def test_sdk_span_stays_when_tokenmetry_has_no_tracer(server: LocalAPIServer, otel: Any,
                                                      records: list[Any]) -> None:
    tokenmetry.instrument(providers=["anthropic"], meter_provider=otel.meter_provider)
    sdk_traced_client(server, otel).messages.create(**ARGS)
    span = only(otel.finished_spans())  # the SDK's, whole: it is the only span of the call
    assert span.instrumentation_scope.name == SDK_SCOPE
    assert span.attributes["gen_ai.usage.input_tokens"] == only(records).usage.input_tokens


def test_wrap_suppresses_the_sdk_span(server: LocalAPIServer, otel: Any, records: list[Any],
                                      sdk_hook_restored: None) -> None:
    tokenmetry.instrument(providers=["openai"], **otel.kwargs())  # configures tokenmetry's telemetry only
    wrapped = tokenmetry.wrap(sdk_traced_client(server, otel))
    plain = sdk_traced_client(server, otel)
    wrapped.messages.create(**ARGS)
    copy = wrapped.with_options(timeout=30)
    for _ in copy.messages.create(**ARGS, stream=True):
        pass
    plain.messages.create(**ARGS)  # not wrapped: the SDK's span
    assert len(records) == 2
    scopes = [s.instrumentation_scope.name for s in otel.finished_spans()]
    assert scopes == [TOKENMETRY_SCOPE, TOKENMETRY_SCOPE, SDK_SCOPE]


SUBPROCESS_CHECK = textwrap.dedent("""
    import sys
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    import anthropic, tokenmetry
    from tokenmetry.testing import LocalAPIServer

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # global: the SDK's default tracing uses it
    keep_sdk_span = sys.argv[1] == "keep"
    tokenmetry.instrument(providers=["anthropic"])
    records = []
    tokenmetry.on_record(records.append)
    with LocalAPIServer() as server:
        client = anthropic.Anthropic(api_key="test", base_url=server.url)  # SDK tracing at its default
        client.messages.create(model="claude-sonnet-4-6", max_tokens=100,
                               messages=[{"role": "user", "content": "one two three"}])
        for _ in client.messages.create(model="claude-sonnet-4-6", max_tokens=100, stream=True,
                                        messages=[{"role": "user", "content": "four five"}]):
            pass
        truth = [r.response.usage for r in server.requests]
    spans = exporter.get_finished_spans()
    scopes = sorted(s.instrumentation_scope.name for s in spans)
    if keep_sdk_span:
        assert scopes == ["com.anthropic.sdk.python"] * 2 + ["tokenmetry"] * 2, scopes
    else:
        assert scopes == ["tokenmetry"] * 2, scopes
    reported = sum(s.attributes.get("gen_ai.usage.input_tokens", 0) for s in spans)
    assert reported == sum(t["input_tokens"] for t in truth) == sum(r.usage.input_tokens for r in records), (
        reported, truth)
    print("ok", len(spans))
""")


@pytest.mark.parametrize("keep", [False, True])
def test_global_provider_and_default_sdk_tracing(keep: bool) -> None:
    """The SDK's default tracing uses the global tracer provider, which a test process can set only
    once: checked in a child process (``TOKENMETRY_SUPPRESS_SDK_SPANS`` picks the mode)."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("ANTHROPIC_", "OTEL_", "TOKENMETRY_"))}
    env["TOKENMETRY_SUPPRESS_SDK_SPANS"] = "false" if keep else "true"
    result = subprocess.run([sys.executable, "-c", SUBPROCESS_CHECK, "keep" if keep else "suppress"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", "4" if keep else "2"]


# ----------------------------------------------------------------------------- instrument / uninstrument
def test_uninstrument_restores_the_sdk(otel: Any) -> None:
    import anthropic._base_client as base

    originals = {name: base.__dict__[name] for name in ("start_api_call_span",)}
    originals.update({f"sync.{name}": base.SyncAPIClient.__dict__[name]
                      for name in ("request", "_sleep_for_retry", "_process_response")})
    tokenmetry.instrument(providers=["anthropic"], **otel.kwargs())
    assert base.__dict__["start_api_call_span"] is not originals["start_api_call_span"]
    tokenmetry.instrument(providers=["anthropic"], **otel.kwargs())  # twice patches once
    tokenmetry.uninstrument()
    assert base.__dict__["start_api_call_span"] is originals["start_api_call_span"]
    for name in ("request", "_sleep_for_retry", "_process_response"):
        assert base.SyncAPIClient.__dict__[name] is originals[f"sync.{name}"]


def test_uninstrumented_calls_are_not_recorded(server: LocalAPIServer, otel: Any, records: list[Any]) -> None:
    tokenmetry.instrument(providers=["anthropic"], **otel.kwargs())
    tokenmetry.uninstrument()
    client(server).messages.create(**ARGS)
    assert records == [] and otel.finished_spans() == []


# ----------------------------------------------------------------------------- differential
def _scenario_sync(server: LocalAPIServer) -> list[Any]:
    """Every surface once, with scripted usage, an error, a retry and a stream left early."""
    out: list[Any] = []
    c = client(server, max_retries=1)
    server.enqueue("anthropic.messages", Reply(usage=CACHED_THINKING_USAGE))
    out.append(c.messages.create(**ARGS).model_dump())
    out.append([e.model_dump() for e in c.messages.create(**ARGS,
                                                          stream=True)])
    with c.messages.stream(**ARGS,
                           thinking={"type": "enabled", "budget_tokens": 1024}) as stream:
        out.append([e.model_dump() for e in stream])
        out.append(stream.get_final_message().model_dump())
    with c.messages.stream(**ARGS) as stream:
        out.append(list(stream.text_stream))
    out.append(c.messages.count_tokens(model=MODEL, messages=MESSAGES).model_dump())
    out.append(c.beta.messages.create(**ARGS).model_dump())
    raw = c.messages.with_raw_response.create(**ARGS)
    out.append((raw.status_code, raw.headers.get("request-id"), raw.parse().model_dump()))
    with c.messages.with_streaming_response.create(**ARGS,
                                                   stream=True) as response:
        out.append([e.model_dump() for e in response.parse()])
    server.enqueue("anthropic.messages", Reply(status=429, headers={"retry-after-ms": "1"}))
    out.append(c.messages.create(**ARGS).model_dump())
    server.enqueue("anthropic.messages", Reply(status=400, message="bad request"))
    try:
        c.messages.create(**ARGS)
    except anthropic.APIStatusError as error:
        out.append((type(error), str(error), error.status_code, error.body, error.request_id))
    stream = c.messages.create(**ARGS, stream=True)
    seen = []
    for event in stream:
        seen.append(event.model_dump())
        if len(seen) == 3:
            break
    stream.close()
    out.append(seen)
    server.enqueue("anthropic.messages", Reply(events=[
        {"type": "message_start", "message": {"id": "msg_e", "type": "message", "role": "assistant",
                                              "model": MODEL, "content": [], "stop_reason": None,
                                              "stop_sequence": None,
                                              "usage": {"input_tokens": 3, "output_tokens": 1}}},
        SSEEvent("error", {"type": "error", "error": {"type": "api_error", "message": "boom"}})]))
    seen = []
    try:
        for event in c.messages.create(**ARGS, stream=True):
            seen.append(event.model_dump())
    except anthropic.APIStatusError as error:
        out.append((seen, type(error), str(error), error.status_code, error.body))
    out.append([(r.method, r.path, r.query, r.json) for r in server.requests])
    return out


async def _scenario_async(server: LocalAPIServer) -> list[Any]:
    out: list[Any] = []
    c = aclient(server, max_retries=1)
    out.append((await c.messages.create(**ARGS)).model_dump())
    stream = await c.messages.create(**ARGS, stream=True)
    out.append([e.model_dump() async for e in stream])
    async with c.messages.stream(**ARGS) as helper:
        out.append([text async for text in helper.text_stream])
        out.append((await helper.get_final_message()).model_dump())
    out.append((await c.messages.count_tokens(model=MODEL, messages=MESSAGES)).model_dump())
    raw = await c.messages.with_raw_response.create(**ARGS)
    out.append((await raw.parse()).model_dump())
    server.enqueue("anthropic.messages", Reply(status=529))
    server.enqueue("anthropic.messages", Reply(status=529))
    try:
        await c.messages.create(**ARGS)
    except anthropic.APIStatusError as error:
        out.append((type(error), str(error), error.status_code, error.body))
    out.append([(r.method, r.path, r.query, r.json) for r in server.requests])
    return out


async def test_instrumented_calls_behave_the_same(otel: Any, records: list[Any]) -> None:
    with LocalAPIServer() as bare_server:
        bare_sync = _scenario_sync(bare_server)
        bare_async = await _scenario_async(bare_server)
    assert records == []
    tokenmetry.instrument(providers=["anthropic"], **otel.kwargs())
    with LocalAPIServer() as instrumented_server:
        instrumented_sync = _scenario_sync(instrumented_server)
        instrumented_async = await _scenario_async(instrumented_server)
    assert instrumented_sync == bare_sync
    assert instrumented_async == bare_async
    assert len(bare_sync) == 14 and len(bare_async) == 8
    # every call of the instrumented run was recorded exactly once (the retried ones once)
    assert len(records) == 12 + 6


# ----------------------------------------------------------------------------- content capture
@pytest.mark.parametrize("stream", [False, True], ids=["call", "stream"])
def test_captured_content_is_the_prompt_and_the_whole_answer(server: LocalAPIServer, otel: Any,
                                                             stream: bool) -> None:
    tokenmetry.instrument(providers=["anthropic"], capture_content="SPAN_ONLY", **otel.kwargs())
    if stream:
        with client(server).messages.stream(**ARGS) as events:
            answer = "".join(events.text_stream)
    else:
        message = client(server).messages.create(**ARGS)
        answer = "".join(block.text for block in message.content if block.type == "text")
    span = only(tokenmetry_spans(otel))
    assert answer
    assert json.loads(span.attributes["gen_ai.input.messages"]) == MESSAGES
    assert json.loads(span.attributes["gen_ai.output.messages"]) == [
        {"role": "assistant", "parts": [{"type": "text", "content": answer}]}]


def test_no_content_on_spans_by_default(server: LocalAPIServer, tm: Any) -> None:
    client(server).messages.create(**ARGS)
    span = only(tokenmetry_spans(tm))
    assert not [key for key in span.attributes if key.endswith(".messages")]
