"""Streams on the real ``openai`` clients: exact usage without the user asking for it, the withheld
usage chunk, and exactly-once accounting however a stream ends (exhausted, ``break``, ``close()``,
``with``, dropped unread, broken), sync and async.

"Accounted exactly once" means exactly one CallRecord, one span and one duration point.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from _checks import points_by_attributes
from test_openai_e2e import (
    CHAT_DETAILS,
    CHAT_MODEL,
    COMPLETION_MODEL,
    MESSAGES,
    PROMPT,
    check_record,
    check_span,
    openai_client,
    truth_of,
)

import tokenmetry
from tokenmetry.counting import estimate_tokens, preload
from tokenmetry.testing import LocalAPIServer, Reply
from tokenmetry.usage import CallRecord, Usage

PROMPT_TEXT = "\n".join(m["content"] for m in MESSAGES)


@pytest.fixture(scope="module", autouse=True)
def _tokenizer_loaded() -> None:
    # estimates use the tokenizer once it has loaded (background load otherwise): make them deterministic
    preload(["o200k_base", "cl100k_base"], background=False)


@pytest.fixture(scope="module")
def shared_server() -> Iterator[LocalAPIServer]:
    with LocalAPIServer() as server:
        yield server


@pytest.fixture
def server(shared_server: LocalAPIServer) -> Iterator[LocalAPIServer]:
    shared_server.reset()
    yield shared_server
    shared_server.reset()


@pytest.fixture(autouse=True)
def _young_heap() -> Iterator[None]:
    """Freeze what exists before the test: ``gc.collect()`` then scans only the test's own objects
    (a full collection of three SDKs' worth of classes takes ~0.3 s), and a stream another test
    left behind can never be accounted into this one."""
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture
def records() -> Iterator[list[CallRecord]]:
    found: list[CallRecord] = []
    unsubscribe = tokenmetry.on_record(found.append)
    yield found
    unsubscribe()


def _without_ids(dump: dict[str, Any]) -> dict[str, Any]:
    """A chunk's dump without what differs between two runs of the same request (id, timestamp)."""
    return {k: v for k, v in dump.items() if k not in ("id", "created")}


def _sent_data_events(server: LocalAPIServer) -> list[dict[str, Any]]:
    sent = server.last_response
    assert sent is not None and sent.completed
    return [e.data for e in sent.events if isinstance(e.data, dict)]


def _estimated(delivered_text: str, prompt: str = PROMPT_TEXT, model: str = CHAT_MODEL) -> Usage:
    return Usage(estimate_tokens(model, prompt), estimate_tokens(model, delivered_text))


def _one_call(records: list[CallRecord], otel: Any) -> CallRecord:
    """Exactly one record, one span and one duration point."""
    assert len(records) == 1
    assert len(otel.finished_spans()) == 1
    durations = points_by_attributes(otel, "gen_ai.client.operation.duration")
    assert [p.count for p in durations.values()] == [1]
    return records[0]


# ================================================================================ usage without asking
STREAM_KINDS = [
    pytest.param("chat", id="chat"),
    pytest.param("completions", id="completions"),
]


def _create(client: Any, kind: str, **extra: Any) -> Any:
    if kind == "chat":
        return client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, stream=True, **extra)
    return client.completions.create(model=COMPLETION_MODEL, prompt=PROMPT, stream=True, **extra)


async def _acreate(client: Any, kind: str, **extra: Any) -> Any:
    if kind == "chat":
        return await client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, stream=True, **extra)
    return await client.completions.create(model=COMPLETION_MODEL, prompt=PROMPT, stream=True, **extra)


def _compare_chunks(plain: list[Any], instrumented: list[Any], plain_id: str, instrumented_id: str) -> None:
    assert len(instrumented) == len(plain)
    assert [c.id for c in plain] == [plain_id] * len(plain)
    assert [c.id for c in instrumented] == [instrumented_id] * len(instrumented)
    assert [_without_ids(c.model_dump()) for c in instrumented] == [_without_ids(c.model_dump()) for c in plain]
    # also as the user would serialise them (to_dict() leaves unset fields out)
    assert [_without_ids(c.to_dict()) for c in instrumented] == [_without_ids(c.to_dict()) for c in plain]
    assert [c.model_fields_set for c in instrumented] == [c.model_fields_set for c in plain]


