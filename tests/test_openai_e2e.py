"""End to end: the real ``openai`` clients (sync, async, Azure, compatible hosts) over real HTTP to the
local server, every surface in its plain, ``with_raw_response`` and ``with_streaming_response`` forms.

Every assertion compares with what the server sent: the CallRecord's every field, the span's every
attribute and every metric data point. The truth helpers at the top (``usage_of``, ``truth_of``,
``expected_span_attributes``, ``check_metrics``) are shared with the other OpenAI test modules.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx2
import openai
import pytest
from _checks import AttributeKey, attribute_key, check_histograms, points_by_attributes, tokenmetry_spans
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import BaseModel

import tokenmetry
from tokenmetry.providers.openai import provider_for_host
from tokenmetry.telemetry import DURATION_BUCKETS, TOKEN_BUCKETS
from tokenmetry.testing import LocalAPIServer, Reply
from tokenmetry.usage import CallRecord, Cost, Usage

CHAT_MODEL = "gpt-4o-mini"
COMPLETION_MODEL = "gpt-3.5-turbo-instruct"
EMBEDDING_MODEL = "text-embedding-3-small"
MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is the capital of France today?"}]
PROMPT = "Write one line about the sea"

# scripted usage details per API shape (the server recomputes output/total around them)
CHAT_DETAILS = {"prompt_tokens_details": {"cached_tokens": 6, "cache_write_tokens": 2},
                "completion_tokens_details": {"reasoning_tokens": 5}}
RESPONSES_DETAILS = {"input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 1},
                     "output_tokens_details": {"reasoning_tokens": 3}}


class City(BaseModel):
    name: str
    population: int


# ================================================================================ shared truth helpers
def _detail(details: Any, key: str) -> int | None:
    return None if not isinstance(details, dict) else details.get(key)


def usage_of(raw: dict[str, Any], api: str) -> Usage:
    """SPEC §3: the Usage an OpenAI usage object normalises to (``api``: chat, completions,
    responses or embeddings). A detail the object omits is None."""
    if api == "responses":
        inp, out = raw.get("input_tokens_details"), raw.get("output_tokens_details")
        return Usage(raw["input_tokens"], raw["output_tokens"], _detail(inp, "cached_tokens"),
                     _detail(inp, "cache_write_tokens"), _detail(out, "reasoning_tokens"), None)
    if api == "embeddings":
        return Usage(raw["prompt_tokens"], 0)
    prompt, completion = raw.get("prompt_tokens_details"), raw.get("completion_tokens_details")
    return Usage(raw["prompt_tokens"], raw["completion_tokens"], _detail(prompt, "cached_tokens"),
                 _detail(prompt, "cache_write_tokens"), _detail(completion, "reasoning_tokens"), None)


@dataclass(frozen=True)
class Truth:
    """What the server sent for one call, in CallRecord terms."""

    usage: Usage
    response_id: str | None
    response_model: str | None
    finish_reasons: tuple[str, ...]


def finish_reasons_of(sent: Any, api: str) -> tuple[str, ...]:
    if api == "embeddings":
        return ()
    if api == "responses":
        final = sent.json if not sent.stream else next(
            e.data["response"] for e in reversed(sent.events)
            if isinstance(e.data, dict) and e.data.get("type") in ("response.completed", "response.incomplete"))
        details = final.get("incomplete_details") or {}
        return (details.get("reason") or final["status"],)
    if not sent.stream:
        return tuple(c["finish_reason"] for c in sent.json["choices"] if c["finish_reason"])
    return tuple(c["finish_reason"] for e in sent.events if isinstance(e.data, dict)
                 for c in e.data.get("choices", []) if c.get("finish_reason"))


def truth_of(sent: Any, api: str) -> Truth:
    """The truth of one server response (``server.responses[i]``)."""
    assert sent is not None and sent.usage is not None, "the server sent no usage for this call"
    return Truth(usage_of(sent.usage, api), sent.response_id if api != "embeddings" else None, sent.model,
                 finish_reasons_of(sent, api))


def expected_cost(provider: str, usage: Usage, *models: str | None) -> Cost | None:
    """The cost tokenmetry's price table gives (response model first, then request model)."""
    for model in models:
        if model:
            cost = tokenmetry.price(model, usage, provider=provider)
            if cost is not None:
                return cost
    return None


def check_record(record: CallRecord, truth: Truth, *, operation: str, request_model: str | None, stream: bool,
                 session_id: str, provider: str = "openai", server_address: str = "127.0.0.1") -> None:
    """Every field of a successful call's record against the server's truth."""
    assert record.provider == provider
    assert record.operation == operation
    assert record.request_model == request_model
    assert record.response_model == truth.response_model
    assert record.response_id == truth.response_id
    assert record.usage == truth.usage
    assert record.usage.total_tokens == truth.usage.input_tokens + truth.usage.output_tokens
    assert record.usage_source == "provider"
    assert record.cost == expected_cost(provider, truth.usage, truth.response_model, request_model)
    assert record.stream is stream
    assert record.finish_reasons == truth.finish_reasons
    assert record.session_id == session_id
    assert record.server_address == server_address
    assert record.retries == 0
    assert record.throttle_wait_s == 0.0
    assert record.retry_wait_s == 0.0
    assert record.error_type is None
    assert record.turn is None
    assert record.duration_s > 0
    if stream:
        assert record.time_to_first_chunk_s is not None
        assert 0 < record.time_to_first_chunk_s <= record.duration_s
    else:
        assert record.time_to_first_chunk_s is None


