"""google-genai end to end: the real ``genai.Client`` (sync and ``client.aio``, Gemini API and Vertex AI)
over HTTP to the local server; every figure is compared with what the server sent."""

from __future__ import annotations

import asyncio
import gc
import json
from pathlib import Path
from typing import Any

import pytest
from _checks import retry_events
from google.genai import errors, types

import tokenmetry
from tokenmetry.accounting import request_text
from tokenmetry.counting import estimate_tokens
from tokenmetry.providers import google_genai
from tokenmetry.testing import LocalAPIServer, Reply
from tokenmetry.usage import Usage
from realdata import REAL_RESPONSES

MODEL = "gemini-2.5-flash"
PROMPT = "Tell me three facts about the moon please"
REAL = REAL_RESPONSES
# the SDK's own retries made deterministic: waits 0.05 s then 0.1 s, no jitter
RETRIES = types.HttpRetryOptions(attempts=3, initial_delay=0.05, max_delay=0.1, exp_base=2, jitter=0.0)
RICH_USAGE = {"cachedContentTokenCount": 4, "toolUsePromptTokenCount": 7, "thoughtsTokenCount": 11}


# ----------------------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="module")
def server():
    with LocalAPIServer() as local:
        yield local


@pytest.fixture(autouse=True)
def fresh_server(server):
    server.reset()
    yield
    server.reset()


@pytest.fixture
def instrumented(otel):
    assert tokenmetry.instrument(providers=["google_genai"], **otel.kwargs()) == ["google_genai"]
    return otel


def expected_usage(raw: dict[str, Any]) -> Usage:
    """SPEC §3, Gemini column, from the camelCase usage object the server sent."""
    tool = raw.get("toolUsePromptTokenCount")
    thoughts = raw.get("thoughtsTokenCount")
    return Usage(
        input_tokens=raw.get("promptTokenCount", 0) + (tool or 0),
        output_tokens=raw.get("candidatesTokenCount", 0) + (thoughts or 0),
        cache_read_tokens=raw.get("cachedContentTokenCount"),
        cache_write_tokens=None,
        reasoning_tokens=thoughts,
        tool_tokens=tool,
    )


def calls() -> list[tokenmetry.CallRecord]:
    return tokenmetry.current_session().calls


def generate(client: Any, is_async: bool, **kwargs: Any) -> Any:
    if is_async:
        return asyncio.run(client.aio.models.generate_content(**kwargs))
    return client.models.generate_content(**kwargs)


def stream(client: Any, is_async: bool, **kwargs: Any) -> list[Any]:
    if is_async:
        async def collect() -> list[Any]:
            return [chunk async for chunk in await client.aio.models.generate_content_stream(**kwargs)]

        return asyncio.run(collect())
    return list(client.models.generate_content_stream(**kwargs))


def points(otel: Any, name: str, **attributes: Any) -> list[Any]:
    return [p for p in otel.metric_points(name)
            if all(p.attributes.get(key) == value for key, value in attributes.items())]


def check_span(span: Any, server: LocalAPIServer, *, operation: str, provider: str, request_model: str,
               response_model: str | None, response_id: str | None, finish_reasons: tuple[str, ...],
               usage: Usage, stream: bool, error_type: str | None = None,
               conversation: str | None = None) -> None:
    assert span.name == f"{operation} {request_model}"
    assert span.kind.name == "CLIENT"
    attributes = dict(span.attributes)
    expected: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": request_model,
        "gen_ai.request.stream": stream,
        "gen_ai.conversation.id": conversation or tokenmetry.current_session().id,
        "server.address": "127.0.0.1",
        "server.port": server.port,
        "gen_ai.usage.input_tokens": usage.input_tokens,
        "gen_ai.usage.output_tokens": usage.output_tokens,
    }
    if response_model is not None:
        expected["gen_ai.response.model"] = response_model
    if response_id is not None:
        expected["gen_ai.response.id"] = response_id
    if finish_reasons:
        expected["gen_ai.response.finish_reasons"] = finish_reasons
    if usage.cache_read_tokens is not None:
        expected["gen_ai.usage.cache_read.input_tokens"] = usage.cache_read_tokens
    if usage.reasoning_tokens is not None:
        expected["gen_ai.usage.reasoning.output_tokens"] = usage.reasoning_tokens
    if usage.tool_tokens is not None:
        expected["tokenmetry.usage.tool_tokens"] = usage.tool_tokens
    if error_type is not None:
        expected["error.type"] = error_type
    for key, value in expected.items():
        assert attributes.get(key) == value, key
    for absent in ("gen_ai.usage.cache_write.input_tokens",):
        assert absent not in attributes
    for key in ("gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.reasoning.output_tokens",
                "tokenmetry.usage.tool_tokens", "error.type", "gen_ai.response.model", "gen_ai.response.id",
                "gen_ai.response.finish_reasons"):
        if key not in expected:
            assert key not in attributes, key


def check_token_metrics(otel: Any, usage: Usage, *, operation: str, provider: str, stream: bool,
                        calls_made: int = 1) -> None:
    base = {"gen_ai.operation.name": operation, "gen_ai.provider.name": provider}
    inputs = points(otel, "gen_ai.client.token.usage", **base, **{"gen_ai.token.type": "input"})
    outputs = points(otel, "gen_ai.client.token.usage", **base, **{"gen_ai.token.type": "output"})
    assert [(p.count, p.sum) for p in inputs] == [(calls_made, usage.input_tokens)]
    assert [(p.count, p.sum) for p in outputs] == [(calls_made, usage.output_tokens)]
    assert [p.count for p in points(otel, "gen_ai.client.operation.duration", **base)] == [calls_made]
    ttfc = points(otel, "gen_ai.client.operation.time_to_first_chunk", **base)
    assert [p.count for p in ttfc] == ([calls_made] if stream else [])
    for p in inputs + outputs:
        assert p.attributes["server.address"] == "127.0.0.1"