@pytest.mark.parametrize("kind", STREAM_KINDS)
def test_usage_without_include_usage_and_no_extra_chunk(server: LocalAPIServer, otel: Any,
                                                        records: list[CallRecord], kind: str) -> None:
    with openai_client(server) as client:
        plain = list(_create(client, kind))
        plain_request, plain_id = server.last_request.json, server.last_response.response_id
        assert "stream_options" not in plain_request
        tokenmetry.instrument(**otel.kwargs())
        server.enqueue("openai", Reply(usage=CHAT_DETAILS if kind == "chat" else None))
        chunks = list(_create(client, kind))
    request = server.last_request.json
    assert request == {**plain_request, "stream_options": {"include_usage": True}}
    sent = _sent_data_events(server)
    assert len(sent) == len(chunks) + 1 and sent[-1]["choices"] == [] and sent[-1]["usage"] is not None
    _compare_chunks(plain, chunks, plain_id, server.last_response.response_id)
    record = _one_call(records, otel)
    check_record(record, truth_of(server.last_response, kind), operation="chat" if kind == "chat" else
                 "text_completion", request_model=request["model"], stream=True, session_id="default")
    check_span(otel.finished_spans()[0], record, port=server.port)


@pytest.mark.parametrize("kind", STREAM_KINDS)
async def test_async_usage_without_include_usage_and_no_extra_chunk(server: LocalAPIServer, otel: Any,
                                                                    records: list[CallRecord], kind: str) -> None:
    async with openai_client(server, async_=True) as client:
        plain = [c async for c in await _acreate(client, kind)]
        plain_request, plain_id = server.last_request.json, server.last_response.response_id
        tokenmetry.instrument(**otel.kwargs())
        chunks = [c async for c in await _acreate(client, kind)]
    assert server.last_request.json == {**plain_request, "stream_options": {"include_usage": True}}
    _compare_chunks(plain, chunks, plain_id, server.last_response.response_id)
    record = _one_call(records, otel)
    assert record.usage == truth_of(server.last_response, kind).usage
    assert record.usage_source == "provider"


@pytest.mark.parametrize("kind", STREAM_KINDS)
def test_user_include_usage_sees_the_usage_chunk(server: LocalAPIServer, otel: Any, records: list[CallRecord],
                                                 kind: str) -> None:
    with openai_client(server) as client:
        plain = list(_create(client, kind, stream_options={"include_usage": True}))
        plain_request, plain_id = server.last_request.json, server.last_response.response_id
        tokenmetry.instrument(**otel.kwargs())
        chunks = list(_create(client, kind, stream_options={"include_usage": True}))
    assert server.last_request.json == plain_request  # nothing added
    _compare_chunks(plain, chunks, plain_id, server.last_response.response_id)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.model_dump(exclude_unset=True) == server.last_response.usage
    record = _one_call(records, otel)
    assert record.usage == truth_of(server.last_response, kind).usage


def test_user_include_usage_false_is_overridden_and_the_chunk_withheld(server: LocalAPIServer, otel: Any,
                                                                       records: list[CallRecord]) -> None:
    with openai_client(server) as client:
        plain = list(_create(client, "chat", stream_options={"include_usage": False}))
        plain_request, plain_id = server.last_request.json, server.last_response.response_id
        tokenmetry.instrument(**otel.kwargs())
        chunks = list(_create(client, "chat", stream_options={"include_usage": False}))
    assert server.last_request.json == {**plain_request, "stream_options": {"include_usage": True}}
    _compare_chunks(plain, chunks, plain_id, server.last_response.response_id)
    assert _one_call(records, otel).usage == truth_of(server.last_response, "chat").usage