def expected_span_attributes(record: CallRecord, *, port: int | None, usage_reported: bool = True) -> dict[str, Any]:
    """Every attribute the call's span must carry, derived from an already-verified record."""
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": record.operation,
        "gen_ai.provider.name": record.provider,
        "gen_ai.request.stream": record.stream,
        "gen_ai.conversation.id": record.session_id,
        "tokenmetry.usage.source": record.usage_source,
        "tokenmetry.retries": record.retries,
        "tokenmetry.throttle_wait_s": record.throttle_wait_s,
    }
    if record.server_address:
        attributes["server.address"] = record.server_address
        if port:
            attributes["server.port"] = port
    if record.request_model:
        attributes["gen_ai.request.model"] = record.request_model
    if record.response_model:
        attributes["gen_ai.response.model"] = record.response_model
    if record.response_id:
        attributes["gen_ai.response.id"] = record.response_id
    if record.finish_reasons:
        attributes["gen_ai.response.finish_reasons"] = record.finish_reasons
    if usage_reported:
        attributes["gen_ai.usage.input_tokens"] = record.usage.input_tokens
        attributes["gen_ai.usage.output_tokens"] = record.usage.output_tokens
    for name, value in (("gen_ai.usage.cache_read.input_tokens", record.usage.cache_read_tokens),
                        ("gen_ai.usage.cache_write.input_tokens", record.usage.cache_write_tokens),
                        ("gen_ai.usage.reasoning.output_tokens", record.usage.reasoning_tokens),
                        ("tokenmetry.usage.tool_tokens", record.usage.tool_tokens)):
        if value is not None:
            attributes[name] = value
    if record.retry_wait_s:
        attributes["tokenmetry.retry_wait_s"] = record.retry_wait_s
    if record.time_to_first_chunk_s is not None:
        attributes["tokenmetry.time_to_first_chunk_s"] = record.time_to_first_chunk_s
    if record.cost is not None:
        attributes["tokenmetry.cost.amount"] = float(record.cost.amount)
        attributes["tokenmetry.cost.currency"] = record.cost.currency
    if record.error_type is not None:
        attributes["error.type"] = record.error_type
    return attributes


def check_span(span: Any, record: CallRecord, *, port: int | None, usage_reported: bool = True) -> None:
    name = f"{record.operation} {record.request_model}" if record.request_model else record.operation
    assert span.name == name
    assert span.kind is SpanKind.CLIENT
    assert dict(span.attributes) == expected_span_attributes(record, port=port, usage_reported=usage_reported)
    if record.error_type is None:
        assert span.status.status_code is StatusCode.UNSET
    else:
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == record.error_type
    assert span.end_time is not None


def metric_attributes(record: CallRecord, port: int | None) -> dict[str, Any]:
    """The attributes of a call's metric points (no session id: cardinality)."""
    attributes: dict[str, Any] = {"gen_ai.operation.name": record.operation,
                                  "gen_ai.provider.name": record.provider}
    if record.request_model:
        attributes["gen_ai.request.model"] = record.request_model
    if record.response_model:
        attributes["gen_ai.response.model"] = record.response_model
    if record.server_address:
        attributes["server.address"] = record.server_address
        if port:
            attributes["server.port"] = port
    return attributes


def check_metrics(otel: Any, records: list[CallRecord], port: int | None) -> None:
    """Every data point of the GenAI and tokenmetry instruments against the (verified) records."""
    expected_tokens: dict[AttributeKey, list[int]] = {}
    expected_duration: dict[AttributeKey, list[float]] = {}
    expected_ttfc: dict[AttributeKey, list[float]] = {}
    expected_kinds: dict[AttributeKey, int] = {}
    expected_cost: dict[AttributeKey, float] = {}
    for record in records:
        base = metric_attributes(record, port)
        duration_attrs = dict(base)
        if record.error_type is not None:
            duration_attrs["error.type"] = record.error_type
        expected_duration.setdefault(attribute_key(duration_attrs), []).append(record.duration_s)
        if record.usage_source != "missing":
            expected_tokens.setdefault(attribute_key({**base, "gen_ai.token.type": "input"}), []).append(
                record.usage.input_tokens)
            expected_tokens.setdefault(attribute_key({**base, "gen_ai.token.type": "output"}), []).append(
                record.usage.output_tokens)
        if record.stream and record.time_to_first_chunk_s is not None:
            expected_ttfc.setdefault(attribute_key(duration_attrs), []).append(record.time_to_first_chunk_s)
        for kind, value in (("cache_read", record.usage.cache_read_tokens),
                            ("cache_write", record.usage.cache_write_tokens),
                            ("reasoning", record.usage.reasoning_tokens), ("tool", record.usage.tool_tokens)):
            if value:
                key = attribute_key({**duration_attrs, "tokenmetry.token.kind": kind})
                expected_kinds[key] = expected_kinds.get(key, 0) + value
        if record.cost is not None:
            key = attribute_key({**duration_attrs, "tokenmetry.cost.currency": record.cost.currency})
            expected_cost[key] = expected_cost.get(key, 0.0) + float(record.cost.amount)

    check_histograms(otel, "gen_ai.client.token.usage", expected_tokens, TOKEN_BUCKETS)
    check_histograms(otel, "gen_ai.client.operation.duration", expected_duration, DURATION_BUCKETS)
    check_histograms(otel, "gen_ai.client.operation.time_to_first_chunk", expected_ttfc, DURATION_BUCKETS)
    kinds = points_by_attributes(otel, "tokenmetry.tokens")
    assert {k: p.value for k, p in kinds.items()} == expected_kinds
    costs = points_by_attributes(otel, "tokenmetry.cost")
    assert set(costs) == set(expected_cost)
    for key, amount in expected_cost.items():
        assert costs[key].value == pytest.approx(amount, rel=1e-12)


def no_instrumentation_failures(caplog: pytest.LogCaptureFixture) -> None:
    """tokenmetry logs its own failures at WARNING ('instrumentation step', 'could not ...')."""
    bad = [r.getMessage() for r in caplog.records
           if r.name == "tokenmetry" and r.levelno >= logging.WARNING
           and ("instrumentation step" in r.getMessage() or "could not" in r.getMessage())]
    assert bad == []


# one TLS context for every client: the SDK builds a new one per client otherwise (~0.1 s each)
_TLS = ssl.create_default_context()


def openai_client(server: LocalAPIServer, *, async_: bool = False, azure: bool = False, **kwargs: Any) -> Any:
    """A real ``OpenAI`` / ``AsyncOpenAI`` (or Azure) client on the SDK's own default HTTP client."""
    http_client = openai.DefaultAsyncHttpxClient(verify=_TLS) if async_ else openai.DefaultHttpxClient(verify=_TLS)
    factory = server.azure_openai_client if azure else server.openai_client
    return factory(async_=async_, http_client=http_client, **kwargs)