# ----------------------------------------------------------------------------- every surface
@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("vertexai", [False, True], ids=["gemini", "vertex"])
def test_generate_content(server, instrumented, vertexai, is_async, streamed):
    provider = "gcp.vertex_ai" if vertexai else "gcp.gemini"
    client = server.genai_client(vertexai=vertexai)
    server.enqueue("gemini", Reply(usage=RICH_USAGE))
    with tokenmetry.session("moon-chat"):
        if streamed:
            chunks = stream(client, is_async, model=MODEL, contents=PROMPT)
        else:
            response = generate(client, is_async, model=MODEL, contents=PROMPT)
        [record] = calls_of("moon-chat")

    sent = server.responses[0]
    usage = expected_usage(sent.usage)
    assert usage.cache_read_tokens == 4 and usage.tool_tokens == 7 and usage.reasoning_tokens == 11
    if streamed:
        assert len(chunks) == len(sent.events) > 1
        assert "".join(chunk.text for chunk in chunks) == sent.text
        assert chunks[-1].usage_metadata.prompt_token_count == sent.usage["promptTokenCount"]
    else:
        assert response.text == sent.text
        assert response.usage_metadata.total_token_count == sent.usage["totalTokenCount"]

    assert record.usage == usage
    assert record.usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert (record.provider, record.operation, record.request_model) == (provider, "generate_content", MODEL)
    assert (record.response_model, record.response_id) == (sent.model, sent.response_id)
    assert record.usage_source == "provider"
    assert record.stream is streamed
    assert record.finish_reasons == ("stop",)
    assert record.session_id == "moon-chat"
    assert record.server_address == "127.0.0.1"
    assert record.error_type is None and record.retries == 0 and record.throttle_wait_s == 0.0
    assert (record.time_to_first_chunk_s is not None) is streamed
    assert tokenmetry.sessions.get("moon-chat").usage == usage

    [span] = instrumented.finished_spans()
    assert span.name == "generate_content gemini-2.5-flash"
    check_span(span, server, operation="generate_content", provider=provider, request_model=MODEL,
               response_model=sent.model, response_id=sent.response_id, finish_reasons=("stop",), usage=usage,
               stream=streamed, conversation="moon-chat")
    check_token_metrics(instrumented, usage, operation="generate_content", provider=provider, stream=streamed)
    kinds = {p.attributes["tokenmetry.token.kind"]: p.value
             for p in points(instrumented, "tokenmetry.tokens")}
    assert kinds == {"cache_read": 4, "reasoning": 11, "tool": 7}
    assert len(server.requests) == 1


def calls_of(session_id: str) -> list[tokenmetry.CallRecord]:
    return tokenmetry.sessions.get(session_id).calls


@pytest.mark.parametrize("vertexai", [False, True], ids=["gemini", "vertex"])
def test_usage_absent_fields_stay_none(server, instrumented, vertexai):
    """A plain answer reports no cache, thoughts or tool counts: those stay None, not 0."""
    client = server.genai_client(vertexai=vertexai)
    client.models.generate_content(model=MODEL, contents=PROMPT)
    [record] = calls()
    raw = server.responses[0].usage
    assert "thoughtsTokenCount" not in raw and "cachedContentTokenCount" not in raw
    assert record.usage == Usage(raw["promptTokenCount"], raw["candidatesTokenCount"], None, None, None, None)
    [span] = instrumented.finished_spans()
    assert "gen_ai.usage.reasoning.output_tokens" not in span.attributes
    assert "gen_ai.usage.cache_read.input_tokens" not in span.attributes
    assert points(instrumented, "tokenmetry.tokens") == []


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_stream_usage_going_down_mid_stream_takes_the_last_chunk(server, instrumented, is_async):
    def document(text: str, usage: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
        if finish:
            candidate["finishReason"] = finish
        return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": "gemini-2.5-flash-001",
                "responseId": "resp-down"}

    pieces = [
        {"promptTokenCount": 50, "candidatesTokenCount": 3, "thoughtsTokenCount": 100,
         "totalTokenCount": 153},
        {"promptTokenCount": 50, "totalTokenCount": 50},
        {"promptTokenCount": 40, "candidatesTokenCount": 9, "thoughtsTokenCount": 60,
         "toolUsePromptTokenCount": 30, "totalTokenCount": 139},
    ]
    events = [document("One", pieces[0]), document(" two", pieces[1]),
              document(" three", pieces[2], "MAX_TOKENS")]
    server.enqueue("gemini.stream_generate_content", Reply(events=events))
    client = server.genai_client()
    chunks = stream(client, is_async, model=MODEL, contents=PROMPT)
    assert [c.text for c in chunks] == ["One", " two", " three"]
    [record] = calls()
    assert record.usage == Usage(70, 69, None, None, 60, 30) == expected_usage(pieces[-1])
    assert record.finish_reasons == ("max_tokens",)
    assert (record.response_id, record.response_model) == ("resp-down", "gemini-2.5-flash-001")
    [span] = instrumented.finished_spans()
    assert span.attributes["gen_ai.response.finish_reasons"] == ("max_tokens",)
    check_token_metrics(instrumented, record.usage, operation="generate_content", provider="gcp.gemini",
                        stream=True)