def test_other_stream_options_are_kept(server: LocalAPIServer, records: list[CallRecord]) -> None:
    tokenmetry.instrument()
    with openai_client(server) as client:
        list(_create(client, "chat", stream_options={"include_obfuscation": False}))
    assert server.last_request.json["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert records[0].usage_source == "provider"


def test_injection_switched_off_estimates(server: LocalAPIServer, otel: Any, records: list[CallRecord]) -> None:
    tokenmetry.instrument(inject_stream_usage=False, **otel.kwargs())
    with openai_client(server) as client:
        chunks = list(_create(client, "chat"))
    assert "stream_options" not in server.last_request.json
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == server.last_response.text
    record = _one_call(records, otel)
    assert record.usage_source == "estimated"
    assert record.usage == _estimated(text)
    assert record.error_type is None
    assert otel.finished_spans()[0].attributes["tokenmetry.usage.source"] == "estimated"


def test_stream_read_with_next(server: LocalAPIServer, records: list[CallRecord]) -> None:
    tokenmetry.instrument()
    with openai_client(server) as client:
        stream = _create(client, "chat")
        first = next(stream)
        assert first.choices[0].delta.role == "assistant"
        rest = list(stream)
    assert all(c.choices for c in rest)
    assert len(records) == 1 and records[0].usage == truth_of(server.last_response, "chat").usage


# ================================================================================ exactly once
def _first_chunks(stream: Any, count: int) -> str:
    text = ""
    for index, chunk in enumerate(stream):
        text += chunk.choices[0].delta.content or ""
        if index + 1 == count:
            break
    return text


def _check_incomplete(record: CallRecord, otel: Any, server: LocalAPIServer, text: str, *,
                      error_type: str | None = "_OTHER") -> None:
    assert record.usage_source == "estimated"
    assert record.usage == _estimated(text)
    assert record.error_type == error_type
    assert record.stream is True
    assert record.response_id == server.last_response.response_id
    assert record.time_to_first_chunk_s is not None
    span = otel.finished_spans()[0]
    assert span.attributes["tokenmetry.usage.source"] == "estimated"
    assert span.attributes.get("error.type") == error_type
    check_span(span, record, port=server.port)


def test_break_then_drop(server: LocalAPIServer, otel: Any, records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    with openai_client(server) as client:
        stream = _create(client, "chat")
        text = _first_chunks(stream, 4)
        assert records == []  # still open: the user may come back to it
        del stream
        gc.collect()
        assert len(records) == 1
        gc.collect()
    assert text == "Local reply to:"
    _check_incomplete(_one_call(records, otel), otel, server, text)
    assert tokenmetry.current_session().call_count == 1


def test_close_mid_stream(server: LocalAPIServer, otel: Any, records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    with openai_client(server) as client:
        stream = _create(client, "chat")
        text = _first_chunks(stream, 2)
        stream.close()
        assert len(records) == 1  # accounted at close(), not later
        stream.close()
        del stream
        gc.collect()
    record = _one_call(records, otel)
    assert record.usage_source == "estimated"
    assert record.usage == _estimated(text)


def test_reading_a_closed_stream_leaves_its_record_settled(server: LocalAPIServer) -> None:
    """After close(), reading on fails in the SDK; the call was accounted at close() and stays so."""
    tokenmetry.instrument()  # no on_record subscriber: the record is built lazily, from the Call
    server.enqueue("openai.chat", Reply(event_delay=0.05))  # nothing buffered past what was read
    with openai_client(server) as client, tokenmetry.session("reread") as session:
        stream = _create(client, "chat")
        text = _first_chunks(stream, 2)
        stream.close()
        with pytest.raises(openai.APIConnectionError):
            list(stream)
    assert session.summary()["errors"] == 0
    record = session.calls[0]
    assert record.error_type is None
    assert (record.usage, record.usage_source) == (_estimated(text), "estimated")
    assert session.usage == record.usage


def test_with_block_exhausted(server: LocalAPIServer, otel: Any, records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    with openai_client(server) as client:
        with _create(client, "chat") as stream:
            chunks = list(stream)
        assert len(records) == 1
        del stream
        gc.collect()
    record = _one_call(records, otel)
    assert len(chunks) == len(_sent_data_events(server)) - 1
    check_record(record, truth_of(server.last_response, "chat"), operation="chat", request_model=CHAT_MODEL,
                 stream=True, session_id="default")


def test_with_block_left_early(server: LocalAPIServer, otel: Any, records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    with openai_client(server) as client:
        with _create(client, "chat") as stream:
            text = _first_chunks(stream, 3)
        assert len(records) == 1
        del stream
        gc.collect()
    record = _one_call(records, otel)
    assert record.usage == _estimated(text)
    assert record.usage_source == "estimated"


def test_never_iterated_stream_dropped(server: LocalAPIServer, otel: Any, records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    with openai_client(server) as client:
        stream = _create(client, "chat")
        assert records == []
        del stream
        gc.collect()
    record = _one_call(records, otel)
    assert record.error_type == "_OTHER"
    # no chunk was read, but the API had accepted the request and read the prompt: the prompt is
    # estimated (flagged as such), never a silent 0
    assert record.usage_source == "estimated"
    assert record.usage == _estimated("")
    assert record.usage.output_tokens == 0 and record.usage.input_tokens > 0
    assert record.time_to_first_chunk_s is None
    span = otel.finished_spans()[0]
    assert span.attributes["error.type"] == "_OTHER"
    check_span(span, record, port=server.port)  # the estimate is on the span


def test_chat_stream_helper_left_early(server: LocalAPIServer, otel: Any, records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    with openai_client(server) as client:
        with client.chat.completions.stream(model=CHAT_MODEL, messages=MESSAGES) as stream:
            for event in stream:
                if event.type == "content.delta" and event.snapshot.strip():
                    break
        del stream
        gc.collect()
    record = _one_call(records, otel)
    assert record.usage_source == "estimated"
    assert record.error_type is None  # the with block closed it: a deliberate stop, not an error


def test_chat_stream_helper_left_early_is_accounted_at_exit(server: LocalAPIServer,
                                                            records: list[CallRecord]) -> None:
    tokenmetry.instrument()
    with openai_client(server) as client:
        with client.chat.completions.stream(model=CHAT_MODEL, messages=MESSAGES) as stream:
            for _ in stream:
                break
        accounted_at_exit = len(records)
        del stream
        gc.collect()
    assert accounted_at_exit == 1


def test_stream_helpers_of_a_wrapped_client_are_accounted_at_exit(server: LocalAPIServer,
                                                                   records: list[CallRecord]) -> None:
    """wrap() alone (no instrument()) hooks the helpers' close() too: leaving the with block early
    accounts the call there, while the helper object is still referenced."""
    with openai_client(server) as client:
        tokenmetry.wrap(client)
        with client.chat.completions.stream(model=CHAT_MODEL, messages=MESSAGES) as stream:
            for _ in stream:
                break
        chat_at_exit = len(records)
        with client.responses.stream(model=CHAT_MODEL, input=PROMPT) as responses_stream:
            for _ in responses_stream:
                break
        responses_at_exit = len(records)
        del stream, responses_stream
        gc.collect()
    assert (chat_at_exit, responses_at_exit) == (1, 2)
    assert [r.error_type for r in records] == [None, None]  # closed by the with block: deliberate stops
    tokenmetry.uninstrument()
    from openai.lib.streaming.chat._completions import ChatCompletionStream

    assert "close" in ChatCompletionStream.__dict__ and not hasattr(ChatCompletionStream.close, "__wrapped__")
    # wrapping the same client again after uninstrument() hooks them again
    with openai_client(server) as client:
        tokenmetry.wrap(client)
        tokenmetry.uninstrument()
        tokenmetry.wrap(client)
        with client.chat.completions.stream(model=CHAT_MODEL, messages=MESSAGES) as stream:
            for _ in stream:
                break
        assert len(records) == 3
        del stream
        gc.collect()


def test_responses_stream_break(server: LocalAPIServer, otel: Any, records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    with openai_client(server) as client:
        stream = client.responses.create(model=CHAT_MODEL, input=PROMPT, stream=True)
        text = ""
        for event in stream:
            if event.type == "response.output_text.delta":
                text += event.delta
                if len(text.split()) == 3:
                    break
        del stream
        gc.collect()
    record = _one_call(records, otel)
    assert record.usage_source == "estimated" and record.error_type == "_OTHER"
    assert record.usage == _estimated(text, prompt=PROMPT)
    assert record.response_id == server.last_response.response_id  # from response.created


def test_broken_stream(server: LocalAPIServer, otel: Any, records: list[CallRecord]) -> None:
    with openai_client(server, max_retries=0) as client:
        server.enqueue("openai.chat", Reply(abort_after=4))
        with pytest.raises(Exception) as plain:
            list(_create(client, "chat"))
        tokenmetry.instrument(**otel.kwargs())
        server.enqueue("openai.chat", Reply(abort_after=4))
        got_chunks: list[Any] = []
        with pytest.raises(Exception) as got:
            for chunk in _create(client, "chat"):
                got_chunks.append(chunk)
    assert type(got.value) is type(plain.value)
    assert str(got.value) == str(plain.value)
    record = _one_call(records, otel)
    assert record.error_type == type(got.value).__qualname__
    text = "".join(c.choices[0].delta.content or "" for c in got_chunks)
    assert len(got_chunks) == 4
    assert record.usage == _estimated(text)
    assert record.usage_source == "estimated"
    assert otel.finished_spans()[0].attributes["error.type"] == type(got.value).__qualname__


def test_time_to_first_chunk(server: LocalAPIServer, otel: Any, records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    server.enqueue("openai.chat", Reply(delay=0.05, event_delay=0.01))
    with openai_client(server) as client:
        chunks = list(_create(client, "chat"))
    record = _one_call(records, otel)
    sent_chunks = len(_sent_data_events(server))  # the SDK's chunks, the withheld one included
    assert sent_chunks == len(chunks) + 1
    assert record.time_to_first_chunk_s is not None
    assert 0.05 <= record.time_to_first_chunk_s < record.duration_s
    assert record.duration_s - record.time_to_first_chunk_s >= (sent_chunks - 1) * 0.01 * 0.9
    ttfc = points_by_attributes(otel, "gen_ai.client.operation.time_to_first_chunk")
    assert [(p.count, p.sum) for p in ttfc.values()] == [(1, record.time_to_first_chunk_s)]
    per_chunk = points_by_attributes(otel, "gen_ai.client.operation.time_per_output_chunk")
    expected = (record.duration_s - record.time_to_first_chunk_s) / (sent_chunks - 1)
    assert [(p.count, p.sum) for p in per_chunk.values()] == [(1, pytest.approx(expected, rel=1e-9))]


# ================================================================================ async endings
async def _afirst_chunks(stream: Any, count: int) -> str:
    text = ""
    index = 0
    async for chunk in stream:
        text += chunk.choices[0].delta.content or ""
        index += 1
        if index == count:
            break
    return text


async def test_async_break_then_close(server: LocalAPIServer, otel: Any, records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    async with openai_client(server, async_=True) as client:
        stream = await _acreate(client, "chat")
        text = await _afirst_chunks(stream, 3)
        assert records == []
        await stream.close()
        assert len(records) == 1
        await stream.close()
        del stream
        gc.collect()
    record = _one_call(records, otel)
    assert record.usage == _estimated(text)
    assert record.usage_source == "estimated"


async def test_async_break_then_drop(server: LocalAPIServer, otel: Any, records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    async with openai_client(server, async_=True) as client:
        stream = await _acreate(client, "chat")
        text = await _afirst_chunks(stream, 3)
        del stream
        # the SDK's ``__aiter__`` async generator, left suspended by ``break``, holds the stream until
        # asyncio finalises it on a later loop iteration
        for _ in range(3):
            gc.collect()
            await asyncio.sleep(0)
        assert len(records) == 1
    _check_incomplete(_one_call(records, otel), otel, server, text)


async def test_async_with_exhausted_and_left_early(server: LocalAPIServer, otel: Any,
                                                   records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    async with openai_client(server, async_=True) as client:
        async with await _acreate(client, "chat") as stream:
            chunks = [c async for c in stream]
        assert len(records) == 1
        first_truth = truth_of(server.last_response, "chat")
        async with await _acreate(client, "chat") as stream:
            text = await _afirst_chunks(stream, 2)
        assert len(records) == 2
        del stream
        gc.collect()
    assert all(c.choices for c in chunks)
    assert records[0].usage == first_truth.usage and records[0].usage_source == "provider"
    assert records[1].usage == _estimated(text) and records[1].usage_source == "estimated"
    assert len(otel.finished_spans()) == 2


async def test_async_never_iterated_dropped(server: LocalAPIServer, otel: Any, records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    async with openai_client(server, async_=True) as client:
        stream = await _acreate(client, "chat")
        del stream
        gc.collect()
        assert len(records) == 1
    record = _one_call(records, otel)
    assert (record.error_type, record.usage_source) == ("_OTHER", "estimated")
    assert record.usage == _estimated("")


async def test_async_responses_stream_helper_exhausted(server: LocalAPIServer, otel: Any,
                                                       records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    async with openai_client(server, async_=True) as client:
        async with client.responses.stream(model=CHAT_MODEL, input=PROMPT) as stream:
            async for _ in stream:
                pass
        assert len(records) == 1
    record = _one_call(records, otel)
    assert record.usage == truth_of(server.last_response, "responses").usage


async def test_async_broken_stream(server: LocalAPIServer, otel: Any, records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    server.enqueue("openai.chat", Reply(abort_after=3))
    async with openai_client(server, async_=True, max_retries=0) as client:
        with pytest.raises(openai.APIError) as got:
            async for _ in await _acreate(client, "chat"):
                pass
    record = _one_call(records, otel)
    assert record.error_type == type(got.value).__qualname__
    assert record.usage_source == "estimated"


def test_every_stream_of_a_session_counted_once(server: LocalAPIServer, otel: Any) -> None:
    """Five streams ended five ways: the session and stats() see five calls, no more, no less."""
    tokenmetry.instrument(**otel.kwargs())
    with openai_client(server) as client, tokenmetry.session("five-ways") as session:
        list(_create(client, "chat"))                    # exhausted
        with _create(client, "chat") as stream:          # with + break
            _first_chunks(stream, 1)
        stream = _create(client, "chat")                 # close()
        _first_chunks(stream, 1)
        stream.close()
        stream = _create(client, "chat")                 # break + drop
        _first_chunks(stream, 2)
        del stream
        stream = _create(client, "completions")          # never iterated, dropped
        del stream
        gc.collect()
    assert session.call_count == 5
    assert len(session.calls) == 5
    assert tokenmetry.stats().requests == 5
    assert len(otel.finished_spans()) == 5
    assert [r.usage_source for r in session.calls] == ["provider", "estimated", "estimated", "estimated",
                                                       "estimated"]


def test_streaming_response_never_parsed_is_accounted_once(server: LocalAPIServer, otel: Any,
                                                           records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    with openai_client(server) as client:
        with client.chat.completions.with_streaming_response.create(model=CHAT_MODEL, messages=MESSAGES,
                                                                    stream=True) as response:
            assert response.status_code == 200
        assert len(records) == 1  # at the end of the with block
        del response
        gc.collect()
    record = _one_call(records, otel)
    # nothing was read: the prompt is all there is to estimate from
    assert record.usage == _estimated("")
    assert record.usage_source == "estimated"
    assert record.stream is True