# ================================================================================ fixtures
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


# ================================================================================ the surfaces
@dataclass(frozen=True)
class Surface:
    """One SDK method: where it lives, its arguments, what it reports."""

    name: str
    resource: str  # attribute path on the client
    method: str
    api: str  # usage shape: chat | completions | responses | embeddings
    operation: str
    model: str | None  # request model as tokenmetry sees it
    kwargs: dict[str, Any]
    stream: bool = False
    script: dict[str, Any] | None = None  # Reply(usage=...) for the call
    needs_stored_response: bool = False  # retrieve: a response is created first (uninstrumented)
    forms: tuple[str, ...] = ("direct", "raw", "streaming")
    setup_script: dict[str, Any] | None = None  # usage of the stored response a retrieve reads


SURFACES = [
    Surface("chat.create", "chat.completions", "create", "chat", "chat", CHAT_MODEL,
            {"model": CHAT_MODEL, "messages": MESSAGES}, script=CHAT_DETAILS),
    Surface("chat.create-stream", "chat.completions", "create", "chat", "chat", CHAT_MODEL,
            {"model": CHAT_MODEL, "messages": MESSAGES, "stream": True}, stream=True, script=CHAT_DETAILS),
    Surface("chat.parse", "chat.completions", "parse", "chat", "chat", CHAT_MODEL,
            {"model": CHAT_MODEL, "messages": MESSAGES, "response_format": City}, script=CHAT_DETAILS),
    Surface("responses.create", "responses", "create", "responses", "chat", CHAT_MODEL,
            {"model": CHAT_MODEL, "input": PROMPT, "instructions": "Be brief."}, script=RESPONSES_DETAILS),
    Surface("responses.create-stream", "responses", "create", "responses", "chat", CHAT_MODEL,
            {"model": CHAT_MODEL, "input": PROMPT, "stream": True}, stream=True, script=RESPONSES_DETAILS),
    Surface("responses.parse", "responses", "parse", "responses", "chat", CHAT_MODEL,
            {"model": CHAT_MODEL, "input": PROMPT, "text_format": City}, script=RESPONSES_DETAILS,
            forms=("direct", "raw")),  # the SDK has no responses.with_streaming_response.parse
    Surface("responses.retrieve", "responses", "retrieve", "responses", "chat", None, {},
            needs_stored_response=True, setup_script=RESPONSES_DETAILS),
    Surface("responses.retrieve-stream", "responses", "retrieve", "responses", "chat", None, {"stream": True},
            stream=True, needs_stored_response=True, setup_script=RESPONSES_DETAILS),
    Surface("completions.create", "completions", "create", "completions", "text_completion", COMPLETION_MODEL,
            {"model": COMPLETION_MODEL, "prompt": PROMPT}),
    Surface("completions.create-stream", "completions", "create", "completions", "text_completion",
            COMPLETION_MODEL, {"model": COMPLETION_MODEL, "prompt": PROMPT, "stream": True}, stream=True),
    Surface("embeddings.create", "embeddings", "create", "embeddings", "embeddings", EMBEDDING_MODEL,
            {"model": EMBEDDING_MODEL, "input": ["the sea is wide", "and deep and blue"], "encoding_format": "float"}),
]
CASES = [pytest.param(s, form, id=f"{s.name}-{form}") for s in SURFACES for form in s.forms]


def _resource(client: Any, path: str) -> Any:
    for part in path.split("."):
        client = getattr(client, part)
    return client


def _prepare(server: LocalAPIServer, surface: Surface) -> dict[str, Any]:
    """Create the stored response a retrieve needs (uninstrumented) and queue the call's script."""
    kwargs = dict(surface.kwargs)
    if surface.needs_stored_response:
        with openai_client(server) as plain:
            server.enqueue("openai.responses", Reply(usage=surface.setup_script))
            kwargs["response_id"] = plain.responses.create(model=CHAT_MODEL, input=PROMPT).id
        server.clear()
    if surface.script is not None:
        key = {"chat": "openai.chat", "responses": "openai.responses",
               "completions": "openai.completions", "embeddings": "openai.embeddings"}[surface.api]
        server.enqueue(key, Reply(usage=surface.script))
    return kwargs


def run_sync(client: Any, surface: Surface, form: str, kwargs: dict[str, Any]) -> Any:
    resource = _resource(client, surface.resource)
    if form == "direct":
        result = getattr(resource, surface.method)(**kwargs)
    elif form == "raw":
        raw = getattr(resource.with_raw_response, surface.method)(**kwargs)
        assert raw.http_request.url.host == "127.0.0.1"
        result = raw.parse()
    else:
        with getattr(resource.with_streaming_response, surface.method)(**kwargs) as response:
            result = response.parse()
            if surface.stream:
                return list(result)
        return result
    return list(result) if surface.stream else result


async def run_async(client: Any, surface: Surface, form: str, kwargs: dict[str, Any]) -> Any:
    resource = _resource(client, surface.resource)
    if form == "direct":
        result = await getattr(resource, surface.method)(**kwargs)
    elif form == "raw":
        raw = await getattr(resource.with_raw_response, surface.method)(**kwargs)
        result = raw.parse()  # the legacy raw response parses synchronously, also on the async client
    else:
        async with getattr(resource.with_streaming_response, surface.method)(**kwargs) as response:
            result = await response.parse()
            if surface.stream:
                return [chunk async for chunk in result]
        return result
    return [chunk async for chunk in result] if surface.stream else result


def _asks_for_usage(surface: Surface, form: str, kwargs: dict[str, Any]) -> bool:
    """with_streaming_response gets no injected usage request (its user may read raw lines, where
    an added chunk could not be withheld): like any user wanting exact usage, this one asks."""
    if form == "streaming" and surface.stream and surface.api in ("chat", "completions"):
        kwargs["stream_options"] = {"include_usage": True}
        return True
    return False