@pytest.mark.parametrize("vertexai", [False, True], ids=["gemini", "vertex"])
def test_request_model_prefixes_are_stripped(server, instrumented, vertexai):
    client = server.genai_client(vertexai=vertexai)
    spellings = ["models/gemini-2.5-flash"] if not vertexai else [
        "publishers/google/models/gemini-2.5-flash",
        "projects/local-project/locations/us-central1/publishers/google/models/gemini-2.5-flash",
        "google/gemini-2.5-flash"]
    for spelling in spellings:
        client.models.generate_content(model=spelling, contents=PROMPT)
    assert [r.request_model for r in calls()] == [MODEL] * len(spellings)
    names = [s.name for s in instrumented.finished_spans()]
    assert names == ["generate_content gemini-2.5-flash"] * len(spellings)
    assert [r.model for r in server.requests] == [MODEL] * len(spellings)


def test_request_model_name():
    name = google_genai.request_model_name
    assert name("gemini-2.5-flash") == "gemini-2.5-flash"
    assert name("models/gemini-2.5-flash") == "gemini-2.5-flash"
    assert name("publishers/google/models/gemini-2.5-pro") == "gemini-2.5-pro"
    assert name("projects/p/locations/l/publishers/google/models/gemini-2.5-pro") == "gemini-2.5-pro"
    assert name("tunedModels/1234") == "tunedModels/1234"
    assert name("projects/p/locations/l/endpoints/42") == "projects/p/locations/l/endpoints/42"
    assert name(None) is None


# ----------------------------------------------------------------------------- streams left early
@pytest.mark.parametrize("usage_on_chunks", [True, False], ids=["usage-every-chunk", "usage-last-only"])
def test_stream_left_early_is_accounted_once(server, instrumented, usage_on_chunks):
    server.enqueue("gemini", Reply(stream_usage="every" if usage_on_chunks else "last"))
    client = server.genai_client()
    iterator = client.models.generate_content_stream(model=MODEL, contents=PROMPT)
    delivered = []
    for chunk in iterator:
        delivered.append(chunk.text)
        break
    assert calls() == []  # still open
    del iterator, chunk
    gc.collect()
    [record] = calls()
    sent = server.responses[0]
    assert record.error_type == "_OTHER"
    if usage_on_chunks:
        assert record.usage_source == "provider"
        assert record.usage == expected_usage(sent.usage_pieces[0])
    else:
        assert record.usage_source == "estimated"
        output = estimate_tokens(MODEL, "".join(delivered))
        assert record.usage == Usage(estimate_tokens(MODEL, PROMPT), output)
    [span] = instrumented.finished_spans()
    assert span.attributes["error.type"] == "_OTHER"
    assert span.attributes["tokenmetry.usage.source"] == record.usage_source
    assert span.attributes["gen_ai.usage.output_tokens"] == record.usage.output_tokens
    gc.collect()
    assert len(calls()) == 1 and len(instrumented.finished_spans()) == 1


async def test_async_stream_left_early_is_accounted_once(server, instrumented):
    server.enqueue("gemini", Reply(stream_usage="last"))
    client = server.genai_client()
    iterator = await client.aio.models.generate_content_stream(model=MODEL, contents=PROMPT)
    delivered = []
    async for chunk in iterator:
        delivered.append(chunk.text)
        break
    del iterator, chunk
    for _ in range(20):  # async generators are closed by the event loop once collected
        gc.collect()
        await asyncio.sleep(0.01)
        if calls():
            break
    [record] = calls()
    assert record.error_type == "_OTHER"
    assert record.usage_source == "estimated"
    assert record.usage == Usage(estimate_tokens(MODEL, PROMPT), estimate_tokens(MODEL, "".join(delivered)))
    assert len(instrumented.finished_spans()) == 1


def test_stream_closed_explicitly_and_exhausted(server, instrumented):
    client = server.genai_client()
    iterator = client.models.generate_content_stream(model=MODEL, contents=PROMPT)
    first = next(iterator)
    iterator.close()
    assert first.text
    chunks = list(client.models.generate_content_stream(model=MODEL, contents=PROMPT))
    closed, exhausted = calls()
    assert closed.error_type == "_OTHER"
    assert closed.usage == expected_usage(server.responses[0].usage_pieces[0])
    assert exhausted.error_type is None and exhausted.usage == expected_usage(server.responses[1].usage)
    assert len(chunks) == len(server.responses[1].events)
    assert len(instrumented.finished_spans()) == 2


def test_stream_error_mid_stream(server, instrumented):
    events = [{"candidates": [{"content": {"role": "model", "parts": [{"text": "Hi"}]}, "index": 0}],
               "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 1, "totalTokenCount": 10},
               "modelVersion": MODEL, "responseId": "resp-broken"},
              {"error": {"code": 500, "message": "backend died", "status": "INTERNAL"}}]
    server.enqueue("gemini", Reply(events=events))
    client = server.genai_client()
    seen = []
    with pytest.raises(errors.ServerError) as raised:
        for chunk in client.models.generate_content_stream(model=MODEL, contents=PROMPT):
            seen.append(chunk.text)
    assert seen == ["Hi"] and raised.value.code == 500
    [record] = calls()
    assert record.error_type == "ServerError"
    assert record.usage == Usage(9, 1)
    [span] = instrumented.finished_spans()
    assert span.attributes["error.type"] == "ServerError"
    assert span.status.status_code.name == "ERROR"


