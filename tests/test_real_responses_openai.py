"""Every recorded OpenAI body in shared/real-responses/openai/, served verbatim by the local server
through the real SDK, normalises to the Usage SPEC §3 gives for its raw usage (taken from INDEX.json,
not from tokenmetry); response id, model and finish reasons come from the body itself.

Streams the user did not ask usage for still get it (tokenmetry asks; the recorded usage chunk is
then withheld from the user); the recorded stream without any usage is estimated from its text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_openai_e2e import check_span, openai_client, usage_of

import tokenmetry
from tokenmetry.counting import estimate_tokens, preload
from tokenmetry.testing import LocalAPIServer, Reply
from tokenmetry.usage import CallRecord, Usage
from realdata import REAL_RESPONSES

ROOT = REAL_RESPONSES
INDEX = [entry for entry in json.loads((ROOT / "INDEX.json").read_text()) if entry["vendor"] == "openai"]
USER_TEXT = "Tell me something short."
MESSAGES = [{"role": "user", "content": USER_TEXT}]
KIND = {"chat": "openai.chat", "responses": "openai.responses", "embeddings": "openai.embeddings"}


def test_every_openai_file_is_covered() -> None:
    files = sorted(p.name for p in (ROOT / "openai").iterdir())
    assert sorted(Path(e["file"]).name for e in INDEX) == files
    assert len(files) == 17


@pytest.fixture(scope="module")
def shared_server() -> Iterator[LocalAPIServer]:
    preload(["o200k_base"], background=False)  # deterministic estimates for the stream without usage
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


def _sse_data(raw: bytes) -> list[dict[str, Any]]:
    events = []
    for line in raw.decode().splitlines():
        if line.startswith("data:"):
            payload = line[5:].strip()
            if payload != "[DONE]":
                events.append(json.loads(payload))
    return events


def _facts(entry: dict[str, Any], raw: bytes) -> tuple[str | None, tuple[str, ...]]:
    """(response id, finish reasons) read straight from the recorded body."""
    api = entry["api"]
    if api == "embeddings":
        return None, ()
    if not entry["stream"]:
        body = json.loads(raw)
        if api == "chat":
            return body["id"], tuple(c["finish_reason"] for c in body["choices"] if c.get("finish_reason"))
        details = body.get("incomplete_details") or {}
        return body["id"], (details.get("reason") or body["status"],)
    events = _sse_data(raw)
    if api == "chat":
        return events[0]["id"], tuple(c["finish_reason"] for e in events for c in e["choices"]
                                      if c.get("finish_reason"))
    final = next(e["response"] for e in reversed(events) if e["type"] in ("response.completed", "response.incomplete"))
    details = final.get("incomplete_details") or {}
    return final["id"], (details.get("reason") or final["status"],)


def _call(client: Any, entry: dict[str, Any], include_usage: bool) -> Any:
    model = entry["request_model"]
    api, stream = entry["api"], entry["stream"]
    if api == "chat":
        extra = {"stream_options": {"include_usage": True}} if include_usage else {}
        result = client.chat.completions.create(model=model, messages=MESSAGES, stream=stream, **extra)
    elif api == "responses":
        result = client.responses.create(model=model, input=USER_TEXT, stream=stream)
    else:
        encoding = "base64" if "base64" in entry["file"] else "float"
        result = client.embeddings.create(model=model, input=USER_TEXT, encoding_format=encoding)
    return list(result) if stream else result


CASES = [pytest.param(e, False, id=Path(e["file"]).stem) for e in INDEX]
CASES += [pytest.param(e, True, id=Path(e["file"]).stem + "-user-include-usage")
          for e in INDEX if e["api"] == "chat" and e["stream"]]


@pytest.mark.parametrize(("entry", "include_usage"), CASES)
def test_recorded_body_normalises_exactly(server: LocalAPIServer, otel: Any, records: list[CallRecord],
                                          entry: dict[str, Any], include_usage: bool) -> None:
    path = ROOT / entry["file"]
    raw = path.read_bytes()
    azure = "azure" in path.name
    tokenmetry.instrument(**otel.kwargs())
    server.enqueue(KIND[entry["api"]], Reply.from_file(path))
    with openai_client(server, azure=azure) as client, tokenmetry.session("real") as session:
        result = _call(client, entry, include_usage)
    assert server.last_response.raw == raw  # served verbatim
    record = records[0]
    assert len(records) == 1
    response_id, finish_reasons = _facts(entry, raw)
    assert record.provider == ("azure.ai.openai" if azure else "openai")
    assert record.operation == ("embeddings" if entry["api"] == "embeddings" else "chat")
    assert record.request_model == entry["request_model"]
    assert record.response_model == entry["response_model"]
    assert record.response_id == response_id
    assert record.finish_reasons == finish_reasons
    assert record.stream is entry["stream"]
    assert record.error_type is None
    assert record.session_id == "real"
    if entry["usage"] is not None:
        expected = usage_of(entry["usage"], entry["api"])
        assert record.usage == expected
        assert record.usage_source == "provider"
    else:
        # the recorded stream carries no usage at all: estimated from the prompt and the text delivered
        text = "".join(c.choices[0].delta.content or "" for c in result if c.choices)
        expected = Usage(estimate_tokens(entry["request_model"], USER_TEXT),
                         estimate_tokens(entry["request_model"], text))
        assert record.usage == expected
        assert record.usage_source == "estimated"
    assert session.usage == expected
    check_span(otel.finished_spans()[0], record, port=server.port)

    if entry["api"] == "chat" and entry["stream"]:
        sent = _sse_data(raw)
        usage_chunks = [i for i, e in enumerate(sent) if not e["choices"] and e.get("usage")]
        if include_usage:
            assert len(result) == len(sent)  # the user asked: the usage chunk is theirs
        else:
            assert len(result) == len(sent) - len(usage_chunks)  # withheld, everything else delivered
            assert all(c.usage is None for c in result)
        assert [c.id for c in result] == [response_id] * len(result)


def test_expected_usages_follow_the_spec_table() -> None:
    """The truth helper itself, on the INDEX's raw shapes (cache_write from the newer field)."""
    by_file = {Path(e["file"]).name: e for e in INDEX}
    cached = by_file["chat-gpt-4o-mini-cached-tokens.json"]["usage"]
    assert usage_of(cached, "chat") == Usage(1149, 270, 1024, None, 0, None)
    assert usage_of(cached, "chat").total_tokens == 1419  # cache is inside the input, not added again
    web = by_file["responses-stream-gpt-5-web-search-cached.sse"]["usage"]
    assert usage_of(web, "responses") == Usage(9463, 582, 8320, None, 512, None)
    write = by_file["responses-stream-gpt-5.5-cache-write-field.sse"]["usage"]
    assert usage_of(write, "responses") == Usage(63, 69, 0, 0, 26, None)
    embedding = by_file["embeddings-text-embedding-3-small-float-dimensions.json"]["usage"]
    assert usage_of(embedding, "embeddings") == Usage(8, 0)