def _check_result(result: Any, surface: Surface, server: LocalAPIServer, user_asked: bool = False) -> None:
    """The user got the server's answer (not a stand-in)."""
    sent = server.last_response
    assert sent is not None
    if surface.stream:
        assert isinstance(result, list) and result
        if user_asked:  # the usage chunk the user asked for is theirs, and it comes last
            assert not result[-1].choices and result[-1].usage is not None
            result = result[:-1]
        if surface.api == "chat":  # the usage chunk tokenmetry asked for never reaches the user
            assert all(chunk.choices for chunk in result)
            assert "".join(c.choices[0].delta.content or "" for c in result) == sent.text
        elif surface.api == "completions":
            assert all(chunk.choices for chunk in result)
            assert "".join(c.choices[0].text for c in result) == sent.text
        else:
            assert result[-1].type == "response.completed"
            assert result[-1].response.usage.input_tokens == sent.usage["input_tokens"]
    elif surface.api == "embeddings":
        assert result.usage.prompt_tokens == sent.usage["prompt_tokens"]
        assert len(result.data) == 2
    elif surface.method == "parse" and surface.api == "chat":
        assert result.choices[0].message.parsed == City(name="example", population=1)
    elif surface.method == "parse":
        assert result.output_parsed == City(name="example", population=1)
    else:
        assert result.id == sent.response_id


def _check_call(server: LocalAPIServer, otel: Any, records: list[CallRecord], surface: Surface, session: Any,
                caplog: pytest.LogCaptureFixture) -> None:
    assert len(server.requests) == 1
    request = server.last_request
    assert request.stream is surface.stream
    if surface.stream and surface.api in ("chat", "completions"):
        assert request.json["stream_options"] == {"include_usage": True}
    truth = truth_of(server.last_response, surface.api)
    if surface.script is not None or surface.setup_script is not None:
        # the scripted details really went out (the test would be vacuous otherwise)
        assert truth.usage.reasoning_tokens and truth.usage.cache_read_tokens and truth.usage.cache_write_tokens
    assert len(records) == 1
    record = records[0]
    check_record(record, truth, operation=surface.operation, request_model=surface.model, stream=surface.stream,
                 session_id=session.id)
    assert session.calls == [record]
    assert session.usage == truth.usage
    spans = otel.finished_spans()
    assert len(spans) == 1
    check_span(spans[0], record, port=server.port)
    check_metrics(otel, records, server.port)
    no_instrumentation_failures(caplog)


@pytest.mark.parametrize(("surface", "form"), CASES)
def test_sync_surface(server: LocalAPIServer, otel: Any, records: list[CallRecord], surface: Surface, form: str,
                      caplog: pytest.LogCaptureFixture) -> None:
    kwargs = _prepare(server, surface)
    user_asked = _asks_for_usage(surface, form, kwargs)
    tokenmetry.instrument(**otel.kwargs())
    with openai_client(server) as client, tokenmetry.session(f"sync-{surface.name}-{form}") as session:
        result = run_sync(client, surface, form, kwargs)
    _check_result(result, surface, server, user_asked)
    _check_call(server, otel, records, surface, session, caplog)


@pytest.mark.parametrize(("surface", "form"), CASES)
async def test_async_surface(server: LocalAPIServer, otel: Any, records: list[CallRecord], surface: Surface,
                             form: str, caplog: pytest.LogCaptureFixture) -> None:
    kwargs = _prepare(server, surface)
    user_asked = _asks_for_usage(surface, form, kwargs)
    tokenmetry.instrument(**otel.kwargs())
    async with openai_client(server, async_=True) as client:
        async with tokenmetry.session(f"async-{surface.name}-{form}") as session:
            result = await run_async(client, surface, form, kwargs)
    _check_result(result, surface, server, user_asked)
    _check_call(server, otel, records, surface, session, caplog)


# ================================================================================ the stream helpers
CHAT_STREAM_HELPER = Surface("chat.completions.stream", "", "", "chat", "chat", CHAT_MODEL, {}, stream=True,
                             script=CHAT_DETAILS)
RESPONSES_STREAM_HELPER = Surface("responses.stream", "", "", "responses", "chat", CHAT_MODEL, {}, stream=True,
                                  script=RESPONSES_DETAILS)

def test_chat_stream_helper(server: LocalAPIServer, otel: Any, records: list[CallRecord],
                            caplog: pytest.LogCaptureFixture) -> None:
    tokenmetry.instrument(**otel.kwargs())
    server.enqueue("openai.chat", Reply(usage=CHAT_DETAILS))
    with openai_client(server) as client, tokenmetry.session("helper") as session:
        with client.chat.completions.stream(model=CHAT_MODEL, messages=MESSAGES) as stream:
            assert isinstance(stream, openai.lib.streaming.chat.ChatCompletionStream)
            deltas = [event.delta for event in stream if event.type == "content.delta"]
            final = stream.get_final_completion()
    sent = server.last_response
    assert "".join(deltas) == sent.text
    assert final.choices[0].message.content == sent.text
    assert final.usage is None  # as without tokenmetry: the user did not ask for usage
    assert server.last_request.json["stream_options"] == {"include_usage": True}
    _check_call(server, otel, records, CHAT_STREAM_HELPER, session, caplog)


async def test_async_chat_stream_helper(server: LocalAPIServer, otel: Any, records: list[CallRecord],
                                        caplog: pytest.LogCaptureFixture) -> None:
    tokenmetry.instrument(**otel.kwargs())
    server.enqueue("openai.chat", Reply(usage=CHAT_DETAILS))
    async with openai_client(server, async_=True) as client, tokenmetry.session("ahelper") as session:
        async with client.chat.completions.stream(model=CHAT_MODEL, messages=MESSAGES) as stream:
            deltas = [event.delta async for event in stream if event.type == "content.delta"]
            final = await stream.get_final_completion()
    sent = server.last_response
    assert "".join(deltas) == sent.text
    assert final.choices[0].message.content == sent.text
    _check_call(server, otel, records, CHAT_STREAM_HELPER, session, caplog)