# ----------------------------------------------------------------------------- chats
def test_chats_record_each_api_call_once(server, instrumented):
    client = server.genai_client()
    chat = client.chats.create(model=MODEL)
    first = chat.send_message("Hello there")
    second = chat.send_message("And a second question")
    chunks = list(chat.send_message_stream("Now stream a third"))
    assert first.text == server.responses[0].text and second.text == server.responses[1].text
    assert "".join(c.text for c in chunks) == server.responses[2].text
    assert len(server.requests) == 3
    records = calls()
    assert [r.usage for r in records] == [expected_usage(s.usage) for s in server.responses]
    assert [r.stream for r in records] == [False, False, True]
    assert [r.response_id for r in records] == [s.response_id for s in server.responses]
    # the history grows: later calls send (and are billed for) more prompt tokens
    assert records[0].usage.input_tokens < records[1].usage.input_tokens < records[2].usage.input_tokens
    assert len(instrumented.finished_spans()) == 3
    total = sum((expected_usage(s.usage) for s in server.responses), Usage())
    assert tokenmetry.current_session().usage == total


async def test_async_chats_record_each_api_call_once(server, instrumented):
    client = server.genai_client(vertexai=True)
    chat = client.aio.chats.create(model=MODEL)
    await chat.send_message("Hello there")
    chunks = [c async for c in await chat.send_message_stream("Stream me something")]
    assert "".join(c.text for c in chunks) == server.responses[1].text
    records = calls()
    assert [r.usage for r in records] == [expected_usage(s.usage) for s in server.responses]
    assert [(r.provider, r.stream) for r in records] == [("gcp.vertex_ai", False), ("gcp.vertex_ai", True)]
    assert len(instrumented.finished_spans()) == 2 == len(server.requests)


def test_automatic_function_calling_records_each_request(server, instrumented):
    def get_weather(city: str) -> str:
        """The weather of a city."""
        return f"sunny in {city}"

    call_body = {"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 20, "candidatesTokenCount": 5, "totalTokenCount": 25},
        "modelVersion": MODEL, "responseId": "afc-1"}
    server.enqueue("gemini", Reply(body=call_body))
    client = server.genai_client()
    chat = client.chats.create(model=MODEL, config=types.GenerateContentConfig(tools=[get_weather]))
    response = chat.send_message("Weather in Paris?")
    assert response.text == server.responses[1].text
    assert len(server.requests) == 2
    first, second = calls()
    assert first.usage == Usage(20, 5) and first.response_id == "afc-1"
    assert second.usage == expected_usage(server.responses[1].usage)
    assert len(instrumented.finished_spans()) == 2


# ----------------------------------------------------------------------------- count_tokens, embeddings
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("vertexai", [False, True], ids=["gemini", "vertex"])
def test_count_tokens_bills_nothing(server, instrumented, vertexai, is_async):
    provider = "gcp.vertex_ai" if vertexai else "gcp.gemini"
    client = server.genai_client(vertexai=vertexai)
    if is_async:
        result = asyncio.run(client.aio.models.count_tokens(model=MODEL, contents=PROMPT))
    else:
        result = client.models.count_tokens(model=MODEL, contents=PROMPT)
    assert result.total_tokens == server.responses[0].json["totalTokens"]
    [record] = calls()
    assert (record.provider, record.operation, record.request_model) == (provider, "count_tokens", MODEL)
    assert record.usage == Usage(0, 0) and record.usage_source == "provider" and record.cost is None
    assert tokenmetry.current_session().usage == Usage(0, 0)
    assert tokenmetry.stats().usage == Usage(0, 0) and tokenmetry.stats().requests == 1
    [span] = instrumented.finished_spans()
    check_span(span, server, operation="count_tokens", provider=provider, request_model=MODEL,
               response_model=None, response_id=None, finish_reasons=(), usage=Usage(0, 0), stream=False)
    assert span.attributes["tokenmetry.counted.input_tokens"] == server.responses[0].json["totalTokens"]
    check_token_metrics(instrumented, Usage(0, 0), operation="count_tokens", provider=provider, stream=False)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("vertexai,model,contents,path_end", [
    (False, "gemini-embedding-001", ["first text here", "second one"], ":batchEmbedContents"),
    (True, "gemini-embedding-001", "just one text to embed", ":embedContent"),
    (True, "gemini-embedding-001", ["first text here", "second one"], ":batchEmbedContents"),
    (True, "text-embedding-005", ["first text here", "second one"], ":predict"),
], ids=["gemini-batch", "vertex-embed", "vertex-batch", "vertex-predict"])
def test_embed_content(server, instrumented, vertexai, model, contents, path_end, is_async):
    provider = "gcp.vertex_ai" if vertexai else "gcp.gemini"
    client = server.genai_client(vertexai=vertexai)
    if is_async:
        response = asyncio.run(client.aio.models.embed_content(model=model, contents=contents))
    else:
        response = client.models.embed_content(model=model, contents=contents)
    assert server.requests[0].path.endswith(path_end)
    sent = server.responses[0]
    if path_end == ":predict":
        tokens = sum(p["token_count"] for p in sent.usage_pieces)
    else:
        tokens = sent.usage["promptTokenCount"]
    assert len(response.embeddings) == (1 if isinstance(contents, str) else len(contents))
    [record] = calls()
    usage = Usage(tokens, 0)
    assert (record.provider, record.operation, record.request_model, record.usage) == \
        (provider, "embeddings", model, usage)
    [span] = instrumented.finished_spans()
    check_span(span, server, operation="embeddings", provider=provider, request_model=model,
               response_model=None, response_id=None, finish_reasons=(), usage=usage, stream=False)
    check_token_metrics(instrumented, usage, operation="embeddings", provider=provider, stream=False)


