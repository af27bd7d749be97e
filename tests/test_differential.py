"""Differential: the same scripted calls, once uninstrumented and once instrumented, give the user equal
results -- responses (``model_dump()``, and ``exclude_unset`` as ``to_dict()`` serialises them), the
exact sequence of stream chunks and helper events, and exceptions (type, status, message, body).

Each run gets a fresh local server, so ids and request ids are the same in both runs; only wall-clock
timestamps (``created``, ``created_at``...) are blanked.

Adding a vendor is adding a :class:`Vendor` (how to build its sync/async client) with its list of
:class:`Scenario` to ``VENDORS``; the harness at the bottom runs every scenario both ways.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from pydantic import BaseModel
from test_openai_e2e import CHAT_DETAILS, MESSAGES, PROMPT, RESPONSES_DETAILS, City, openai_client

import tokenmetry
from tokenmetry.testing import LocalAPIServer, Reply
from tokenmetry.usage import CallRecord

_CLOCK_FIELDS = frozenset({"created", "created_at", "completed_at"})


def scrub(value: Any) -> Any:
    """A dump with wall-clock timestamps blanked (they may tick between the two runs)."""
    if isinstance(value, dict):
        return {k: (0 if k in _CLOCK_FIELDS else scrub(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def observable(value: Any) -> Any:
    """Everything a user can see of a result, as plain data."""
    if isinstance(value, BaseModel):
        # (the SDK's parsed types warn on serialisation, identically in both runs: not the subject here)
        return {"type": type(value).__qualname__, "dump": scrub(value.model_dump(warnings=False)),
                "set": scrub(value.model_dump(exclude_unset=True, warnings=False))}
    if isinstance(value, (list, tuple)):
        return [observable(v) for v in value]
    if isinstance(value, dict):
        return {k: observable(v) for k, v in value.items()}
    if isinstance(value, BaseException):
        return {"error": type(value), "status_code": getattr(value, "status_code", None),
                "message": getattr(value, "message", None), "body": getattr(value, "body", None),
                "str": str(value), "args": value.args}
    return value


def raised(fn: Callable[[], Any]) -> Any:
    try:
        fn()
    except Exception as error:  # noqa: BLE001 - the exception is the outcome being compared
        return error
    raise AssertionError("the scenario was scripted to fail")


async def araised(fn: Callable[[], Awaitable[Any]]) -> Any:
    try:
        await fn()
    except Exception as error:  # noqa: BLE001 - the exception is the outcome being compared
        return error
    raise AssertionError("the scenario was scripted to fail")


@dataclass(frozen=True)
class Scenario:
    """Scripted replies, then calls on a client; ``run``/``arun`` return what the user got."""

    name: str
    run: Callable[[Any], Any]
    arun: Callable[[Any], Awaitable[Any]] | None = None
    script: tuple[tuple[str, Reply], ...] = ()
    calls: int = 1  # records the instrumented run must produce (a vacuous comparison is not a test)
    client_options: tuple[tuple[str, Any], ...] = ()
    xfail: str | None = None  # a known, reported difference


@dataclass(frozen=True)
class Vendor:
    name: str
    client: Callable[..., Any]  # (server, async_=..., **options) -> client usable as a context manager
    scenarios: list[Scenario]


# ================================================================================ openai
CHAT = {"model": "gpt-4o-mini", "messages": MESSAGES}
RESP = {"model": "gpt-4o-mini", "input": PROMPT}


def _chat_stream_helper(client: Any, **extra: Any) -> Any:
    with client.chat.completions.stream(**CHAT, **extra) as stream:
        events = list(stream)
        return {"events": events, "final": stream.get_final_completion()}


async def _achat_stream_helper(client: Any) -> Any:
    async with client.chat.completions.stream(**CHAT) as stream:
        events = [e async for e in stream]
        return {"events": events, "final": await stream.get_final_completion()}


def _responses_stream_helper(client: Any) -> Any:
    with client.responses.stream(**RESP, text_format=City) as stream:
        events = list(stream)
        return {"events": events, "final": stream.get_final_response()}


async def _aresponses_stream_helper(client: Any) -> Any:
    async with client.responses.stream(**RESP) as stream:
        events = [e async for e in stream]
        return {"events": events, "final": await stream.get_final_response()}


def _retrieve(client: Any, stream: bool) -> Any:
    created = client.responses.create(**RESP)
    if stream:
        return [created, list(client.responses.retrieve(created.id, stream=True))]
    return [created, client.responses.retrieve(created.id)]


def _raw(client: Any) -> Any:
    raw = client.chat.completions.with_raw_response.create(**CHAT)
    headers = {k: v for k, v in raw.headers.items() if k != "date"}
    return {"status": raw.status_code, "headers": headers, "parsed": raw.parse()}


def _raw_stream(client: Any) -> Any:
    raw = client.chat.completions.with_raw_response.create(**CHAT, stream=True)
    return {"status": raw.status_code, "chunks": list(raw.parse())}


def _streaming_response(client: Any) -> Any:
    with client.chat.completions.with_streaming_response.create(**CHAT, stream=True) as response:
        return {"status": response.status_code, "chunks": list(response.parse())}


def _streaming_response_lines(client: Any) -> Any:
    """The raw SSE lines, data parsed so the timestamps can be blanked."""
    with client.chat.completions.with_streaming_response.create(**CHAT, stream=True) as response:
        lines = list(response.iter_lines())
    return [scrub(json.loads(line[6:])) if line.startswith("data: {") else line for line in lines]


def _broken_stream(client: Any) -> Any:
    got: list[Any] = []

    def consume() -> None:
        for chunk in client.chat.completions.create(**CHAT, stream=True):
            got.append(chunk)

    return {"error": raised(consume), "chunks": got}


async def _alist(awaitable: Awaitable[Any]) -> list[Any]:
    return [item async for item in await awaitable]


OPENAI_SCENARIOS = [
    Scenario("chat", lambda c: c.chat.completions.create(**CHAT),
             lambda c: c.chat.completions.create(**CHAT), script=(("openai.chat", Reply(usage=CHAT_DETAILS)),)),
    Scenario("chat-length", lambda c: c.chat.completions.create(**CHAT, max_tokens=2)),
    Scenario("chat-stream", lambda c: list(c.chat.completions.create(**CHAT, stream=True)),
             lambda c: _alist(c.chat.completions.create(**CHAT, stream=True))),
    Scenario("chat-stream-include-usage",
             lambda c: list(c.chat.completions.create(**CHAT, stream=True, stream_options={"include_usage": True})),
             lambda c: _alist(c.chat.completions.create(**CHAT, stream=True,
                                                        stream_options={"include_usage": True})),
             script=(("openai.chat", Reply(usage=CHAT_DETAILS)),)),
    Scenario("chat-stream-include-usage-false",
             lambda c: list(c.chat.completions.create(**CHAT, stream=True,
                                                      stream_options={"include_usage": False}))),
    Scenario("chat-parse", lambda c: c.chat.completions.parse(**CHAT, response_format=City),
             lambda c: c.chat.completions.parse(**CHAT, response_format=City)),
    Scenario("chat-stream-helper", _chat_stream_helper, _achat_stream_helper),
    Scenario("chat-stream-helper-include-usage",
             lambda c: _chat_stream_helper(c, stream_options={"include_usage": True})),
    Scenario("responses", lambda c: c.responses.create(**RESP), lambda c: c.responses.create(**RESP),
             script=(("openai.responses", Reply(usage=RESPONSES_DETAILS)),)),
    Scenario("responses-stream", lambda c: list(c.responses.create(**RESP, stream=True)),
             lambda c: _alist(c.responses.create(**RESP, stream=True))),
    Scenario("responses-parse", lambda c: c.responses.parse(**RESP, text_format=City)),
    Scenario("responses-stream-helper", _responses_stream_helper, _aresponses_stream_helper),
    Scenario("responses-retrieve", lambda c: _retrieve(c, False), calls=2),
    Scenario("responses-retrieve-stream", lambda c: _retrieve(c, True), calls=2),
    Scenario("completions", lambda c: c.completions.create(model="gpt-3.5-turbo-instruct", prompt=PROMPT)),
    Scenario("completions-stream", lambda c: list(c.completions.create(model="gpt-3.5-turbo-instruct",
                                                                       prompt=PROMPT, stream=True))),
    Scenario("embeddings-float", lambda c: c.embeddings.create(model="text-embedding-3-small",
                                                               input=["a b", "c d e"], encoding_format="float")),
    Scenario("embeddings-default-base64", lambda c: c.embeddings.create(model="text-embedding-3-small",
                                                                        input="the quick brown fox"),
             lambda c: c.embeddings.create(model="text-embedding-3-small", input="the quick brown fox")),
    Scenario("raw-response", _raw),
    Scenario("raw-response-stream", _raw_stream),
    Scenario("streaming-response-stream", _streaming_response),
    Scenario("streaming-response-lines", _streaming_response_lines),
    Scenario("omitted-usage", lambda c: c.chat.completions.create(**CHAT),
             script=(("openai.chat", Reply(omit_usage=True)),)),
    Scenario("error-400", lambda c: raised(lambda: c.chat.completions.create(**CHAT)),
             lambda c: araised(lambda: c.chat.completions.create(**CHAT)),
             script=(("openai.chat", Reply(status=400, message="Invalid 'messages'.")),)),
    Scenario("error-401", lambda c: raised(lambda: c.responses.create(**RESP)),
             script=(("openai.responses", Reply(status=401)),)),
    Scenario("error-404", lambda c: raised(lambda: c.responses.retrieve("resp_missing"))),
    Scenario("error-429-no-retries", lambda c: raised(lambda: c.chat.completions.create(**CHAT, stream=True)),
             lambda c: araised(lambda: c.chat.completions.create(**CHAT, stream=True)),
             script=(("openai.chat", Reply(status=429, headers={"retry-after-ms": "5"})),),
             client_options=(("max_retries", 0),)),
    Scenario("error-500-retries-exhausted", lambda c: raised(lambda: c.embeddings.create(
        model="text-embedding-3-small", input="x", encoding_format="float")),
        script=tuple(("openai.embeddings", Reply(status=500, headers={"retry-after-ms": "5"})) for _ in range(2)),
        client_options=(("max_retries", 1),)),
    Scenario("retried-then-ok", lambda c: c.chat.completions.create(**CHAT),
             lambda c: c.chat.completions.create(**CHAT),
             script=(("openai.chat", Reply(status=429, headers={"retry-after-ms": "5"})),
                     ("openai.chat", Reply(status=503, headers={"retry-after-ms": "5"})))),
    Scenario("broken-stream", _broken_stream, script=(("openai.chat", Reply(abort_after=3)),),
             client_options=(("max_retries", 0),)),
]

VENDORS: dict[str, Vendor] = {
    "openai": Vendor("openai", openai_client, OPENAI_SCENARIOS),
}


# ================================================================================ the harness
@pytest.fixture
def records() -> Iterator[list[CallRecord]]:
    found: list[CallRecord] = []
    unsubscribe = tokenmetry.on_record(found.append)
    yield found
    unsubscribe()


def _outcome(vendor: Vendor, scenario: Scenario, instrumented: bool) -> Any:
    with LocalAPIServer() as server:
        for key, reply in scenario.script:
            server.enqueue(key, reply)
        if instrumented:
            tokenmetry.instrument()
        with vendor.client(server, **dict(scenario.client_options)) as client:
            result = observable(scenario.run(client))
        tokenmetry.uninstrument()
        return result


async def _aoutcome(vendor: Vendor, scenario: Scenario, instrumented: bool) -> Any:
    assert scenario.arun is not None
    with LocalAPIServer() as server:
        for key, reply in scenario.script:
            server.enqueue(key, reply)
        if instrumented:
            tokenmetry.instrument()
        async with vendor.client(server, async_=True, **dict(scenario.client_options)) as client:
            result = observable(await scenario.arun(client))
        tokenmetry.uninstrument()
        return result


def _param(vendor: Vendor, scenario: Scenario) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=scenario.xfail)] if scenario.xfail else []
    return pytest.param(vendor, scenario, id=f"{vendor.name}-{scenario.name}", marks=marks)


SYNC_CASES = [_param(v, s) for v in VENDORS.values() for s in v.scenarios]
ASYNC_CASES = [_param(v, s) for v in VENDORS.values() for s in v.scenarios if s.arun is not None]


@pytest.mark.parametrize(("vendor", "scenario"), SYNC_CASES)
def test_same_result_with_and_without_tokenmetry(vendor: Vendor, scenario: Scenario,
                                                 records: list[CallRecord]) -> None:
    plain = _outcome(vendor, scenario, instrumented=False)
    assert records == []
    instrumented = _outcome(vendor, scenario, instrumented=True)
    assert instrumented == plain
    assert len(records) == scenario.calls


@pytest.mark.parametrize(("vendor", "scenario"), ASYNC_CASES)
async def test_async_same_result_with_and_without_tokenmetry(vendor: Vendor, scenario: Scenario,
                                                             records: list[CallRecord]) -> None:
    plain = await _aoutcome(vendor, scenario, instrumented=False)
    instrumented = await _aoutcome(vendor, scenario, instrumented=True)
    assert instrumented == plain
    assert len(records) == scenario.calls


def test_the_comparison_sees_differences() -> None:
    """The harness would notice a changed chunk list or a different exception."""
    a = openai.types.chat.ChatCompletionChunk.model_validate(
        {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": []})
    b = openai.types.chat.ChatCompletionChunk.model_validate(
        {"id": "x", "object": "chat.completion.chunk", "created": 2, "model": "m", "choices": [], "usage": None})
    assert observable([a]) != observable([a, a])
    assert observable(a) != observable(b)  # usage set to null is visible to to_dict()
    assert observable(ValueError("x")) != observable(KeyError("x"))