def test_chat_stream_helper_with_user_usage(server: LocalAPIServer, otel: Any, records: list[CallRecord],
                                            caplog: pytest.LogCaptureFixture) -> None:
    tokenmetry.instrument(**otel.kwargs())
    server.enqueue("openai.chat", Reply(usage=CHAT_DETAILS))
    with openai_client(server) as client, tokenmetry.session("helper-usage") as session:
        with client.chat.completions.stream(model=CHAT_MODEL, messages=MESSAGES,
                                            stream_options={"include_usage": True}) as stream:
            for _ in stream:
                pass
            final = stream.get_final_completion()
    assert final.usage.prompt_tokens == server.last_response.usage["prompt_tokens"]
    assert final.usage.completion_tokens_details.reasoning_tokens == 5
    _check_call(server, otel, records, CHAT_STREAM_HELPER, session, caplog)


def test_responses_stream_helper(server: LocalAPIServer, otel: Any, records: list[CallRecord],
                                 caplog: pytest.LogCaptureFixture) -> None:
    tokenmetry.instrument(**otel.kwargs())
    server.enqueue("openai.responses", Reply(usage=RESPONSES_DETAILS))
    with openai_client(server) as client, tokenmetry.session("rhelper") as session:
        with client.responses.stream(model=CHAT_MODEL, input=PROMPT, text_format=City) as stream:
            events = list(stream)
            final = stream.get_final_response()
    assert events[-1].type == "response.completed"
    assert final.output_parsed == City(name="example", population=1)
    assert final.usage.output_tokens_details.reasoning_tokens == 3
    _check_call(server, otel, records, RESPONSES_STREAM_HELPER, session, caplog)


async def test_async_responses_stream_helper(server: LocalAPIServer, otel: Any, records: list[CallRecord],
                                             caplog: pytest.LogCaptureFixture) -> None:
    tokenmetry.instrument(**otel.kwargs())
    server.enqueue("openai.responses", Reply(usage=RESPONSES_DETAILS))
    async with openai_client(server, async_=True) as client, tokenmetry.session("arhelper") as session:
        async with client.responses.stream(model=CHAT_MODEL, input=PROMPT) as stream:
            events = [event async for event in stream]
            final = await stream.get_final_response()
    assert events[-1].type == "response.completed"
    assert final.id == server.last_response.response_id
    _check_call(server, otel, records, RESPONSES_STREAM_HELPER, session, caplog)