def test_embedding_without_usage_is_estimated(server, instrumented):
    server.enqueue("gemini", Reply(omit_usage=True))
    client = server.genai_client()
    client.models.embed_content(model="gemini-embedding-001", contents=["alpha beta gamma", "delta"])
    [record] = calls()
    assert record.usage_source == "estimated"
    text = request_text({"contents": ["alpha beta gamma", "delta"]})
    assert record.usage == Usage(estimate_tokens("gemini-embedding-001", text), 0)


def test_generate_without_usage_is_estimated_from_sdk_objects(server, instrumented):
    server.enqueue("gemini", Reply(omit_usage=True))
    client = server.genai_client()
    contents = [types.Content(role="user", parts=[types.Part(text="Typed content objects")]),
                types.Content(role="model", parts=[types.Part(text="are read for the estimate")])]
    response = client.models.generate_content(
        model=MODEL, contents=contents,
        config=types.GenerateContentConfig(system_instruction="Be brief."))
    [record] = calls()
    assert record.usage_source == "estimated"
    prompt = "\n".join(["Be brief.", "Typed content objects", "are read for the estimate"])
    assert record.usage == Usage(estimate_tokens(MODEL, prompt), estimate_tokens(MODEL, response.text))


def test_raw_http_response_config_is_read(server, instrumented):
    client = server.genai_client()
    response = client.models.generate_content(
        model=MODEL, contents=PROMPT, config=types.GenerateContentConfig(should_return_http_response=True))
    assert json.loads(response.sdk_http_response.body) == server.responses[0].json
    [record] = calls()
    assert record.usage == expected_usage(server.responses[0].usage)
    assert record.response_id == server.responses[0].response_id and record.finish_reasons == ("stop",)


def test_per_request_base_url_is_the_server_address(server, instrumented):
    with LocalAPIServer() as other:
        client = server.genai_client()
        config = types.GenerateContentConfig(http_options=types.HttpOptions(base_url=other.url))
        client.models.generate_content(model=MODEL, contents=PROMPT, config=config)
        assert len(other.requests) == 1 and server.requests == []
        [span] = instrumented.finished_spans()
        assert (span.attributes["server.address"], span.attributes["server.port"]) == ("127.0.0.1", other.port)
        client.models.generate_content(model=MODEL, contents=PROMPT)
        assert instrumented.finished_spans()[1].attributes["server.port"] == server.port


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "stream"])
def test_budget_refuses_before_sending(server, instrumented, streamed):
    """The prompt and ``max_output_tokens`` of a Gemini request reach the budget's pre-call estimate."""
    client = server.genai_client()
    config = types.GenerateContentConfig(max_output_tokens=500)
    with tokenmetry.session("capped", budget=tokenmetry.Budget(max_tokens=400)):
        with pytest.raises(tokenmetry.BudgetExceeded):
            if streamed:
                list(client.models.generate_content_stream(model=MODEL, contents=PROMPT, config=config))
            else:
                client.models.generate_content(model=MODEL, contents=PROMPT, config=config)
    assert server.requests == [] and calls_of("capped") == []
    with tokenmetry.session("roomy", budget=tokenmetry.Budget(max_tokens=600)):
        client.models.generate_content(model=MODEL, contents=PROMPT, config=config)
    assert len(server.requests) == 1 and len(calls_of("roomy")) == 1


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_api_error_reaches_the_caller_unchanged(server, instrumented, is_async):
    server.enqueue("gemini", Reply(status=400, message="bad request here"))
    client = server.genai_client()
    with pytest.raises(errors.ClientError) as raised:
        generate(client, is_async, model=MODEL, contents=PROMPT)
    error = raised.value
    assert type(error) is errors.ClientError
    assert error.code == 400 and error.message == "bad request here"
    assert error.details == server.responses[0].json
    [record] = calls()
    assert record.error_type == "ClientError" and record.usage_source == "missing" and record.usage == Usage()
    [span] = instrumented.finished_spans()
    assert span.attributes["error.type"] == "ClientError"
    assert "gen_ai.usage.input_tokens" not in span.attributes
    [duration] = points(instrumented, "gen_ai.client.operation.duration")
    assert duration.attributes["error.type"] == "ClientError" and duration.count == 1
    assert tokenmetry.stats().errors == 1


