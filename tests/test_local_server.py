"""Tests of tokenmetry.testing.LocalAPIServer, driving the real vendor SDK clients over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from google.genai import errors as genai_errors
from google.genai import types as genai_types
from pydantic import BaseModel

from tokenmetry.testing import PROMPT_OVERHEAD, LocalAPIServer, Reply, SSEEvent, word_count
from realdata import REAL_RESPONSES


CLAUDE = "claude-sonnet-4-6"  # a model id the anthropic SDK does not flag as deprecated
USER = [{"role": "user", "content": "Tell me about the local test server please"}]
USER_WORDS = word_count(USER[0]["content"])  # 8
EXPECTED_TEXT = "Local reply to: Tell me about the local test server please"


class Person(BaseModel):
    name: str
    age: int
    height: float
    tags: list[str]
    active: bool


@pytest.fixture
def server() -> Iterator[LocalAPIServer]:
    with LocalAPIServer() as srv:
        yield srv


@pytest.fixture
def oai(server: LocalAPIServer) -> Iterator[openai.OpenAI]:
    with server.openai_client() as client:
        yield client


@pytest.fixture
def claude(server: LocalAPIServer) -> Iterator[anthropic.Anthropic]:
    with server.anthropic_client() as client:
        yield client


@pytest.fixture
def gemini(server: LocalAPIServer) -> Iterator[Any]:
    with server.genai_client() as client:
        yield client


@pytest.fixture
def vertex(server: LocalAPIServer) -> Iterator[Any]:
    with server.genai_client(vertexai=True) as client:
        yield client


def real(name: str) -> Path:
    path = REAL_RESPONSES / name
    if not path.exists():
        pytest.skip(f"recorded response {name} not available")
    return path


# ---------------------------------------------------------------------------------------------------
# Server mechanics
# ---------------------------------------------------------------------------------------------------


def test_lifecycle_binds_a_free_port_and_stops_cleanly() -> None:
    srv = LocalAPIServer().start()
    assert srv.url == f"http://127.0.0.1:{srv.port}" and srv.port > 0
    with httpx2.Client() as http:  # an idle keep-alive connection must not block stop()
        assert http.post(srv.url + "/v1/chat/completions", json={"messages": USER}).status_code == 200
        started = time.monotonic()
        srv.stop()
        assert time.monotonic() - started < 2
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()
    srv.stop()  # idempotent


def test_keep_alive_connection_is_reused_and_bodies_have_content_length(server, oai) -> None:
    oai.chat.completions.create(model="gpt-4o-mini", messages=USER)
    oai.chat.completions.create(model="gpt-4o-mini", messages=USER)
    list(oai.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True))
    first, second, streamed = server.requests
    assert first.client_port == second.client_port  # one pooled HTTP/1.1 connection
    assert first.response.headers["Content-Length"] == str(len(first.response.raw))
    assert streamed.response.headers["Transfer-Encoding"] == "chunked"
    assert streamed.response.headers["Content-Type"].startswith("text/event-stream")


def test_requests_are_recorded(server, oai) -> None:
    oai.chat.completions.create(model="gpt-4o-mini", messages=USER, extra_headers={"X-Custom": "yes"})
    (req,) = server.requests
    assert (req.method, req.path, req.kind, req.vendor, req.backend) == (
        "POST",
        "/v1/chat/completions",
        "openai.chat",
        "openai",
        "openai",
    )
    assert req.json["messages"] == USER and req.model == "gpt-4o-mini" and req.stream is False
    assert req.headers["x-custom"] == "yes" and req.headers["authorization"] == "Bearer test"
    assert server.responses == [req.response] and req.response.completed
    server.clear()
    assert server.requests == [] and server.responses == []


def test_unknown_path_is_a_404_in_openai_error_format(server) -> None:
    response = httpx2.post(server.url + "/v1/nothing/here", json={})
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert server.last_request.kind == "unknown"


def test_sse_events_are_flushed_as_written(server, oai) -> None:
    server.enqueue("openai.chat", Reply(event_delay=0.05))
    started = time.monotonic()
    stamps = [
        time.monotonic() - started
        for _ in oai.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True)
    ]
    events = len(server.last_response.events)  # role + 11 words + finish + [DONE]
    assert events == 14 and len(stamps) == 13
    assert stamps[-1] >= 0.05 * (events - 2)
    assert stamps[0] < stamps[-1] / 4  # the first chunk did not wait for the rest


# ---------------------------------------------------------------------------------------------------
# OpenAI
# ---------------------------------------------------------------------------------------------------


def test_openai_chat_default_answer_and_usage_truth(server, oai) -> None:
    completion = oai.chat.completions.create(model="gpt-4o-mini", messages=USER)
    sent = server.responses[0]
    assert completion.choices[0].message.content == EXPECTED_TEXT == sent.text
    assert completion.usage.model_dump(exclude_none=True) == sent.usage
    assert sent.usage["prompt_tokens"] == USER_WORDS + PROMPT_OVERHEAD
    assert sent.usage["completion_tokens"] == word_count(EXPECTED_TEXT)
    assert sent.usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert completion.id == sent.response_id and completion.model == "gpt-4o-mini"


def test_openai_chat_usage_overrides_are_merged_and_totals_recomputed(server, oai) -> None:
    server.enqueue(
        "openai.chat",
        Reply(
            usage={
                "prompt_tokens_details": {"cached_tokens": 5},
                "completion_tokens_details": {"reasoning_tokens": 64},
            }
        ),
    )
    usage = oai.chat.completions.create(model="o4-mini", messages=USER).usage
    out = word_count(EXPECTED_TEXT)
    assert usage.prompt_tokens_details.cached_tokens == 5
    assert usage.completion_tokens_details.reasoning_tokens == 64
    assert usage.completion_tokens == out + 64
    assert usage.total_tokens == USER_WORDS + PROMPT_OVERHEAD + out + 64
    assert usage.model_dump(exclude_none=True) == server.last_response.usage


def test_openai_chat_stream_with_include_usage(server, oai) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="gpt-4o-mini", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    sent = server.last_response
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == EXPECTED_TEXT
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump(exclude_none=True) == sent.usage
    assert all(c.usage is None for c in chunks[:-1])
    # On the wire: every earlier chunk carries "usage": null, then the usage chunk, then [DONE].
    assert all("usage" in e.data and e.data["usage"] is None for e in sent.events[:-2])
    assert sent.events[-2].data["usage"] == sent.usage and sent.events[-1].data == "[DONE]"
    assert sent.raw.endswith(b"data: [DONE]\n\n")


def test_openai_chat_stream_without_include_usage_sends_no_usage(server, oai) -> None:
    chunks = list(oai.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True))
    sent = server.last_response
    assert all(c.choices for c in chunks) and sent.usage is None and sent.usage_pieces == []
    assert all("usage" not in e.data for e in sent.events[:-1])


def test_openai_chat_parse_structured_output(server, oai) -> None:
    completion = oai.chat.completions.parse(model="gpt-4o-mini", messages=USER, response_format=Person)
    parsed = completion.choices[0].message.parsed
    assert parsed == Person(name="example", age=1, height=1.5, tags=["example"], active=True)
    assert server.last_request.json["response_format"]["type"] == "json_schema"
    assert completion.usage.completion_tokens == word_count(server.last_response.text)


def test_openai_chat_stream_helper(server, oai) -> None:
    with oai.chat.completions.stream(
        model="gpt-4o-mini", messages=USER, stream_options={"include_usage": True}
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert "".join(deltas) == final.choices[0].message.content == EXPECTED_TEXT
    assert final.usage.model_dump(exclude_none=True) == server.last_response.usage


def test_openai_max_tokens_truncates_with_length_finish(server, oai) -> None:
    completion = oai.chat.completions.create(model="gpt-4o-mini", messages=USER, max_completion_tokens=3)
    assert completion.choices[0].message.content == "Local reply to:"
    assert completion.choices[0].finish_reason == "length" and completion.usage.completion_tokens == 3


def test_openai_legacy_completions(server, oai) -> None:
    completion = oai.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say this is a test")
    assert completion.choices[0].text == "Local reply to: Say this is a test"
    assert (
        completion.usage.model_dump(exclude_none=True)
        == server.last_response.usage
        == {"prompt_tokens": 5 + PROMPT_OVERHEAD, "completion_tokens": 8, "total_tokens": 23}
    )
    chunks = list(
        oai.completions.create(
            model="gpt-3.5-turbo-instruct",
            prompt="Say this is a test",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == completion.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 23
    plain = list(oai.completions.create(model="gpt-3.5-turbo-instruct", prompt="x", stream=True))
    assert all(c.usage is None for c in plain) and server.last_response.usage is None


def test_openai_embeddings_base64_by_default_and_float(server, oai) -> None:
    result = oai.embeddings.create(model="text-embedding-3-small", input=["one two", "three"])
    request, sent = server.requests[-1], server.last_response
    assert request.json["encoding_format"] == "base64"  # the SDK asks for base64 and decodes it
    assert isinstance(sent.json["data"][0]["embedding"], str)
    raw = base64.b64decode(sent.json["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == result.data[0].embedding
    assert result.usage.model_dump() == sent.usage == {"prompt_tokens": 3, "total_tokens": 3}
    floats = oai.embeddings.create(
        model="text-embedding-3-small", input="one two", encoding_format="float", dimensions=4
    )
    assert isinstance(server.last_response.json["data"][0]["embedding"], list)
    assert len(floats.data[0].embedding) == 4


def test_openai_responses_create_and_retrieve(server, oai) -> None:
    response = oai.responses.create(model="gpt-4o-mini", input="What is up", instructions="Be brief")
    sent = server.last_response
    assert response.object == "response" and response.status == "completed"
    assert response.output_text == "Local reply to: What is up" == sent.text
    assert sent.usage["input_tokens"] == 3 + 2 + PROMPT_OVERHEAD  # input and instructions
    assert response.usage.model_dump(exclude_none=True) == sent.usage
    again = oai.responses.retrieve(response.id)
    assert server.last_request.method == "GET" and again.output_text == response.output_text
    events = list(oai.responses.retrieve(response.id, stream=True))
    assert server.last_request.query == {"stream": "true"}
    assert events[-1].type == "response.completed" and events[-1].response.id == response.id
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve("resp_missing")


def test_openai_responses_stream_event_sequence(server, oai) -> None:
    server.enqueue(
        "openai.responses",
        Reply(
            usage={
                "output_tokens_details": {"reasoning_tokens": 7},
                "input_tokens_details": {"cached_tokens": 2},
            }
        ),
    )
    events = list(oai.responses.create(model="gpt-5-mini", input="hello there", stream=True))
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert types.count("response.output_text.delta") == word_count("Local reply to: hello there")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    sent = server.last_response
    assert events[0].response.usage is None
    assert events[-1].response.usage.model_dump(exclude_none=True) == sent.usage == sent.usage_pieces[0]
    assert sent.usage["output_tokens"] == 5 + 7 and sent.usage["total_tokens"] == 2 + PROMPT_OVERHEAD + 12
    assert sent.raw.startswith(b"event: response.created\ndata: {")


def test_openai_responses_stream_helper_and_parse(server, oai) -> None:
    with oai.responses.stream(model="gpt-4o-mini", input="stream it") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == final.output_text == "Local reply to: stream it"
    assert final.usage.model_dump(exclude_none=True) == server.last_response.usage
    parsed = oai.responses.parse(model="gpt-4o-mini", input="who", text_format=Person)
    assert parsed.output_parsed == Person(name="example", age=1, height=1.5, tags=["example"], active=True)
    assert server.last_request.json["text"]["format"]["type"] == "json_schema"


def test_azure_openai_deployment_paths(server) -> None:
    with server.azure_openai_client() as azure:
        chat = azure.chat.completions.create(model="my-gpt4o", messages=USER)
        azure.embeddings.create(model="my-embed", input="a b")
        azure.completions.create(model="my-instruct", prompt="a")
    chat_req, embed_req, completion_req = server.requests
    assert chat_req.path == "/openai/deployments/my-gpt4o/chat/completions"
    assert chat_req.query == {"api-version": "2024-10-21"} and chat_req.backend == "azure"
    assert (
        embed_req.path == "/openai/deployments/my-embed/embeddings" and embed_req.kind == "openai.embeddings"
    )
    assert completion_req.kind == "openai.completions" and chat_req.headers["api-key"] == "test"
    assert chat.usage.model_dump(exclude_none=True) == chat_req.response.usage


def test_response_model_mapping(server, oai) -> None:
    server.response_models["gpt-4o"] = "gpt-4o-2024-11-20"
    assert oai.chat.completions.create(model="gpt-4o", messages=USER).model == "gpt-4o-2024-11-20"
    server.enqueue("openai", Reply(model="custom-model"))
    assert oai.chat.completions.create(model="gpt-4o", messages=USER).model == "custom-model"


# ---------------------------------------------------------------------------------------------------
# Anthropic
# ---------------------------------------------------------------------------------------------------


def test_anthropic_message_default_answer(server, claude) -> None:
    message = claude.messages.create(model=CLAUDE, max_tokens=100, messages=USER, system="Be nice")
    sent = server.last_response
    assert message.content[0].text == EXPECTED_TEXT and message.stop_reason == "end_turn"
    assert message.usage.model_dump(exclude_none=True) == sent.usage
    assert sent.usage["input_tokens"] == USER_WORDS + 2 + PROMPT_OVERHEAD
    assert sent.usage["cache_creation"] == {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0}


def test_anthropic_cache_usage_override(server, claude) -> None:
    server.enqueue(
        "anthropic.messages",
        Reply(usage={"cache_creation_input_tokens": 418, "cache_read_input_tokens": 1111}),
    )
    usage = claude.messages.create(model=CLAUDE, max_tokens=100, messages=USER).usage
    assert usage.cache_creation_input_tokens == 418 and usage.cache_read_input_tokens == 1111
    assert usage.cache_creation.ephemeral_5m_input_tokens == 418  # derived from the override
    assert usage.input_tokens == USER_WORDS + PROMPT_OVERHEAD


def test_anthropic_stream_event_sequence_and_usage(server, claude) -> None:
    server.enqueue("anthropic", Reply(usage={"cache_read_input_tokens": 30}))
    with claude.messages.stream(model=CLAUDE, max_tokens=100, messages=USER) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    sent = server.last_response
    names = [e.event for e in sent.events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-4:] == ["content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert names.count("content_block_delta") == word_count(EXPECTED_TEXT)
    start, delta = sent.usage_pieces
    assert start["output_tokens"] == 1 and start["cache_read_input_tokens"] == 30
    assert delta == {
        "input_tokens": USER_WORDS + PROMPT_OVERHEAD,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 30,
        "output_tokens": word_count(EXPECTED_TEXT),
    }
    assert text == EXPECTED_TEXT
    assert final.usage.model_dump(exclude_none=True) == sent.usage == {**start, **delta}


def test_anthropic_stream_delta_usage_variants(server, claude) -> None:
    server.enqueue(
        "anthropic",
        Reply(delta_usage="output_only", usage={"cache_read_input_tokens": 9}),
        Reply(delta_usage={"input_tokens": 99}),
    )
    with claude.messages.stream(model=CLAUDE, max_tokens=100, messages=USER) as stream:
        final = stream.get_final_message()
    assert server.last_response.usage_pieces[1] == {"output_tokens": word_count(EXPECTED_TEXT)}
    assert final.usage.cache_read_input_tokens == 9  # kept from message_start
    with claude.messages.stream(model=CLAUDE, max_tokens=100, messages=USER) as stream:
        final = stream.get_final_message()
    assert server.last_response.usage_pieces[1] == {
        "output_tokens": word_count(EXPECTED_TEXT),
        "input_tokens": 99,
    }
    assert final.usage.input_tokens == 99


def test_anthropic_thinking_blocks(server, claude) -> None:
    with claude.messages.stream(
        model=CLAUDE, max_tokens=2000, messages=USER, thinking={"type": "enabled", "budget_tokens": 1024}
    ) as stream:
        final = stream.get_final_message()
    thinking, text = final.content
    assert thinking.type == "thinking" and thinking.thinking.startswith("Considering: Tell me")
    assert thinking.signature and text.text == EXPECTED_TEXT
    deltas = [
        e.data["delta"]["type"] for e in server.last_response.events if e.event == "content_block_delta"
    ]
    assert "thinking_delta" in deltas and "signature_delta" in deltas and "text_delta" in deltas
    think_words = word_count(thinking.thinking)
    assert final.usage.output_tokens == word_count(EXPECTED_TEXT) + think_words
    assert final.usage.output_tokens_details.thinking_tokens == think_words
    plain = claude.messages.create(
        model=CLAUDE, max_tokens=2000, messages=USER, thinking={"type": "enabled", "budget_tokens": 1024}
    )
    assert [b.type for b in plain.content] == ["thinking", "text"]


def test_anthropic_count_tokens_beta_and_parse(server, claude) -> None:
    count = claude.messages.count_tokens(model=CLAUDE, messages=USER)
    assert count.input_tokens == USER_WORDS + PROMPT_OVERHEAD == server.last_response.json["input_tokens"]
    assert server.last_request.path == "/v1/messages/count_tokens"
    beta = claude.beta.messages.create(model=CLAUDE, max_tokens=100, messages=USER, betas=["some-beta-2025"])
    assert server.last_request.headers["anthropic-beta"] == "some-beta-2025"
    assert beta.usage.input_tokens == USER_WORDS + PROMPT_OVERHEAD
    parsed = claude.messages.parse(model=CLAUDE, max_tokens=1000, messages=USER, output_format=Person)
    assert parsed.parsed_output == Person(name="example", age=1, height=1.5, tags=["example"], active=True)


def test_anthropic_on_vertex_paths(server) -> None:
    with anthropic.AnthropicVertex(
        region="us-east5", project_id="proj", access_token="token", base_url=server.url + "/v1"
    ) as client:
        message = client.messages.create(model=CLAUDE, max_tokens=100, messages=USER)
        with client.messages.stream(model=CLAUDE, max_tokens=100, messages=USER) as stream:
            streamed = stream.get_final_message()
        count = client.messages.count_tokens(model=CLAUDE, messages=USER)
    create_req, stream_req, count_req = server.requests
    assert (
        create_req.path
        == f"/v1/projects/proj/locations/us-east5/publishers/anthropic/models/{CLAUDE}:rawPredict"
    )
    assert stream_req.path.endswith(":streamRawPredict") and count_req.kind == "anthropic.count_tokens"
    assert message.model == CLAUDE and message.content[0].text == EXPECTED_TEXT
    assert streamed.usage.output_tokens == message.usage.output_tokens
    assert count.input_tokens == USER_WORDS + PROMPT_OVERHEAD


# ---------------------------------------------------------------------------------------------------
# Gemini and Vertex AI
# ---------------------------------------------------------------------------------------------------


def test_gemini_generate_content(server, gemini) -> None:
    response = gemini.models.generate_content(model="gemini-2.5-flash", contents="Tell me a story")
    req, sent = server.last_request, server.last_response
    assert req.path == "/v1/models/gemini-2.5-flash:generateContent" and req.backend == "gemini"
    assert req.headers["x-goog-api-key"] == "test"
    assert response.text == "Local reply to: Tell me a story" and response.response_id == sent.response_id
    assert sent.json["usageMetadata"] == sent.usage
    meta = response.usage_metadata
    assert (meta.prompt_token_count, meta.candidates_token_count, meta.total_token_count) == (
        4 + PROMPT_OVERHEAD,
        7,
        4 + PROMPT_OVERHEAD + 7,
    )
    assert response.model_version == "gemini-2.5-flash"


def test_gemini_usage_overrides_recompute_total(server, gemini) -> None:
    server.enqueue(
        "gemini",
        Reply(usage={"thoughtsTokenCount": 100, "cachedContentTokenCount": 4, "toolUsePromptTokenCount": 20}),
    )
    meta = gemini.models.generate_content(model="gemini-2.5-flash", contents="hi").usage_metadata
    assert meta.thoughts_token_count == 100 and meta.cached_content_token_count == 4
    assert meta.tool_use_prompt_token_count == 20
    assert (
        meta.total_token_count
        == (1 + PROMPT_OVERHEAD) + 4 + 100 + 20
        == server.last_response.usage["totalTokenCount"]
    )


def test_gemini_stream_repeats_usage_with_full_numbers_last(server, gemini) -> None:
    chunks = list(gemini.models.generate_content_stream(model="gemini-2.5-flash", contents="count to three"))
    req, sent = server.last_request, server.last_response
    assert req.path == "/v1/models/gemini-2.5-flash:streamGenerateContent" and req.query == {"alt": "sse"}
    assert sent.raw.startswith(b"data: {") and b"\r\n\r\n" in sent.raw  # Google's CRLF framing
    assert "".join(c.text for c in chunks) == "Local reply to: count to three"
    counts = [c.usage_metadata.candidates_token_count for c in chunks]
    assert counts == [1, 2, 3, 4, 5, 6] and len(sent.usage_pieces) == len(chunks)
    assert (
        chunks[-1].usage_metadata.total_token_count
        == sent.usage["totalTokenCount"]
        == 3 + PROMPT_OVERHEAD + 6
    )
    assert chunks[-1].candidates[0].finish_reason == genai_types.FinishReason.STOP
    server.enqueue("gemini", Reply(stream_usage="last"))
    chunks = list(gemini.models.generate_content_stream(model="gemini-2.5-flash", contents="count to three"))
    assert [c.usage_metadata is None for c in chunks] == [True] * 5 + [False]


def test_gemini_thinking_and_count_tokens_and_embeddings(server, gemini) -> None:
    config = genai_types.GenerateContentConfig(
        thinking_config=genai_types.ThinkingConfig(include_thoughts=True, thinking_budget=512)
    )
    response = gemini.models.generate_content(model="gemini-2.5-flash", contents="think", config=config)
    thought, answer = response.candidates[0].content.parts
    assert thought.thought is True and answer.text == "Local reply to: think"
    assert response.usage_metadata.thoughts_token_count == word_count(thought.text)
    count = gemini.models.count_tokens(model="gemini-2.5-flash", contents="a b c")
    assert count.total_tokens == 3 + PROMPT_OVERHEAD and server.last_request.kind == "gemini.count_tokens"
    embedded = gemini.models.embed_content(
        model="gemini-embedding-001", contents=["a b c", "d"], config={"output_dimensionality": 8}
    )
    assert server.last_request.path == "/v1/models/gemini-embedding-001:batchEmbedContents"
    assert [len(e.values) for e in embedded.embeddings] == [8, 8]
    assert embedded.usage_metadata.prompt_token_count == 4


def test_vertex_generate_stream_count_and_embed(server, vertex) -> None:
    response = vertex.models.generate_content(model="gemini-2.5-flash", contents="Hello vertex")
    prefix = "/v1beta1/projects/local-project/locations/us-central1/publishers/google/models/gemini-2.5-flash"
    assert server.last_request.path == prefix + ":generateContent" and server.last_request.backend == "vertex"
    assert server.last_request.headers["authorization"] == "Bearer test"
    assert response.usage_metadata.traffic_type == genai_types.TrafficType.ON_DEMAND
    assert response.usage_metadata.total_token_count == server.last_response.usage["totalTokenCount"]
    chunks = list(vertex.models.generate_content_stream(model="gemini-2.5-flash", contents="Hello vertex"))
    assert server.last_request.path == prefix + ":streamGenerateContent"
    assert chunks[-1].usage_metadata.candidates_token_count == word_count("Local reply to: Hello vertex")
    assert (
        vertex.models.count_tokens(model="gemini-2.5-flash", contents="a b").total_tokens
        == 2 + PROMPT_OVERHEAD
    )
    predicted = vertex.models.embed_content(model="text-embedding-005", contents=["one two three"])
    assert server.last_request.path.endswith("/models/text-embedding-005:predict")
    assert predicted.embeddings[0].statistics.token_count == 3
    assert predicted.metadata.billable_character_count == len("onetwothree")
    gemini_embedding = vertex.models.embed_content(model="gemini-embedding-001", contents=["one two"])
    assert server.last_request.path.endswith("/models/gemini-embedding-001:embedContent")
    assert gemini_embedding.embeddings[0].statistics.token_count == 2


# ---------------------------------------------------------------------------------------------------
# Async clients
# ---------------------------------------------------------------------------------------------------


async def test_async_clients_stream(server) -> None:
    async with server.openai_client(async_=True) as client:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=USER, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage.model_dump(exclude_none=True) == server.last_response.usage
    async with server.anthropic_client(async_=True) as client:
        async with client.messages.stream(model=CLAUDE, max_tokens=100, messages=USER) as stream:
            final = await stream.get_final_message()
    assert final.usage.model_dump(exclude_none=True) == server.last_response.usage
    with server.genai_client() as client:
        last = None
        async for chunk in await client.aio.models.generate_content_stream(
            model="gemini-2.5-flash", contents="x"
        ):
            last = chunk
        await client.aio.aclose()
    assert last.usage_metadata.total_token_count == server.last_response.usage["totalTokenCount"]


async def test_connection_is_reused_after_a_fully_read_stream(server) -> None:
    # The async openai Stream drains the body after [DONE] (the sync one closes the connection).
    async with server.openai_client(async_=True) as client:
        stream = await client.chat.completions.create(model="m", messages=USER, stream=True)
        [chunk async for chunk in stream]
        await client.chat.completions.create(model="m", messages=USER)
    streamed, after = server.requests
    assert streamed.client_port == after.client_port


def test_async_with_asyncio_run(server) -> None:
    async def main() -> int:
        async with server.openai_client(async_=True) as client:
            result = await client.embeddings.create(model="text-embedding-3-small", input="a b c")
            return result.usage.prompt_tokens

    assert asyncio.run(main()) == 3


# ---------------------------------------------------------------------------------------------------
# Errors, retries and headers
# ---------------------------------------------------------------------------------------------------


def test_openai_sdk_retries_429_then_succeeds(server, oai) -> None:
    server.enqueue("openai.chat", Reply(status=429, headers={"retry-after": "0"}))
    completion = oai.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert [r.response.status for r in server.requests] == [429, 200]
    first = server.responses[0]
    assert first.json == {
        "error": {
            "message": "Rate limit reached. Please try again later.",
            "type": "tokens",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert first.headers["retry-after"] == "0" and first.usage is None
    assert completion.usage.model_dump(exclude_none=True) == server.responses[1].usage


def test_error_bodies_follow_each_vendor_format(server) -> None:
    server.enqueue("openai", Reply(status=500))
    server.enqueue("anthropic", Reply(status=529), Reply(status=429, message="slow down"))
    server.enqueue("gemini", Reply(status=429, retry_delay="7s"), Reply(status=503))
    with server.openai_client(max_retries=0) as client, pytest.raises(openai.InternalServerError) as oerr:
        client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert oerr.value.body["type"] == "server_error"
    with server.anthropic_client(max_retries=0) as client:
        with pytest.raises(anthropic.APIStatusError) as aerr:
            client.messages.create(model=CLAUDE, max_tokens=10, messages=USER)
        assert aerr.value.status_code == 529 and aerr.value.body["error"]["type"] == "overloaded_error"
        with pytest.raises(anthropic.RateLimitError) as rerr:
            client.messages.create(model=CLAUDE, max_tokens=10, messages=USER)
        assert rerr.value.body == {
            "type": "error",
            "error": {"type": "rate_limit_error", "message": "slow down"},
            "request_id": "req_local",
        }
    with server.genai_client() as client:
        with pytest.raises(genai_errors.ClientError) as gerr:
            client.models.generate_content(model="gemini-2.5-flash", contents="x")
        assert gerr.value.code == 429 and gerr.value.status == "RESOURCE_EXHAUSTED"
        assert gerr.value.details["error"]["details"] == [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}
        ]
        with pytest.raises(genai_errors.ServerError):
            client.models.generate_content(model="gemini-2.5-flash", contents="x")


def test_anthropic_and_genai_retry_through_the_server(server, claude) -> None:
    server.enqueue("anthropic", Reply(status=529, headers={"retry-after-ms": "10"}))
    claude.messages.create(model=CLAUDE, max_tokens=10, messages=USER)
    assert [r.response.status for r in server.requests] == [529, 200]
    server.clear()
    server.enqueue("gemini", Reply(status=503), Reply(status=429))
    retry = genai_types.HttpRetryOptions(attempts=3, initial_delay=0.01, max_delay=0.02)
    with server.genai_client(http_options=genai_types.HttpOptions(retry_options=retry)) as client:
        client.models.generate_content(model="gemini-2.5-flash", contents="x")
    assert [r.response.status for r in server.requests] == [503, 429, 200]


def test_headers_default_and_scripted(server, oai) -> None:
    server.default_headers["x-ratelimit-remaining-tokens"] = "1234"
    http_date = "Wed, 21 Oct 2015 07:28:00 GMT"
    server.enqueue("openai", Reply(headers={"retry-after": http_date, "x-ratelimit-remaining-tokens": "5"}))
    first = oai.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=USER)
    second = oai.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=USER)
    assert first.headers["retry-after"] == http_date and first.headers["x-ratelimit-remaining-tokens"] == "5"
    assert second.headers["x-ratelimit-remaining-tokens"] == "1234" and second.headers["x-request-id"]
    assert second.parse().usage.model_dump(exclude_none=True) == server.last_response.usage


# ---------------------------------------------------------------------------------------------------
# Scripting
# ---------------------------------------------------------------------------------------------------


def test_queue_order_keys_and_callables(server, oai, claude) -> None:
    server.enqueue("/v1/chat/", Reply(text="first"), Reply(text="second"))
    server.enqueue("anthropic.messages", Reply(text="claude says"))
    server.enqueue("*", lambda request: Reply(text=f"echo {request.kind}"))
    assert server.pending() == 4 and server.pending("/v1/chat/") == 2
    assert claude.messages.create(model=CLAUDE, max_tokens=50, messages=USER).content[0].text == "claude says"
    texts = [
        oai.chat.completions.create(model="m", messages=USER).choices[0].message.content for _ in range(4)
    ]
    assert texts == ["first", "second", "echo openai.chat", EXPECTED_TEXT]
    assert server.pending() == 0 and [r.scripted for r in server.responses] == [True, True, True, True, False]
    server.enqueue("openai", Reply(text="dropped"))
    server.reset()
    assert server.pending() == 0 and server.requests == []


def test_scripted_events_and_json_body(server, oai, claude) -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    server.enqueue(
        "openai.chat",
        Reply(
            events=[
                {
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": "m",
                    "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}],
                    "usage": None,
                },
                {
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": "m",
                    "choices": [],
                    "usage": usage,
                },
                {
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": "m",
                    "choices": [],
                    "usage": None,
                },
                "[DONE]",
            ]
        ),
    )
    chunks = list(oai.chat.completions.create(model="m", messages=USER, stream=True))
    assert [c.usage.total_tokens if c.usage else None for c in chunks] == [None, 5, None]
    server.enqueue(
        "anthropic",
        Reply(
            body={
                "id": "msg_x",
                "type": "message",
                "role": "assistant",
                "model": "claude-x",
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "content": [{"type": "text", "text": "scripted"}],
                "usage": {"input_tokens": 1, "output_tokens": 2},
            }
        ),
    )
    message = claude.messages.create(model=CLAUDE, max_tokens=10, messages=USER)
    assert message.content[0].text == "scripted" and server.last_response.usage == {
        "input_tokens": 1,
        "output_tokens": 2,
    }
    server.enqueue(
        "anthropic",
        Reply(
            events=[
                SSEEvent(
                    "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
                )
            ]
        ),
    )
    with pytest.raises(anthropic.APIStatusError):
        with claude.messages.stream(model=CLAUDE, max_tokens=10, messages=USER) as stream:
            stream.get_final_message()


def test_omit_usage_and_aborted_stream(server, oai) -> None:
    server.enqueue("openai", Reply(omit_usage=True))
    assert oai.chat.completions.create(model="m", messages=USER).usage is None
    assert "usage" not in server.last_response.json
    server.enqueue("openai", Reply(abort_after=3))
    with pytest.raises(openai.APIConnectionError):
        list(oai.chat.completions.create(model="m", messages=USER, stream=True))
    assert server.last_response.completed is False


def test_replay_recorded_bodies_verbatim(server, oai, claude, gemini) -> None:
    json_file = real("openai/chat-gpt-4o-mini-cached-tokens.json")
    server.replay("openai.chat", json_file)
    completion = oai.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert server.last_response.raw == json_file.read_bytes()
    assert completion.usage.prompt_tokens_details.cached_tokens == 1024
    sse_file = real("anthropic/messages-stream-claude-3-7-sonnet-thinking.sse")
    server.enqueue("anthropic", Reply(raw_body=sse_file.read_text(), content_type="text/event-stream"))
    with claude.messages.stream(model=CLAUDE, max_tokens=10, messages=USER) as stream:
        final = stream.get_final_message()
    assert server.last_response.raw == sse_file.read_bytes()
    assert final.usage.output_tokens == 216 and final.content[0].type == "thinking"
    gemini_file = real("gemini/stream-gemini-2.5-flash-usage-every-chunk.sse")
    server.replay("gemini", gemini_file)
    chunks = list(gemini.models.generate_content_stream(model="gemini-2.5-flash", contents="count"))
    assert server.last_response.raw == gemini_file.read_bytes()
    assert chunks[-1].usage_metadata.total_token_count == 133
    assert [e.data["usageMetadata"]["candidatesTokenCount"] for e in server.last_response.events] == [
        31,
        79,
        80,
    ]


def test_concurrent_requests_are_all_recorded(server) -> None:
    with server.openai_client() as client:

        def call(i: int) -> None:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"n {i}"}])

        threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    requests = server.wait_for_requests(8)
    assert sorted(r.json["messages"][0]["content"] for r in requests) == [f"n {i}" for i in range(8)]
    assert sorted(r.index for r in requests) == list(range(8))
    assert len({r.response.response_id for r in requests}) == 8


def test_helpers_are_deterministic() -> None:
    from tokenmetry.testing import default_reply_text, sample_from_schema

    assert default_reply_text("") == "Hello from the local test server."
    assert default_reply_text(" a  b ") == "Local reply to: a b"
    schema = {
        "type": "object",
        "properties": {
            "kind": {"enum": ["x", "y"]},
            "maybe": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/N"}]},
        },
        "$defs": {"N": {"type": "OBJECT", "properties": {"n": {"type": "INTEGER", "minimum": 3}}}},
    }
    assert sample_from_schema(schema) == {"kind": "x", "maybe": {"n": 3}}
    assert json.loads(json.dumps(sample_from_schema({"type": "array", "items": {"type": "number"}}))) == [1.5]