# ================================================================================ details and finish reasons
def test_omitted_details_are_none_not_zero(server: LocalAPIServer, records: list[CallRecord]) -> None:
    tokenmetry.instrument()
    # a chat usage object without any *_details (as some compatible vendors send)
    body = {"id": "chatcmpl-nodetails", "object": "chat.completion", "created": 1, "model": "llama-3",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi."}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}}
    server.enqueue("openai.chat", Reply(body=body))
    with openai_client(server) as client:
        client.chat.completions.create(model="llama-3", messages=MESSAGES)
    assert records[0].usage == Usage(12, 3, None, None, None, None)
    assert records[0].usage.to_dict() == {"input_tokens": 12, "output_tokens": 3, "cache_read_tokens": None,
                                          "cache_write_tokens": None, "reasoning_tokens": None,
                                          "tool_tokens": None, "total_tokens": 15}


def test_length_finish_reason_and_incomplete_response(server: LocalAPIServer, otel: Any,
                                                     records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    with openai_client(server) as client:
        client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_completion_tokens=3)
        chat_sent = server.last_response
        client.responses.create(model=CHAT_MODEL, input=PROMPT, max_output_tokens=2)
        responses_sent = server.last_response
    assert records[0].finish_reasons == ("length",) == finish_reasons_of(chat_sent, "chat")
    assert records[0].usage.output_tokens == 3 == chat_sent.usage["completion_tokens"]
    assert records[1].finish_reasons == ("max_output_tokens",) == finish_reasons_of(responses_sent, "responses")
    assert records[1].usage == usage_of(responses_sent.usage, "responses")
    spans = otel.finished_spans()
    assert [s.attributes["gen_ai.response.finish_reasons"] for s in spans] == [("length",), ("max_output_tokens",)]


def test_response_model_differs_from_request_model(server: LocalAPIServer, otel: Any,
                                                   records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    server.response_models["gpt-4o"] = "gpt-4o-2024-11-20"
    with openai_client(server) as client:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    record = records[0]
    assert (record.request_model, record.response_model) == ("gpt-4o", "gpt-4o-2024-11-20")
    # priced by the dated id, never a silent $0
    assert record.cost == expected_cost("openai", record.usage, "gpt-4o-2024-11-20")
    assert record.cost is not None and record.cost.amount > 0
    span = otel.finished_spans()[0]
    assert span.name == "chat gpt-4o"
    assert span.attributes["gen_ai.response.model"] == "gpt-4o-2024-11-20"


@pytest.mark.parametrize("tier", ["flex", "priority"])
def test_service_tier_prices_the_call(server: LocalAPIServer, otel: Any, records: list[CallRecord],
                                      tier: str) -> None:
    """A call served at the flex or priority tier is billed at that tier's prices (genai-prices'
    service_tier variants), plain, streamed and through the Responses API; the default tier at list
    price. The tier is the one the response reports."""
    tokenmetry.instrument(**otel.kwargs())
    with openai_client(server) as client, tokenmetry.session("tiers") as session:
        client.chat.completions.create(model="o3", messages=MESSAGES, service_tier=tier)
        list(client.chat.completions.create(model="o3", messages=MESSAGES, service_tier=tier, stream=True))
        client.responses.create(model="o3", input="hello", service_tier=tier)
        client.chat.completions.create(model="o3", messages=MESSAGES)  # served at the default tier
    assert [r.model for r in server.responses] == ["o3"] * 4
    costs = []
    for record, context in zip(records, [{"service_tier": tier}] * 3 + [None], strict=True):
        cost = tokenmetry.price("o3", record.usage, provider="openai", price_context=context)
        list_price = tokenmetry.price("o3", record.usage, provider="openai")
        assert cost is not None and list_price is not None
        assert record.cost == cost
        if context is not None:
            assert cost.amount != list_price.amount  # the tier really is priced differently
        costs.append(cost)
    assert session.cost == sum(costs)  # type: ignore[arg-type]
    spans = otel.finished_spans()
    assert [span.attributes["tokenmetry.cost.amount"] for span in spans] == [float(c.amount) for c in costs]


def test_no_usage_in_response_is_estimated(server: LocalAPIServer, otel: Any, records: list[CallRecord]) -> None:
    from tokenmetry.counting import estimate_tokens, preload

    preload(["o200k_base"], background=False)
    tokenmetry.instrument(**otel.kwargs())
    server.enqueue("openai.chat", Reply(omit_usage=True))
    with openai_client(server) as client:
        client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
    sent = server.last_response
    assert sent.usage is None
    record = records[0]
    assert record.usage_source == "estimated"
    prompt = "\n".join(m["content"] for m in MESSAGES)
    assert record.usage == Usage(estimate_tokens(CHAT_MODEL, prompt), estimate_tokens(CHAT_MODEL, sent.text))
    check_span(otel.finished_spans()[0], record, port=server.port)


# ================================================================================ Azure and compatible hosts
AZURE_CASES = [
    ("chat", "openai.chat", lambda c: c.chat.completions.create(model="my-gpt-deployment", messages=MESSAGES)),
    ("chat-stream", "openai.chat", lambda c: list(c.chat.completions.create(
        model="my-gpt-deployment", messages=MESSAGES, stream=True))),
    ("responses", "openai.responses", lambda c: c.responses.create(model="my-gpt-deployment", input=PROMPT)),
    ("embeddings", "openai.embeddings", lambda c: c.embeddings.create(
        model="my-embedding-deployment", input="a b c", encoding_format="float")),
]


@pytest.mark.parametrize(("name", "kind", "call"), AZURE_CASES, ids=[c[0] for c in AZURE_CASES])
def test_azure_openai(server: LocalAPIServer, otel: Any, records: list[CallRecord], name: str, kind: str,
                      call: Callable[[Any], Any], caplog: pytest.LogCaptureFixture) -> None:
    tokenmetry.instrument(**otel.kwargs())
    with openai_client(server, azure=True) as client, tokenmetry.session("azure") as session:
        assert isinstance(client, openai.AzureOpenAI)
        call(client)
    request = server.last_request
    assert request.kind == kind and request.backend == "azure"
    api = {"openai.chat": "chat", "openai.responses": "responses", "openai.embeddings": "embeddings"}[kind]
    truth = truth_of(server.last_response, api)
    record = records[0]
    stream = name.endswith("stream")
    check_record(record, truth, operation="embeddings" if api == "embeddings" else "chat",
                 request_model=request.json["model"], stream=stream, session_id=session.id,
                 provider="azure.ai.openai")
    check_span(otel.finished_spans()[0], record, port=server.port)
    check_metrics(otel, records, server.port)


async def test_async_azure_openai(server: LocalAPIServer, otel: Any, records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    async with openai_client(server, async_=True, azure=True) as client:
        stream = await client.chat.completions.create(model="dep", messages=MESSAGES, stream=True)
        chunks = [chunk async for chunk in stream]
    assert all(chunk.choices for chunk in chunks)
    truth = truth_of(server.last_response, "chat")
    check_record(records[0], truth, operation="chat", request_model="dep", stream=True, session_id="default",
                 provider="azure.ai.openai")
    check_span(otel.finished_spans()[0], records[0], port=server.port)


@pytest.mark.parametrize(("host", "provider"), [
    ("api.openai.com", "openai"),
    ("my-resource.openai.azure.com", "azure.ai.openai"),
    ("my-resource.cognitiveservices.azure.com", "azure.ai.openai"),
    ("my-project.services.ai.azure.com", "azure.ai.openai"),
    ("api.deepseek.com", "deepseek"),
    ("api.groq.com", "groq"),
    ("openrouter.ai", "openrouter"),
    ("api.mistral.ai", "mistral_ai"),
    ("api.x.ai", "x_ai"),
    ("api.together.xyz", "together_ai"),
    ("api.together.ai", "together_ai"),
    ("api.fireworks.ai", "fireworks"),
    ("api.perplexity.ai", "perplexity"),
    ("API.GROQ.COM", "groq"),
    ("localhost", "openai"),
    ("127.0.0.1", "openai"),
    ("my-vllm.internal", "openai"),
    ("notopenrouter.ai", "openai"),  # suffix match on a label boundary only
    ("openai.azure.com.evil.example", "openai"),
])
def test_provider_for_host(host: str, provider: str) -> None:
    assert provider_for_host(host) == provider


@pytest.mark.parametrize(("base_url", "provider", "address", "port"), [
    ("http://api.groq.com/openai/v1", "groq", "api.groq.com", 80),
    ("http://api.deepseek.com:8080/v1", "deepseek", "api.deepseek.com", 8080),
    ("http://openrouter.ai/api/v1", "openrouter", "openrouter.ai", 80),
    ("http://api.mistral.ai/v1", "mistral_ai", "api.mistral.ai", 80),
    ("http://api.x.ai/v1", "x_ai", "api.x.ai", 80),
    ("http://api.together.xyz/v1", "together_ai", "api.together.xyz", 80),
    ("http://api.fireworks.ai/inference/v1", "fireworks", "api.fireworks.ai", 80),
    ("http://localhost:9999/v1", "openai", "localhost", 9999),
])
def test_compatible_base_url_end_to_end(server: LocalAPIServer, otel: Any, records: list[CallRecord], base_url: str,
                                        provider: str, address: str, port: int) -> None:
    """The client points at the vendor's host; an HTTP proxy (the local server) answers for it."""
    tokenmetry.instrument(**otel.kwargs())
    with openai.OpenAI(api_key="test", base_url=base_url, http_client=httpx2.Client(proxy=server.url, verify=_TLS)) as client:
        client.chat.completions.create(model="some-open-model", messages=MESSAGES)
    assert server.last_request.headers["host"].split(":")[0] == address
    truth = truth_of(server.last_response, "chat")
    record = records[0]
    check_record(record, truth, operation="chat", request_model="some-open-model", stream=False,
                 session_id="default", provider=provider, server_address=address)
    check_span(otel.finished_spans()[0], record, port=port)


def test_local_server_is_openai(server: LocalAPIServer, otel: Any, records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    with openai_client(server) as client:
        client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
    assert records[0].provider == "openai"
    span = otel.finished_spans()[0]
    assert (span.attributes["server.address"], span.attributes["server.port"]) == ("127.0.0.1", server.port)


def test_target_follows_a_changed_base_url(server: LocalAPIServer, otel: Any, records: list[CallRecord]) -> None:
    """Where a client points is worked out once per base_url and kept (the SDKs keep the URL under
    private names that change between versions); setting another base_url is seen on the next call."""
    tokenmetry.instrument(**otel.kwargs())
    with openai.OpenAI(api_key="test", base_url=f"{server.url}/v1") as client:
        client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
        name, url, target = client.__dict__["_tokenmetry_target"]
        assert url is client.base_url and client.__dict__[name] is url  # the cache is keyed on the stored URL
        assert (target.provider, target.server_address, target.server_port) == ("openai", "127.0.0.1", server.port)
        client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
        assert client.__dict__["_tokenmetry_target"][2] is target  # not worked out again
        client.base_url = f"http://localhost:{server.port}/v1"
        client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
    spans = otel.finished_spans()
    assert [(s.attributes["server.address"], s.attributes["server.port"]) for s in spans] == [
        ("127.0.0.1", server.port), ("127.0.0.1", server.port), ("localhost", server.port)]
    assert [r.server_address for r in records] == ["127.0.0.1", "127.0.0.1", "localhost"]


# ================================================================================ errors
def _call_for_error(client: Any, status: int) -> Any:
    if status == 404:  # a real 404: an unknown stored response
        return client.responses.retrieve("resp_does_not_exist")
    return client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)


def _capture(fn: Callable[[], Any]) -> BaseException:
    with pytest.raises(openai.APIStatusError) as info:
        fn()
    return info.value


def _same_error(got: BaseException, plain: BaseException) -> None:
    assert type(got) is type(plain)
    assert got.status_code == plain.status_code  # type: ignore[attr-defined]
    assert got.message == plain.message  # type: ignore[attr-defined]
    assert got.body == plain.body  # type: ignore[attr-defined]
    assert str(got) == str(plain)


@pytest.mark.parametrize(("status", "error_class"), [
    (400, openai.BadRequestError), (404, openai.NotFoundError), (429, openai.RateLimitError),
    (500, openai.InternalServerError),
])
def test_api_error(server: LocalAPIServer, otel: Any, records: list[CallRecord], status: int,
                   error_class: type[BaseException]) -> None:
    script = (lambda: server.enqueue("openai", Reply(status=status))) if status != 404 else (lambda: None)
    with openai_client(server, max_retries=0) as client:
        script()
        plain = _capture(lambda: _call_for_error(client, status))
        tokenmetry.instrument(**otel.kwargs())
        script()
        with tokenmetry.session("errors") as session:
            got = _capture(lambda: _call_for_error(client, status))
    assert type(got) is error_class
    _same_error(got, plain)
    assert got.response.status_code == status
    assert len(server.requests) == 2  # no retry added, none removed
    record = records[0]
    assert len(records) == 1
    assert record.error_type == error_class.__qualname__
    assert record.usage_source == "missing"
    assert record.usage == Usage()
    assert record.cost is None
    assert record.session_id == "errors"
    assert (record.retries, record.throttle_wait_s) == (0, 0.0)
    assert record.response_id is None and record.finish_reasons == ()
    assert session.summary()["errors"] == 1
    span = otel.finished_spans()[0]
    check_span(span, record, port=server.port, usage_reported=False)
    assert span.attributes["error.type"] == error_class.__qualname__
    check_metrics(otel, records, server.port)
    assert points_by_attributes(otel, "gen_ai.client.token.usage") == {}
    snapshot = tokenmetry.stats()
    assert (snapshot.requests, snapshot.errors) == (1, 1)


async def test_async_api_error(server: LocalAPIServer, otel: Any, records: list[CallRecord]) -> None:
    async with openai_client(server, async_=True, max_retries=0) as client:
        server.enqueue("openai", Reply(status=400, message="bad things"))
        with pytest.raises(openai.BadRequestError) as plain:
            await client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, stream=True)
        tokenmetry.instrument(**otel.kwargs())
        server.enqueue("openai", Reply(status=400, message="bad things"))
        with pytest.raises(openai.BadRequestError) as got:
            await client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, stream=True)
    _same_error(got.value, plain.value)
    assert got.value.message == "Error code: 400 - bad things"
    assert [r.error_type for r in records] == ["BadRequestError"]
    assert records[0].stream is True
    check_span(otel.finished_spans()[0], records[0], port=server.port, usage_reported=False)


def test_connection_error_is_the_sdks(otel: Any, records: list[CallRecord]) -> None:
    with LocalAPIServer() as gone:
        url = gone.url
    tokenmetry.instrument(**otel.kwargs())
    with openai.OpenAI(api_key="test", base_url=url + "/v1", max_retries=0) as client:
        with pytest.raises(openai.APIConnectionError):
            client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
    assert [r.error_type for r in records] == ["APIConnectionError"]
    assert records[0].usage_source == "missing"
    assert otel.finished_spans()[0].attributes["error.type"] == "APIConnectionError"


def test_uninstrument_then_nothing_is_recorded(server: LocalAPIServer, otel: Any, records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    with openai_client(server, max_retries=0) as client:
        client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
        assert len(records) == 1
        tokenmetry.uninstrument()
        client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
        list(client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, stream=True))
        client.responses.create(model=CHAT_MODEL, input=PROMPT)
        server.enqueue("openai", Reply(status=400))
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
    assert len(records) == 1
    assert len(otel.finished_spans()) == 1
    assert "stream_options" not in server.requests[2].json  # nothing injected any more
    assert tokenmetry.stats().requests == 1
    assert tokenmetry.current_session().call_count == 1


def test_cost_is_decimal_and_summed(server: LocalAPIServer, records: list[CallRecord]) -> None:
    tokenmetry.instrument()
    with openai_client(server) as client, tokenmetry.session("cost") as session:
        client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
        client.embeddings.create(model=EMBEDDING_MODEL, input="one two three", encoding_format="float")
    costs = [r.cost for r in records]
    assert all(isinstance(c, Cost) and isinstance(c.amount, Decimal) for c in costs)
    assert costs == [expected_cost("openai", r.usage, r.response_model, r.request_model) for r in records]
    assert session.cost == costs[0] + costs[1]  # type: ignore[operator]


def test_instrumented_call_returns_the_sdks_objects(server: LocalAPIServer) -> None:
    tokenmetry.instrument()
    with openai_client(server) as client:
        completion = client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
        stream = client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, stream=True)
        raw = client.chat.completions.with_raw_response.create(model=CHAT_MODEL, messages=MESSAGES)
        with stream:
            assert isinstance(stream, openai.Stream)
            assert type(stream).__name__ == "Stream" and type(stream).__qualname__ == "Stream"
            assert stream.response.status_code == 200
        assert type(completion) is openai.types.chat.ChatCompletion
        assert isinstance(raw, openai._legacy_response.LegacyAPIResponse)
        assert raw.headers["x-request-id"].startswith("req_local")
        assert raw.parse() is raw.parse()  # the SDK's own parse cache still works