# ----------------------------------------------------------------------------- retries (issue 4)
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("reply,status,cause,retry_after", [
    (Reply(status=429, retry_delay="0.2s"), 429, "throttle", 0.2),
    (Reply(status=429), 429, "throttle", None),
    (Reply(status=429, headers={"retry-after": "1"}), 429, "throttle", 1.0),
    (Reply(status=503), 503, "server_error", None),
], ids=["429-retryinfo", "429-plain", "429-retry-after", "503"])
def test_sdk_retry_sleep_is_measured(server, instrumented, is_async, reply, status, cause, retry_after):
    server.enqueue("gemini", reply)
    client = server.genai_client(http_options=types.HttpOptions(retry_options=RETRIES))
    response = generate(client, is_async, model=MODEL, contents=PROMPT)
    assert response.text == server.responses[1].text
    first, second = server.requests
    [record] = calls()
    assert record.retries == 1 and record.error_type is None
    assert record.usage == expected_usage(server.responses[1].usage)  # the attempt that succeeded, once
    [span] = instrumented.finished_spans()
    [event] = retry_events(span)
    slept = event["tokenmetry.retry.slept_s"]
    # the sleep that happened, not the planned 0.05 s: a real sleep always lasts a little longer, and
    # it fits inside the gap between the two requests' arrivals at the server
    assert 0.05 < slept < second.received_at - first.received_at
    expected_event = {"tokenmetry.retry.attempt": 1, "tokenmetry.retry.slept_s": slept,
                      "tokenmetry.retry.cause": cause, "http.response.status_code": status}
    if retry_after is not None:
        expected_event["tokenmetry.retry.retry_after_s"] = retry_after
    assert event == expected_event
    throttle = slept if cause == "throttle" else 0.0
    assert record.throttle_wait_s == throttle and record.retry_wait_s == slept - throttle
    assert span.attributes["tokenmetry.retries"] == 1
    assert span.attributes["tokenmetry.throttle_wait_s"] == throttle
    snapshot = tokenmetry.stats()
    assert (snapshot.retries, snapshot.throttle_wait_s) == (1, throttle)
    assert snapshot.retry_wait_s == slept - throttle
    assert snapshot.throttle_events == (1 if cause == "throttle" else 0)
    summary = tokenmetry.current_session().summary()
    assert summary["throttle_wait_s"] == throttle and summary["retries"] == 1
    [counted] = points(instrumented, "tokenmetry.retries")
    assert counted.value == 1 and counted.attributes["tokenmetry.retry.cause"] == cause
    [waited] = points(instrumented, "tokenmetry.throttle.wait")
    assert waited.sum == slept and waited.count == 1


def test_overloaded_and_connection_causes(server, instrumented):
    options = types.HttpRetryOptions(attempts=2, initial_delay=0.05, max_delay=0.05, jitter=0.0,
                                     http_status_codes=[529])
    server.enqueue("gemini", Reply(status=529))
    client = server.genai_client(http_options=types.HttpOptions(retry_options=options))
    client.models.generate_content(model=MODEL, contents=PROMPT)
    # a timed-out attempt has no response at all: a connection failure
    server.enqueue("gemini", Reply(delay=1.0))
    slow = server.genai_client(http_options=types.HttpOptions(retry_options=RETRIES, timeout=300))
    slow.models.generate_content(model=MODEL, contents=PROMPT)
    overloaded, connection = calls()
    [span_overloaded, span_connection] = instrumented.finished_spans()
    [event] = retry_events(span_overloaded)
    assert (event["tokenmetry.retry.cause"], event["http.response.status_code"]) == ("overloaded", 529)
    assert overloaded.retries == 1 and overloaded.throttle_wait_s == 0.0
    assert overloaded.retry_wait_s == event["tokenmetry.retry.slept_s"] > 0.05
    [event] = retry_events(span_connection)
    assert event["tokenmetry.retry.cause"] == "connection" and "http.response.status_code" not in event
    assert connection.retries == 1 and connection.error_type is None


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_exhausted_retries_raise_the_sdk_error(server, instrumented, is_async):
    server.enqueue("gemini", *[Reply(status=429, retry_delay="0.05s")] * 3)
    client = server.genai_client(http_options=types.HttpOptions(retry_options=RETRIES))
    with pytest.raises(errors.ClientError) as raised:
        generate(client, is_async, model=MODEL, contents=PROMPT)
    assert raised.value.code == 429 and raised.value.details == server.responses[2].json
    assert len(server.requests) == 3
    [record] = calls()
    assert record.retries == 2 and record.error_type == "ClientError" and record.usage_source == "missing"
    [span] = instrumented.finished_spans()
    events = retry_events(span)
    assert [e["tokenmetry.retry.attempt"] for e in events] == [1, 2]
    slept = [e["tokenmetry.retry.slept_s"] for e in events]
    assert slept[0] > 0.05 and slept[1] > 0.1  # measured; wait_exponential plans 0.05 s then 0.1 s
    assert record.throttle_wait_s == sum(slept)
    assert span.attributes["error.type"] == "ClientError"


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_stream_retry_is_attributed_to_the_stream(server, instrumented, is_async):
    server.enqueue("gemini", Reply(status=429, retry_delay="0.1s"))
    client = server.genai_client(vertexai=True, http_options=types.HttpOptions(retry_options=RETRIES))
    chunks = stream(client, is_async, model=MODEL, contents=PROMPT)
    assert len(chunks) == len(server.responses[1].events)
    [record] = calls()
    assert record.stream and record.retries == 1 and record.throttle_wait_s > 0.05
    assert record.usage == expected_usage(server.responses[1].usage)
    [event] = retry_events(instrumented.finished_spans()[0])
    assert event["tokenmetry.retry.retry_after_s"] == 0.1
    assert event["tokenmetry.retry.slept_s"] == record.throttle_wait_s


def test_retries_outside_a_recorded_call_are_ignored(server, instrumented):
    """The SDK's other requests (files, caches, batches...) go through the same attempt method and
    retry loop: without a recorded call in scope the attempt hook does nothing."""
    server.enqueue("gemini", Reply(status=429))
    client = server.genai_client(http_options=types.HttpOptions(retry_options=RETRIES))
    body = {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]}
    response = client._api_client.request("post", f"models/{MODEL}:generateContent", body)
    assert json.loads(response.body) == server.responses[1].json and len(server.requests) == 2
    assert calls() == [] and instrumented.finished_spans() == [] and tokenmetry.stats().retries == 0


# ----------------------------------------------------------------------------- recorded real responses
def _gemini_index() -> list[dict[str, Any]]:
    return [entry for entry in json.loads((REAL / "INDEX.json").read_text()) if entry["vendor"] == "gemini"]


def _sse_documents(path: Path) -> list[dict[str, Any]]:
    documents = []
    for line in path.read_text().splitlines():
        if line.startswith("data:"):
            documents.append(json.loads(line[5:]))
    return documents


def _finish_names(documents: list[dict[str, Any]]) -> tuple[str, ...]:
    names = {1: "stop"}
    reasons = [c["finishReason"] for d in documents for c in d.get("candidates", []) if "finishReason" in c]
    return tuple(names[r] if isinstance(r, int) else r.lower() for r in reasons)


@pytest.mark.parametrize("entry", _gemini_index(), ids=lambda e: e["file"].split("/")[-1])
def test_real_recorded_responses_normalise(server, instrumented, entry):
    path = REAL / entry["file"]
    vertexai = "aiplatform" in entry["endpoint"]
    client = server.genai_client(vertexai=vertexai)
    server.replay("gemini", path)
    model = entry["request_model"]
    if entry["stream"]:
        documents = _sse_documents(path)
        assert documents[-1]["usageMetadata"] == entry["usage"]  # the index's usage is the last chunk's
        chunks = list(client.models.generate_content_stream(model=model, contents=PROMPT))
        assert len(chunks) == len(documents)
    else:
        documents = [json.loads(path.read_text())]
        enum_ints = isinstance(documents[0]["candidates"][0].get("finishReason"), int)
        if enum_ints:
            # the SDK cannot parse enum-encoding=int bodies: the user gets its own error, the call is
            # still accounted from the raw body the API billed
            with pytest.raises(AttributeError):
                client.models.generate_content(model=model, contents=PROMPT)
        else:
            client.models.generate_content(model=model, contents=PROMPT)
    [record] = calls()
    assert record.usage == expected_usage(entry["usage"])
    assert record.usage_source == "provider"
    assert record.provider == ("gcp.vertex_ai" if vertexai else "gcp.gemini")
    assert (record.request_model, record.response_model) == (model, entry["response_model"])
    assert record.response_id == documents[0]["responseId"]
    assert record.finish_reasons == _finish_names(documents)
    [span] = instrumented.finished_spans()
    usage = record.usage
    assert span.attributes["gen_ai.usage.input_tokens"] == usage.input_tokens
    assert span.attributes["gen_ai.usage.output_tokens"] == usage.output_tokens
    assert span.attributes.get("gen_ai.usage.reasoning.output_tokens") == usage.reasoning_tokens
    assert span.attributes.get("gen_ai.usage.cache_read.input_tokens") == usage.cache_read_tokens


# ----------------------------------------------------------------------------- wrap(), uninstrument()
def test_wrap_instruments_one_client_only(server, otel):
    tokenmetry.instrument(providers=[], **otel.kwargs())  # OpenTelemetry only: nothing patched
    wrapped = server.genai_client()
    assert tokenmetry.wrap(wrapped) is wrapped
    assert tokenmetry.wrap(wrapped) is wrapped  # twice: no double wrapping
    tokenmetry.wrap(wrapped.aio)  # shares the already wrapped parts
    other = server.genai_client()
    other.models.generate_content(model=MODEL, contents=PROMPT)
    assert calls() == []
    wrapped.models.generate_content(model=MODEL, contents=PROMPT)
    asyncio.run(wrapped.aio.models.generate_content(model=MODEL, contents=PROMPT))
    list(wrapped.chats.create(model=MODEL).send_message_stream("hi"))
    wrapped.models.count_tokens(model=MODEL, contents=PROMPT)
    records = calls()
    assert [(r.operation, r.stream) for r in records] == [
        ("generate_content", False), ("generate_content", False), ("generate_content", True),
        ("count_tokens", False)]
    assert [r.usage for r in records[:3]] == [expected_usage(s.usage) for s in server.responses[1:4]]
    assert len(otel.finished_spans()) == 4


def test_wrap_retries_async(server, otel):
    tokenmetry.instrument(providers=[], **otel.kwargs())
    client = tokenmetry.wrap(server.genai_client(http_options=types.HttpOptions(retry_options=RETRIES)))
    server.enqueue("gemini", Reply(status=503))
    asyncio.run(client.aio.models.generate_content(model=MODEL, contents=PROMPT))
    [record] = calls()
    assert record.retries == 1 and record.retry_wait_s > 0.05


def test_wrap_and_instrument_together_record_once(server, instrumented):
    client = tokenmetry.wrap(server.genai_client())
    client.models.generate_content(model=MODEL, contents=PROMPT)
    list(client.models.generate_content_stream(model=MODEL, contents=PROMPT))
    asyncio.run(client.aio.models.generate_content(model=MODEL, contents=PROMPT))
    assert len(calls()) == 3 == len(instrumented.finished_spans()) == len(server.requests)


def test_wrap_rejects_other_objects():
    with pytest.raises(tokenmetry.TokenmetryError):
        tokenmetry.wrap(object())