# ================================================================================ batched metric points
def test_metric_points_of_pending_calls_are_in_every_collection(server: LocalAPIServer, otel: Any) -> None:
    """Metric points are recorded when finished calls are applied, in batches; a collection applies
    the calls still pending first, so the reader sees every call, each once."""
    from tokenmetry.call import recorder
    from tokenmetry.pending import FOLD_BATCH

    tokenmetry.instrument(**otel.kwargs())
    calls = FOLD_BATCH + 3  # one applied batch, three calls still pending
    server.enqueue("openai.chat", *[Reply(usage=CHAT_DETAILS)] * calls)
    with openai_client(server) as client:
        for _ in range(calls):
            client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
    assert len(recorder._pending) == 3
    usage = [truth_of(sent, "chat").usage for sent in server.responses]
    assert [p.count for p in otel.metric_points("gen_ai.client.operation.duration")] == [calls]
    assert not recorder._pending
    tokens = {p.attributes["gen_ai.token.type"]: p for p in otel.metric_points("gen_ai.client.token.usage")}
    assert tokens["input"].count == tokens["output"].count == calls
    assert tokens["input"].sum == sum(u.input_tokens for u in usage)
    assert tokens["output"].sum == sum(u.output_tokens for u in usage)
    cached = {p.attributes["tokenmetry.token.kind"]: p.value for p in otel.metric_points("tokenmetry.tokens")}
    assert cached == {"cache_read": 6 * calls, "cache_write": 2 * calls, "reasoning": 5 * calls}
    assert [u.cache_read_tokens for u in usage] == [6] * calls
    # a second collection adds nothing: no call is recorded twice
    assert [p.count for p in otel.metric_points("gen_ai.client.operation.duration")] == [calls]