def test_instrument_twice_and_uninstrument_restore(server):
    from google.genai import _api_client, models

    originals = {name: models.Models.__dict__[name] for name in
                 ("_generate_content", "_generate_content_stream", "_embed_content", "count_tokens")}
    original_attempt = _api_client.BaseApiClient.__dict__["_request_once"]
    tokenmetry.instrument(providers="gemini")
    tokenmetry.instrument(providers="google-genai")
    client = server.genai_client()
    client.models.generate_content(model=MODEL, contents=PROMPT)
    assert len(calls()) == 1
    tokenmetry.uninstrument()
    for name, original in originals.items():
        assert models.Models.__dict__[name] is original
    assert _api_client.BaseApiClient.__dict__["_request_once"] is original_attempt
    client.models.generate_content(model=MODEL, contents=PROMPT)
    assert len(calls()) == 1


# ----------------------------------------------------------------------------- differential
def _scenario(server: LocalAPIServer) -> list[Any]:
    """The same scripted calls; returns everything the user could observe."""
    out: list[Any] = []

    def dump(value: Any) -> Any:
        data = value.model_dump(mode="json")
        headers = (data.get("sdk_http_response") or {}).get("headers") or {}
        headers.pop("date", None)
        data.pop("create_time", None)  # Vertex AI answers carry the time of day
        return data

    def attempt(fn: Any) -> None:
        try:
            out.append(fn())
        except Exception as error:  # the exception is part of what the user observes
            out.append(("raised", type(error), str(error), getattr(error, "code", None),
                        getattr(error, "details", None)))

    client = server.genai_client(http_options=types.HttpOptions(retry_options=RETRIES))
    vertex = server.genai_client(vertexai=True)
    attempt(lambda: dump(client.models.generate_content(model=MODEL, contents=PROMPT)))
    attempt(lambda: [dump(c) for c in client.models.generate_content_stream(model=MODEL, contents=PROMPT)])
    attempt(lambda: dump(vertex.models.count_tokens(model=MODEL, contents=PROMPT)))
    attempt(lambda: dump(client.models.embed_content(model="gemini-embedding-001", contents=["a b", "c"])))
    server.enqueue("gemini", Reply(status=400))
    attempt(lambda: dump(client.models.generate_content(model=MODEL, contents=PROMPT)))
    server.enqueue("gemini", Reply(status=429, retry_delay="0.05s"))
    attempt(lambda: dump(client.models.generate_content(model=MODEL, contents=PROMPT)))
    server.enqueue("gemini", *[Reply(status=503)] * 3)
    attempt(lambda: dump(client.models.generate_content(model=MODEL, contents=PROMPT)))
    server.replay("gemini", REAL / "gemini/generate-content-vertex-gemini-2.5-pro-enum-int.json")
    attempt(lambda: dump(vertex.models.generate_content(model="gemini-2.5-pro", contents=PROMPT)))
    chat = client.chats.create(model=MODEL)
    attempt(lambda: dump(chat.send_message("one")))
    attempt(lambda: [dump(c) for c in chat.send_message_stream("two")])
    attempt(lambda: [dump(m) for m in chat.get_history()])

    async def asynchronous() -> list[Any]:
        results = [dump(await client.aio.models.generate_content(model=MODEL, contents=PROMPT))]
        results.append([dump(c) async for c in await vertex.aio.models.generate_content_stream(
            model=MODEL, contents=PROMPT)])
        return results

    attempt(lambda: asyncio.run(asynchronous()))
    return out


def test_differential_results_are_unchanged(otel):
    with LocalAPIServer() as plain_server:
        plain = _scenario(plain_server)
    assert calls() == []
    tokenmetry.instrument(providers=["google_genai"], **otel.kwargs())
    with LocalAPIServer() as instrumented_server:
        observed = _scenario(instrumented_server)
        requests = len(instrumented_server.requests)
    assert observed == plain
    assert [o[0] for o in observed if isinstance(o, tuple)] == ["raised"] * 3
    # one record per API call: every request but the retried attempts (1 + 2 of them)
    assert len(calls()) == requests - 3 == len(otel.finished_spans())


# ----------------------------------------------------------------------------- content capture
def test_content_is_not_on_spans_unless_asked_for(server, instrumented):
    client = server.genai_client()
    client.models.generate_content(model=MODEL, contents=PROMPT)
    for _ in client.models.generate_content_stream(model=MODEL, contents=PROMPT):
        pass
    spans = instrumented.finished_spans()
    assert len(spans) == 2
    assert not [key for span in spans for key in span.attributes if key.startswith("gen_ai.") and
                key.endswith(".messages")]


@pytest.mark.parametrize("stream_usage", ["every", "last"])
def test_captured_content_of_a_stream_is_the_whole_text(server, otel, stream_usage):
    """With SPAN_ONLY, a streamed answer's text is on its span whole, whether or not its chunks carry
    usage (tokenmetry keeps a stream's text for estimates only while no usage has come)."""
    tokenmetry.instrument(providers=["google_genai"], capture_content="SPAN_ONLY", **otel.kwargs())
    server.enqueue("gemini", Reply(stream_usage=stream_usage))
    client = server.genai_client()
    delivered = "".join(chunk.text or "" for chunk in client.models.generate_content_stream(
        model=MODEL, contents=PROMPT))
    [span] = otel.finished_spans()
    output = json.loads(span.attributes["gen_ai.output.messages"])
    assert output == [{"role": "assistant", "parts": [{"type": "text", "content": delivered}]}]
    assert PROMPT in span.attributes["gen_ai.input.messages"]