def test_metric_exemplars_link_to_the_span_current_when_the_call_finished(server: LocalAPIServer,
                                                                         otel: Any) -> None:
    """A point recorded later, in a batch, keeps the exemplar it would have had at once: the span
    the application had open around the call, not whichever span is open when the batch is applied."""
    tracer = otel.tracer_provider.get_tracer("app")
    tokenmetry.instrument(**otel.kwargs())
    with openai_client(server) as client:
        with tracer.start_as_current_span("first request") as first:
            client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
        with tracer.start_as_current_span("second request") as second:
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            # collected inside the second span, which both calls' points are recorded under
            points = otel.metric_points("gen_ai.client.operation.duration")
    exemplars = {p.attributes["gen_ai.request.model"]: [e.span_id for e in p.exemplars] for p in points}
    assert exemplars == {CHAT_MODEL: [first.get_span_context().span_id],
                         "gpt-4o": [second.get_span_context().span_id]}


# ================================================================================ content capture
@pytest.mark.parametrize("stream", [False, True], ids=["call", "stream"])
def test_captured_content_is_the_prompt_and_the_whole_answer(server: LocalAPIServer, otel: Any,
                                                             stream: bool) -> None:
    """SPAN_ONLY puts the request's messages and the answer's text on the span, for plain and
    streamed chat completions and Responses alike; without it neither is recorded."""
    import json

    tokenmetry.instrument(capture_content="SPAN_ONLY", **otel.kwargs())
    with openai_client(server) as client:
        completion = client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, stream=stream)
        chat_text = "".join(c.choices[0].delta.content or "" for c in completion if c.choices) if stream \
            else completion.choices[0].message.content
        response = client.responses.create(model=CHAT_MODEL, input=PROMPT, stream=stream)
        if stream:
            events = list(response)
            responses_text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        else:
            responses_text = response.output_text
    chat_span, responses_span = tokenmetry_spans(otel)
    assert json.loads(chat_span.attributes["gen_ai.input.messages"]) == MESSAGES
    assert json.loads(responses_span.attributes["gen_ai.input.messages"]) == PROMPT
    for span, text in ((chat_span, chat_text), (responses_span, responses_text)):
        assert text
        assert json.loads(span.attributes["gen_ai.output.messages"]) == [
            {"role": "assistant", "parts": [{"type": "text", "content": text}]}]


def test_no_content_on_spans_by_default(server: LocalAPIServer, otel: Any) -> None:
    tokenmetry.instrument(**otel.kwargs())
    with openai_client(server) as client:
        client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
        for _ in client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, stream=True):
            pass
    spans = tokenmetry_spans(otel)
    assert len(spans) == 2
    assert not [key for span in spans for key in span.attributes if key.endswith(".messages")]
