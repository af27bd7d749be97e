"""An in-process HTTP server that speaks the OpenAI, Anthropic and Gemini wire formats.

It exists so that tests (and ``tokenmetry demo`` without an API key) can drive the *real* vendor SDK
clients over real HTTP: SSE streams are flushed event by event, connections are kept alive (HTTP/1.1,
``Content-Length`` for JSON, chunked transfer encoding for streams), and every request and every
response is recorded so a test can compare what the SDK (or tokenmetry) reports with what was sent.

Default answers
---------------
Unscripted requests get a deterministic answer computed from the request:

* reply text: ``"Local reply to: " + <first 30 words of the last user message>`` (or
  ``"Hello from the local test server."`` when there is no user text). With a JSON-schema response
  format (OpenAI ``response_format`` / Responses ``text.format``, Anthropic ``output_config.format``,
  Gemini ``responseJsonSchema`` / ``responseSchema``) the reply is ``json.dumps`` of a value built
  from the schema: strings ``"example"``, integers ``1`` (or ``minimum``), numbers ``1.5``, booleans
  ``true``, arrays of one item, objects with every property, the first ``enum`` / ``anyOf`` option.
* ``W`` = number of whitespace-separated words in every text of the prompt (all messages, system
  prompt / instructions; tool definitions are not counted; an integer token array counts one word per
  token). ``O`` = number of whitespace-separated words in the reply text.
* input tokens = ``W + 10`` for generation and token-count endpoints; ``W`` for embeddings.
* output tokens = ``O`` (+ the words of the thinking text when Anthropic ``thinking`` or a Gemini
  ``thinkingConfig`` is enabled: thinking text is ``"Considering: " + first 8 user words``).
* cache / reasoning / tool counts are 0 (or absent where the vendor omits them) unless scripted.
* ``max_tokens`` / ``max_completion_tokens`` / ``max_output_tokens`` / ``maxOutputTokens`` truncate
  the reply to that many words and set the vendor's "length" finish reason (legacy completions
  default to ``max_tokens=16``, as the real API does).
* embeddings: deterministic unit vectors (a hash of the text), ``dimensions`` /
  ``outputDimensionality`` long or 16; float32 values, base64-encoded when asked (the openai SDK asks
  for ``encoding_format="base64"`` by default and decodes it).

``Reply(usage={...})`` is deep-merged into the vendor usage object, and then the derived fields the
override did not set are recomputed the way the vendor defines them: OpenAI ``completion_tokens`` /
``output_tokens`` = ``O`` + reasoning tokens and ``total_tokens`` = input + output; Anthropic
``output_tokens`` = ``O`` + ``output_tokens_details.thinking_tokens`` and ``cache_creation`` = all
5-minute writes; Gemini ``totalTokenCount`` = prompt + candidates + thoughts + tool-use prompt.
``server.responses[i].usage`` is always the vendor usage object exactly as it was sent.

Streams: one content delta per word (the leading space stays with the word, as real tokens do).
See :class:`Reply` for scripting errors, headers, delays, verbatim bodies and SSE event lists.

Paths served (matched on the end of the path, so any base-URL prefix works)
---------------------------------------------------------------------------
* OpenAI (``base_url=server.url + "/v1"``): ``POST /v1/chat/completions``, ``/v1/completions``,
  ``/v1/embeddings``, ``/v1/responses``; ``GET`` / ``DELETE /v1/responses/{id}`` (``?stream=true``,
  ``&starting_after=N``). Azure (``azure_endpoint=server.url``):
  ``POST /openai/deployments/{deployment}/{chat/completions|completions|embeddings}?api-version=...``.
* Anthropic (``base_url=server.url``): ``POST /v1/messages`` (``beta.messages`` too: same path with an
  ``anthropic-beta`` header), ``POST /v1/messages/count_tokens``. Claude on Vertex
  (``AnthropicVertex(base_url=server.url + "/v1")``):
  ``POST /v1/projects/{p}/locations/{l}/publishers/anthropic/models/{model}:rawPredict`` /
  ``:streamRawPredict``, and ``.../models/count-tokens:rawPredict``. Claude on Bedrock
  (``AnthropicBedrock(base_url=server.url, api_key=...)``): ``POST /model/{model}/invoke``; not its
  stream (``/invoke-with-response-stream`` answers in AWS's binary event-stream framing, which the
  SDK decodes with botocore).
* Gemini API (``HttpOptions(base_url=server.url)``; google-genai 3.x uses ``v1``, older ``v1beta``):
  ``POST /{version}/models/{model}:generateContent``, ``:streamGenerateContent?alt=sse``,
  ``:countTokens``, ``:batchEmbedContents`` (what ``embed_content`` calls), ``:embedContent``.
* Vertex AI (same base URL, ``vertexai=True``):
  ``POST /v1beta1/projects/{p}/locations/{l}/publishers/google/models/{model}:generateContent``,
  ``:streamGenerateContent?alt=sse``, ``:countTokens``, ``:predict`` (text-embedding models),
  ``:embedContent`` / ``:batchEmbedContents`` (gemini-embedding models).
* Anything else: 404 with an OpenAI-style error body (still recorded, kind ``"unknown"``).

Not modelled: tool calls, ``n > 1``, audio/images. Script them with ``Reply(body=...)`` /
``Reply(events=[...])`` or replay a recorded body.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import itertools
import json
import logging
import random
import re
import socket
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = [
    "LocalAPIServer",
    "RecordedRequest",
    "Reply",
    "SSEEvent",
    "SentResponse",
    "default_reply_text",
    "offline_google_credentials",
    "sample_from_schema",
    "word_count",
]

_log = logging.getLogger("tokenmetry.testing")

#: Added to the prompt word count to stand for the chat framing tokens a real tokenizer adds.
PROMPT_OVERHEAD = 10
#: How many words of the user message the default reply echoes.
ECHO_WORDS = 30
#: Dimension of default embedding vectors when the request does not ask for one.
DEFAULT_EMBEDDING_DIMENSIONS = 16
_THINKING_SIGNATURE = "bG9jYWwtdGVzdC1zZXJ2ZXItc2lnbmF0dXJl"


# --------------------------------------------------------------------------------------------------
# Public records and scripting
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SSEEvent:
    """One server-sent event: an optional ``event:`` name and its ``data`` (parsed JSON or a string)."""

    event: str | None
    data: Any

    def encode(self, newline: str = "\n") -> bytes:
        """The event as it goes on the wire (compact JSON, like the vendors send)."""
        data = self.data if isinstance(self.data, str) else json.dumps(self.data, separators=(",", ":"))
        lines = [f"event: {self.event}"] if self.event is not None else []
        lines += [f"data: {line}" for line in data.split("\n")]
        return (newline.join(lines) + newline + newline).encode()


@dataclass
class Reply:
    """A scripted answer, consumed by the next request that matches the key it was enqueued under.

    Fields left at their defaults keep the server's default behaviour, so ``Reply(usage={...})``
    is the default answer with some usage numbers changed and ``Reply(status=429)`` is a
    vendor-formatted rate-limit error.

    * ``status``: HTTP status. A status >= 400 without ``body``/``raw_body`` sends the vendor's error
      body (``message`` and ``error_type`` override its message and type; ``retry_delay`` such as
      ``"2s"`` adds a ``google.rpc.RetryInfo`` detail to Google errors).
    * ``headers``: extra response headers (``retry-after``, ``retry-after-ms``, rate-limit headers...).
    * ``body``: a JSON body sent as is. ``events``: SSE events sent as is (each an :class:`SSEEvent`,
      a dict -- named after its ``type`` for Anthropic and Responses endpoints --, a ``(name, data)``
      tuple, or a string sent as ``data: <string>``); nothing is added, not even ``[DONE]``.
    * ``raw_body`` + ``content_type``: bytes sent verbatim (an SSE body is still flushed event by event).
    * ``text``: reply text of the default answer. ``model``: response model of the default answer.
    * ``usage``: deep-merged into the default usage object (see the module docstring).
      ``omit_usage``: send the default answer without any usage object (the anthropic SDK's stream
      accumulator expects usage on ``message_delta``, so use it there only to test failure paths).
    * ``delta_usage`` (Anthropic streams): ``None`` repeats input and cache counts in ``message_delta``
      as newer API versions do; ``"output_only"`` sends only ``output_tokens``; a dict is sent as the
      delta's usage (``output_tokens`` added when missing).
    * ``stream_usage`` (Gemini streams): ``"every"`` chunk (cumulative, full on the last) or ``"last"``.
    * ``delay``: seconds to wait before answering. ``event_delay``: seconds between SSE events.
    * ``abort_after``: drop the connection after this many SSE events (a broken stream).
    """

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Any = None
    events: Sequence[Any] | None = None
    raw_body: bytes | str | None = None
    content_type: str | None = None
    text: str | None = None
    model: str | None = None
    usage: Mapping[str, Any] | None = None
    omit_usage: bool = False
    delta_usage: Mapping[str, Any] | str | None = None
    stream_usage: str = "every"
    message: str | None = None
    error_type: str | None = None
    retry_delay: str | None = None
    delay: float = 0.0
    event_delay: float = 0.0
    abort_after: int | None = None

    @classmethod
    def from_file(cls, path: str | Path, **options: Any) -> Reply:
        """A reply that sends a recorded body verbatim (``.sse`` files as an event stream)."""
        path = Path(path)
        content_type = "text/event-stream" if path.suffix == ".sse" else "application/json"
        return cls(
            raw_body=path.read_bytes(), content_type=options.pop("content_type", content_type), **options
        )


@dataclass
class SentResponse:
    """What the server sent for one request: the truth a test compares against."""

    kind: str
    status: int
    headers: dict[str, str]
    stream: bool = False
    json: Any = None  #: the JSON body (non-stream responses)
    events: list[SSEEvent] = field(default_factory=list)  #: SSE events in send order (streams)
    raw: bytes = b""  #: the exact body bytes (for streams: the SSE text, without chunk framing)
    #: The vendor usage object as sent. Streams: OpenAI chat/completions the usage chunk's (None
    #: without include_usage), Responses ``response.completed``'s, Anthropic ``message_start``'s
    #: updated with ``message_delta``'s (shallow merge, delta keys win), Gemini the last chunk's.
    usage: dict[str, Any] | None = None
    usage_pieces: list[dict[str, Any]] = field(default_factory=list)  #: every usage object sent, in order
    text: str | None = None  #: the reply text of a default answer
    model: str | None = None
    response_id: str | None = None
    scripted: bool = False  #: True when a queued Reply shaped this response
    completed: bool = False  #: False while sending, or if the client went away / the stream was aborted
    chunks: list[bytes] = field(default_factory=list, repr=False)  #: SSE events as written


@dataclass
class RecordedRequest:
    """One request as the server received it."""

    index: int
    method: str
    path: str  #: path without the query string
    query: dict[str, str]
    headers: dict[str, str]  #: lower-cased header names
    body: bytes
    json: Any  #: parsed JSON body, or None
    kind: str  #: e.g. ``openai.chat``, ``anthropic.messages``, ``gemini.stream_generate_content``
    vendor: str  #: ``openai`` | ``anthropic`` | ``gemini`` | ``unknown``
    backend: str  #: ``openai`` | ``azure`` | ``anthropic`` | ``bedrock`` | ``gemini`` | ``vertex`` | ``unknown``
    model: str | None
    stream: bool
    client_port: int  #: the client's source port: equal ports mean a reused (keep-alive) connection
    received_at: float  #: time.monotonic() when the body had been read
    response: SentResponse | None = None


ReplyLike = Reply | Callable[[RecordedRequest], Reply]


# --------------------------------------------------------------------------------------------------
# Deterministic content helpers
# --------------------------------------------------------------------------------------------------


def word_count(text: str) -> int:
    """Number of whitespace-separated words: the unit of every default usage number."""
    return len(text.split())


def default_reply_text(user_text: str) -> str:
    """The default reply to a user message (see the module docstring)."""
    words = user_text.split()
    if not words:
        return "Hello from the local test server."
    return "Local reply to: " + " ".join(words[:ECHO_WORDS])


def _thinking_text(user_text: str) -> str:
    return "Considering: " + " ".join(user_text.split()[:8] or ["the", "request"])


def _pieces(text: str) -> list[str]:
    """Split text into one piece per word, each keeping its leading whitespace; joins back to text."""
    pieces = re.findall(r"\s*\S+", text)
    tail = text[len("".join(pieces)) :]
    if tail:
        pieces = pieces[:-1] + [pieces[-1] + tail] if pieces else [tail]
    return pieces


def _truncate(text: str, limit: Any) -> tuple[str, bool]:
    """Cut text to ``limit`` words; returns (text, truncated)."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0 or word_count(text) <= limit:
        return text, False
    return "".join(_pieces(text)[:limit]).strip(), True


def sample_from_schema(schema: Any, *, _root: Any = None, _depth: int = 0) -> Any:
    """A value valid for simple JSON schemas (OpenAPI-style uppercase Gemini types accepted)."""
    root = schema if _root is None else _root
    if not isinstance(schema, Mapping) or _depth > 12:
        return "example"
    if "$ref" in schema:
        target: Any = root
        for part in str(schema["$ref"]).lstrip("#/").split("/"):
            target = target.get(part, {}) if isinstance(target, Mapping) else {}
        return sample_from_schema(target, _root=root, _depth=_depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = [
            o for o in schema.get(key) or [] if not (isinstance(o, Mapping) and o.get("type") == "null")
        ]
        if options:
            return sample_from_schema(options[0], _root=root, _depth=_depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if str(k).lower() != "null"), "null")
    kind = str(kind).lower() if kind is not None else ("object" if "properties" in schema else "string")
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: sample_from_schema(sub, _root=root, _depth=_depth + 1) for name, sub in props.items()}
    if kind == "array":
        item = sample_from_schema(schema.get("items", {}), _root=root, _depth=_depth + 1)
        return [item] * max(1, int(schema.get("minItems", 1) or 1))
    if kind == "integer":
        return max(1, int(schema.get("minimum", 1)))
    if kind == "number":
        return max(1.5, float(schema.get("minimum", 1.5)))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    formats = {
        "date": "2024-01-01",
        "date-time": "2024-01-01T00:00:00Z",
        "email": "user@example.com",
        "uri": "https://example.com",
        "uuid": "00000000-0000-4000-8000-000000000000",
    }
    return formats.get(str(schema.get("format")), "example")


def _embedding(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for a text, rounded to float32 so JSON and base64 agree."""
    rng = random.Random(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big"))
    vec = [rng.gauss(0.0, 1.0) for _ in range(max(1, dimensions))]
    norm = sum(v * v for v in vec) ** 0.5 or 1.0
    return list(struct.unpack(f"<{len(vec)}f", struct.pack(f"<{len(vec)}f", *(v / norm for v in vec))))


def _embedding_base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _has(mapping: Mapping[str, Any] | None, *path: str) -> bool:
    """Whether a nested key is present in a (usage override) mapping."""
    node: Any = mapping
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return False
        node = node[key]
    return True


def _get(mapping: Any, *path: str, default: Any = None) -> Any:
    node = mapping
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    return node


def _gfield(mapping: Any, name: str, default: Any = None) -> Any:
    """A Google JSON field by its lowerCamel name or its snake_case alias (the API accepts both, and
    google-genai sends some nested configs, e.g. ``thinkingConfig``, in snake_case)."""
    if not isinstance(mapping, Mapping):
        return default
    if name in mapping:
        return mapping[name]
    return mapping.get(re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower(), default)


def offline_google_credentials(token: str = "test") -> Any:
    """google-auth credentials holding a fixed token: Vertex AI clients work with no network access.

    (``AnonymousCredentials`` has no token, and google-genai refuses a credential without one.)
    """
    from google.oauth2.credentials import Credentials

    return Credentials(token=token)


# --------------------------------------------------------------------------------------------------
# Prompt extraction (what the default answer is computed from)
# --------------------------------------------------------------------------------------------------


@dataclass
class _Prompt:
    texts: list[str]
    last_user: str

    @property
    def words(self) -> int:
        return sum(word_count(t) for t in self.texts)


def _content_texts(content: Any) -> list[str]:
    """Texts in an OpenAI / Anthropic message content (a string or a list of parts/blocks)."""
    if isinstance(content, str):
        return [content]
    texts: list[str] = []
    if isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, Mapping):
                if isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif part.get("type") == "tool_result":
                    texts += _content_texts(part.get("content"))
                elif isinstance(part.get("output"), str):  # Responses function_call_output
                    texts.append(part["output"])
    return texts


def _raw_input_texts(value: Any) -> list[str]:
    """Texts of an OpenAI ``prompt`` / embeddings ``input``: strings or token arrays."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        if all(isinstance(v, int) for v in value):
            return [" ".join(map(str, value))] if value else []
        return [t for v in value for t in _raw_input_texts(v)]
    return []


def _openai_chat_prompt(body: Mapping[str, Any]) -> _Prompt:
    texts: list[str] = []
    last_user = ""
    for message in body.get("messages") or []:
        parts = _content_texts(message.get("content"))
        texts += parts
        if message.get("role") == "user":
            last_user = " ".join(parts)
    return _Prompt(texts, last_user)


def _responses_prompt(body: Mapping[str, Any]) -> _Prompt:
    texts = [body["instructions"]] if isinstance(body.get("instructions"), str) else []
    items = body.get("input")
    if isinstance(items, str):
        return _Prompt(texts + [items], items)
    last_user = ""
    for item in items or []:
        if not isinstance(item, Mapping):
            continue
        parts = _content_texts(item.get("content")) if "content" in item else _content_texts([item])
        texts += parts
        if item.get("role") == "user":
            last_user = " ".join(parts)
    return _Prompt(texts, last_user)


def _anthropic_prompt(body: Mapping[str, Any]) -> _Prompt:
    texts = _content_texts(body.get("system"))
    last_user = ""
    for message in body.get("messages") or []:
        parts = _content_texts(message.get("content"))
        texts += parts
        if message.get("role") == "user" and parts:
            last_user = " ".join(parts)
    return _Prompt(texts, last_user)


def _gemini_parts_texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    parts = content.get("parts") if isinstance(content, Mapping) else None
    return [p["text"] for p in parts or [] if isinstance(p, Mapping) and isinstance(p.get("text"), str)]


def _gemini_prompt(body: Mapping[str, Any]) -> _Prompt:
    body = _gfield(body, "generateContentRequest") or body  # countTokens may wrap the request
    texts = _gemini_parts_texts(_gfield(body, "systemInstruction") or {})
    last_user = ""
    for content in body.get("contents") or []:
        parts = _gemini_parts_texts(content)
        texts += parts
        if (not isinstance(content, Mapping) or content.get("role", "user") == "user") and parts:
            last_user = " ".join(parts)
    return _Prompt(texts, last_user)


# --------------------------------------------------------------------------------------------------
# Routing
# --------------------------------------------------------------------------------------------------


@dataclass
class _Route:
    kind: str
    vendor: str
    backend: str
    model: str | None = None


_GOOGLE_ACTION = re.compile(r"/models/(?P<model>[^/:]+):(?P<action>[A-Za-z]+)$")
_GEMINI_KINDS = {
    "generateContent": "gemini.generate_content",
    "streamGenerateContent": "gemini.stream_generate_content",
    "countTokens": "gemini.count_tokens",
    "embedContent": "gemini.embed_content",
    "batchEmbedContents": "gemini.embed_content",
    "predict": "gemini.embed_content",
}


# InvokeModel; its streaming twin (invoke-with-response-stream) answers in AWS's binary event-stream
# framing, which the SDK decodes with botocore: not served (404)
_BEDROCK_INVOKE = re.compile(r"/model/(?P<model>[^/]+)/invoke$")


def _route(method: str, path: str) -> _Route:
    """Map a request to an endpoint kind by the end of its path (any base URL prefix works)."""
    path = path.rstrip("/")
    google = _GOOGLE_ACTION.search(path)
    if google and method == "POST":
        model, action = google["model"], google["action"]
        if "/publishers/anthropic/" in path:  # Claude on Vertex AI
            if model == "count-tokens":
                return _Route("anthropic.count_tokens", "anthropic", "vertex")
            if action in ("rawPredict", "streamRawPredict"):
                return _Route("anthropic.messages", "anthropic", "vertex", model)
        elif action in _GEMINI_KINDS:
            backend = "vertex" if "/projects/" in path else "gemini"
            return _Route(_GEMINI_KINDS[action], "gemini", backend, model)
    bedrock = _BEDROCK_INVOKE.search(path)
    if bedrock and method == "POST":  # Claude on Bedrock (InvokeModel): the model is in the path
        return _Route("anthropic.messages", "anthropic", "bedrock", unquote(bedrock["model"]))
    backend = "azure" if "/openai/deployments/" in path or path.startswith("/openai/") else "openai"
    deployment = re.search(r"/openai/deployments/([^/]+)/", path)
    model = deployment.group(1) if deployment else None
    if method == "POST":
        for suffix, kind in (
            ("/chat/completions", "openai.chat"),
            ("/completions", "openai.completions"),
            ("/embeddings", "openai.embeddings"),
            ("/responses", "openai.responses"),
        ):
            if path.endswith(suffix):
                return _Route(kind, "openai", backend, model)
        if path.endswith("/messages"):
            return _Route("anthropic.messages", "anthropic", "anthropic")
        if path.endswith("/messages/count_tokens"):
            return _Route("anthropic.count_tokens", "anthropic", "anthropic")
    stored = re.search(r"/responses/(resp_[^/]+)$", path)
    if stored and method in ("GET", "DELETE"):
        kind = "openai.responses.retrieve" if method == "GET" else "openai.responses.delete"
        return _Route(kind, "openai", backend)
    return _Route("unknown", "unknown", "unknown")


def _key_matches(key: str, request: RecordedRequest) -> bool:
    """Queue keys: ``"*"``, a path prefix (``"/v1/chat"``), a vendor (``"openai"``) or a kind prefix."""
    if key == "*":
        return True
    if key.startswith("/"):
        return request.path.startswith(key)
    return request.kind == key or request.kind.startswith(key + ".")


# --------------------------------------------------------------------------------------------------
# Vendor error bodies
# --------------------------------------------------------------------------------------------------

_OPENAI_ERRORS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "not_found"),
    408: ("timeout", None),
    409: ("conflict", None),
    429: ("tokens", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", None),
    503: ("server_error", None),
}
_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_MESSAGES = {
    408: "Request timed out.",
    429: "Rate limit reached. Please try again later.",
    500: "The server had an error while processing your request.",
    503: "Service unavailable.",
    529: "Overloaded",
}


def _error_body(vendor: str, status: int, reply: Reply | None) -> dict[str, Any]:
    message = (reply and reply.message) or _MESSAGES.get(status, f"Local test server error {status}.")
    error_type = reply.error_type if reply else None
    if vendor == "anthropic":
        kind = error_type or _ANTHROPIC_ERRORS.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_local"}
    if vendor == "gemini":
        error: dict[str, Any] = {
            "code": status,
            "message": message,
            "status": error_type or _GOOGLE_STATUS.get(status, "UNKNOWN"),
        }
        if reply and reply.retry_delay:
            error["details"] = [
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": reply.retry_delay}
            ]
        return {"error": error}
    default_type, code = _OPENAI_ERRORS.get(status, ("server_error", None))
    return {"error": {"message": message, "type": error_type or default_type, "param": None, "code": code}}


# --------------------------------------------------------------------------------------------------
# Building answers
# --------------------------------------------------------------------------------------------------


class _Answer:
    """Shared context for building one default answer."""

    def __init__(self, server: LocalAPIServer, request: RecordedRequest, reply: Reply | None) -> None:
        self.server = server
        self.request = request
        self.reply = reply
        self.body: Mapping[str, Any] = request.json if isinstance(request.json, Mapping) else {}

    @property
    def usage_override(self) -> Mapping[str, Any]:
        return (self.reply.usage if self.reply else None) or {}

    def model(self, fallback: str = "local-model") -> str:
        if self.reply and self.reply.model:
            return self.reply.model
        requested = self.request.model or fallback
        return self.server.response_models.get(requested, requested)

    def reply_text(self, user_text: str, schema: Any = None, json_mode: bool = False) -> str:
        if self.reply and self.reply.text is not None:
            return self.reply.text
        if schema is not None:
            return json.dumps(sample_from_schema(schema))
        if json_mode:
            return json.dumps({"reply": default_reply_text(user_text)})
        return default_reply_text(user_text)

    def response(self, **fields: Any) -> SentResponse:
        return SentResponse(
            kind=self.request.kind, status=200, headers={}, scripted=self.reply is not None, **fields
        )


def _sse(events: Iterable[SSEEvent], newline: str = "\n") -> list[bytes]:
    return [e.encode(newline) for e in events]


# ---- OpenAI ---------------------------------------------------------------------------------------


def _openai_usage(a: _Answer, prompt: int, output: int, *, details: bool = True) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
    }
    if details:
        usage["prompt_tokens_details"] = {"cached_tokens": 0, "audio_tokens": 0}
        usage["completion_tokens_details"] = {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        }
    override = a.usage_override
    usage = _deep_merge(usage, override)
    if not _has(override, "completion_tokens"):
        usage["completion_tokens"] = output + (
            _get(usage, "completion_tokens_details", "reasoning_tokens") or 0
        )
    if not _has(override, "total_tokens"):
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return usage


def _openai_chat(a: _Answer) -> SentResponse:
    body = a.body
    prompt = _openai_chat_prompt(body)
    fmt = body.get("response_format") or {}
    schema = _get(fmt, "json_schema", "schema", default={}) if fmt.get("type") == "json_schema" else None
    text = a.reply_text(prompt.last_user, schema, fmt.get("type") == "json_object")
    text, cut = _truncate(text, body.get("max_completion_tokens", body.get("max_tokens")))
    finish = "length" if cut else "stop"
    usage = (
        None
        if a.reply and a.reply.omit_usage
        else _openai_usage(a, prompt.words + PROMPT_OVERHEAD, word_count(text))
    )
    rid, created, model = a.server._new_id("chatcmpl-local"), int(time.time()), a.model("gpt-4o-mini")
    head = {"id": rid, "object": "chat.completion", "created": created, "model": model}
    tail = {"service_tier": _served_tier(body), "system_fingerprint": "fp_local"}
    if not a.request.stream:
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
        doc = {
            **head,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        }
        if usage is not None:
            doc["usage"] = usage
        return a.response(json={**doc, **tail}, usage=usage, text=text, model=model, response_id=rid)

    include_usage = bool(_get(body, "stream_options", "include_usage")) and usage is not None
    head = {**head, "object": "chat.completion.chunk", **tail}

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> SSEEvent:
        doc = {
            **head,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        return SSEEvent(None, {**doc, "usage": None} if include_usage else doc)

    events = [chunk({"role": "assistant", "content": "", "refusal": None})]
    events += [chunk({"content": piece}) for piece in _pieces(text)]
    events.append(chunk({}, finish))
    if include_usage:
        events.append(SSEEvent(None, {**head, "choices": [], "usage": usage}))
    events.append(SSEEvent(None, "[DONE]"))
    return a.response(
        stream=True,
        events=events,
        usage=usage if include_usage else None,
        usage_pieces=[usage] if include_usage and usage else [],
        text=text,
        model=model,
        response_id=rid,
    )


def _openai_completions(a: _Answer) -> SentResponse:
    body = a.body
    texts = _raw_input_texts(body.get("prompt"))
    text = a.reply_text(texts[-1] if texts else "")
    text, cut = _truncate(text, body.get("max_tokens", 16))
    finish = "length" if cut else "stop"
    prompt_tokens = sum(map(word_count, texts)) + PROMPT_OVERHEAD
    usage = (
        None
        if a.reply and a.reply.omit_usage
        else _openai_usage(a, prompt_tokens, word_count(text), details=False)
    )
    rid, model = a.server._new_id("cmpl-local"), a.model("gpt-3.5-turbo-instruct")
    head = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model}

    def choice(piece: str, finish_reason: str | None) -> dict[str, Any]:
        return {"text": piece, "index": 0, "logprobs": None, "finish_reason": finish_reason}

    if not a.request.stream:
        doc = {**head, "choices": [choice(text, finish)]}
        if usage is not None:
            doc["usage"] = usage
        return a.response(json=doc, usage=usage, text=text, model=model, response_id=rid)
    include_usage = bool(_get(body, "stream_options", "include_usage")) and usage is not None
    extra = {"usage": None} if include_usage else {}
    events = [SSEEvent(None, {**head, "choices": [choice(p, None)], **extra}) for p in _pieces(text)]
    events.append(SSEEvent(None, {**head, "choices": [choice("", finish)], **extra}))
    if include_usage:
        events.append(SSEEvent(None, {**head, "choices": [], "usage": usage}))
    events.append(SSEEvent(None, "[DONE]"))
    return a.response(
        stream=True,
        events=events,
        usage=usage if include_usage else None,
        usage_pieces=[usage] if include_usage and usage else [],
        text=text,
        model=model,
        response_id=rid,
    )


def _openai_embeddings(a: _Answer) -> SentResponse:
    body = a.body
    inputs = body.get("input")
    items = (
        [inputs]
        if isinstance(inputs, str)
        or (isinstance(inputs, list) and inputs and all(isinstance(v, int) for v in inputs))
        else list(inputs or [])
    )
    dims = body.get("dimensions") or DEFAULT_EMBEDDING_DIMENSIONS
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for i, item in enumerate(items):
        vector = _embedding(" ".join(_raw_input_texts(item)), dims)
        data.append(
            {
                "object": "embedding",
                "index": i,
                "embedding": _embedding_base64(vector) if as_base64 else vector,
            }
        )
    tokens = sum(word_count(t) for t in _raw_input_texts(items))
    usage = _deep_merge({"prompt_tokens": tokens, "total_tokens": tokens}, a.usage_override)
    doc: dict[str, Any] = {"object": "list", "data": data, "model": a.model("text-embedding-3-small")}
    if not (a.reply and a.reply.omit_usage):
        doc["usage"] = usage
    return a.response(json=doc, usage=doc.get("usage"), model=doc["model"])


def _responses_object(a: _Answer) -> dict[str, Any]:
    """A complete Responses API ``response`` object for the request."""
    body = a.body
    prompt = _responses_prompt(body)
    fmt = _get(body, "text", "format") or {"type": "text"}
    schema = fmt.get("schema", {}) if fmt.get("type") == "json_schema" else None
    text = a.reply_text(prompt.last_user, schema, fmt.get("type") == "json_object")
    text, cut = _truncate(text, body.get("max_output_tokens"))
    rid, now = a.server._new_id("resp_local"), int(time.time())
    output_words = word_count(text)
    usage: dict[str, Any] = {
        "input_tokens": prompt.words + PROMPT_OVERHEAD,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_words,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 0,
    }
    override = a.usage_override
    usage = _deep_merge(usage, override)
    if not _has(override, "output_tokens"):
        usage["output_tokens"] = output_words + (
            _get(usage, "output_tokens_details", "reasoning_tokens") or 0
        )
    if not _has(override, "total_tokens"):
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
    message = {
        "id": a.server._new_id("msg_local"),
        "type": "message",
        "status": "completed",
        "content": [part],
        "role": "assistant",
    }
    return {
        "id": rid,
        "object": "response",
        "created_at": now,
        "status": "incomplete" if cut else "completed",
        "background": False,
        "completed_at": now,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": a.model("gpt-4o-mini"),
        "output": [message],
        "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": {"effort": _get(body, "reasoning", "effort"), "summary": None},
        "safety_identifier": None,
        "service_tier": _served_tier(body),
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": fmt, "verbosity": "medium"},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []),
        "top_logprobs": 0,
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": None if a.reply and a.reply.omit_usage else usage,
        "user": None,
        "metadata": body.get("metadata") or {},
    }


def _responses_events(final: Mapping[str, Any]) -> list[SSEEvent]:
    """The Responses API stream that builds ``final`` (created, in_progress, items, completed)."""
    seq = itertools.count()
    events: list[SSEEvent] = []

    def emit(kind: str, **payload: Any) -> None:
        events.append(SSEEvent(kind, {"type": kind, **payload, "sequence_number": next(seq)}))

    pending = {
        **copy.deepcopy(dict(final)),
        "status": "in_progress",
        "completed_at": None,
        "output": [],
        "usage": None,
        "incomplete_details": None,
    }
    emit("response.created", response=pending)
    emit("response.in_progress", response=pending)
    for out_index, item in enumerate(final["output"]):
        if item.get("type") != "message":
            emit("response.output_item.added", item=item, output_index=out_index)
            emit("response.output_item.done", item=item, output_index=out_index)
            continue
        ids = {"item_id": item["id"], "output_index": out_index}
        emit(
            "response.output_item.added",
            item={**item, "status": "in_progress", "content": []},
            output_index=out_index,
        )
        for c_index, part in enumerate(item["content"]):
            emit("response.content_part.added", content_index=c_index, **ids, part={**part, "text": ""})
            for piece in _pieces(part.get("text", "")):
                emit("response.output_text.delta", content_index=c_index, delta=piece, **ids, logprobs=[])
            emit(
                "response.output_text.done",
                content_index=c_index,
                **ids,
                logprobs=[],
                text=part.get("text", ""),
            )
            emit("response.content_part.done", content_index=c_index, **ids, part=part)
        emit("response.output_item.done", item=item, output_index=out_index)
    emit(f"response.{final['status']}", response=final)
    return events


def _responses_answer(a: _Answer, final: Mapping[str, Any], events: list[SSEEvent] | None,
                      **fields: Any) -> SentResponse:
    """``final`` sent as JSON, or, given ``events``, as that SSE stream: what create and retrieve share."""
    usage = final["usage"]
    fields.update(usage=usage, model=final["model"], response_id=final["id"])
    if events is None:
        return a.response(json=final, **fields)
    return a.response(stream=True, events=events, usage_pieces=[usage] if usage else [], **fields)


def _openai_responses(a: _Answer) -> SentResponse:
    final = _responses_object(a)
    a.server._store_response(final)
    events = _responses_events(final) if a.request.stream else None
    return _responses_answer(a, final, events, text=final["output"][0]["content"][0]["text"])


def _openai_responses_retrieve(a: _Answer) -> SentResponse:
    final = a.server._stored_response(a.request.path.rstrip("/").rsplit("/", 1)[-1])
    if final is None:
        return _error(a, 404, "No response found with that id.")
    if a.request.method == "DELETE":
        a.server._delete_response(final["id"])
        deleted = {"id": final["id"], "object": "response.deleted", "deleted": True}
        return a.response(json=deleted, usage=final["usage"], model=final["model"], response_id=final["id"])
    if not a.request.stream:
        return _responses_answer(a, final, None)
    events = _responses_events(final)
    after = a.request.query.get("starting_after")  # a resumed stream: the events after that one
    if after is not None and after.lstrip("-").isdigit():
        events = [e for e in events if e.data["sequence_number"] > int(after)]
    return _responses_answer(a, final, events)


# ---- Anthropic ------------------------------------------------------------------------------------


def _served_tier(body: Mapping[str, Any]) -> str:
    """The service tier an OpenAI response reports: the one asked for, ``default`` for ``auto``."""
    asked = body.get("service_tier")
    return asked if isinstance(asked, str) and asked not in ("auto", "") else "default"


def _anthropic_usage(a: _Answer, prompt: int, output: int, thinking: int) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "input_tokens": prompt,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": output + thinking,
        "service_tier": "standard",
    }
    if thinking:
        usage["output_tokens_details"] = {"thinking_tokens": thinking}
    override = a.usage_override
    usage = _deep_merge(usage, override)
    if _has(override, "cache_creation_input_tokens") and not _has(override, "cache_creation"):
        usage["cache_creation"] = {
            "ephemeral_5m_input_tokens": usage["cache_creation_input_tokens"] or 0,
            "ephemeral_1h_input_tokens": 0,
        }
    if not _has(override, "output_tokens"):
        usage["output_tokens"] = output + (_get(usage, "output_tokens_details", "thinking_tokens") or 0)
    return usage


def _anthropic_json_schema(body: Mapping[str, Any]) -> Any:
    for fmt in (_get(body, "output_config", "format"), body.get("output_format")):
        if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
            return fmt.get("schema", {})
    return None


def _anthropic_messages(a: _Answer) -> SentResponse:
    body = a.body
    prompt = _anthropic_prompt(body)
    text = a.reply_text(prompt.last_user, _anthropic_json_schema(body))
    text, cut = _truncate(text, body.get("max_tokens"))
    thinking_on = _get(body, "thinking", "type") in ("enabled", "adaptive")
    thinking = _thinking_text(prompt.last_user) if thinking_on else ""
    usage = _anthropic_usage(a, prompt.words + PROMPT_OVERHEAD, word_count(text), word_count(thinking))
    omit = bool(a.reply and a.reply.omit_usage)
    mid, model = a.server._new_id("msg_local"), a.model("claude-sonnet-4-5")
    stop_reason = "max_tokens" if cut else "end_turn"
    blocks: list[dict[str, Any]] = []
    if thinking_on:
        blocks.append({"type": "thinking", "thinking": thinking, "signature": _THINKING_SIGNATURE})
    blocks.append({"type": "text", "text": text})
    message = {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": blocks,
        "stop_reason": stop_reason,
        "stop_sequence": None,
    }
    common = {"text": text, "model": model, "response_id": mid}
    if not a.request.stream:
        doc = {**message, **({} if omit else {"usage": usage})}
        return a.response(json=doc, usage=None if omit else usage, **common)

    start_usage = {**usage, "output_tokens": 1}
    start_usage.pop("output_tokens_details", None)
    delta_usage = _anthropic_delta_usage(a, usage)
    events = [
        SSEEvent(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    **message,
                    "content": [],
                    "stop_reason": None,
                    **({} if omit else {"usage": start_usage}),
                },
            },
        )
    ]
    for index, block in enumerate(blocks):
        empty = (
            {"type": "thinking", "thinking": "", "signature": ""}
            if block["type"] == "thinking"
            else {"type": "text", "text": ""}
        )
        events.append(
            SSEEvent(
                "content_block_start", {"type": "content_block_start", "index": index, "content_block": empty}
            )
        )
        if index == 0:  # the API pings once, right after the first block starts
            events.append(SSEEvent("ping", {"type": "ping"}))
        if block["type"] == "thinking":
            events += [
                SSEEvent(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "thinking_delta", "thinking": p},
                    },
                )
                for p in _pieces(block["thinking"])
            ]
            events.append(
                SSEEvent(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "signature_delta", "signature": block["signature"]},
                    },
                )
            )
        else:
            events += [
                SSEEvent(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": p},
                    },
                )
                for p in _pieces(block["text"])
            ]
        events.append(SSEEvent("content_block_stop", {"type": "content_block_stop", "index": index}))
    delta = {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None}}
    events.append(SSEEvent("message_delta", {**delta, **({} if omit else {"usage": delta_usage})}))
    events.append(SSEEvent("message_stop", {"type": "message_stop"}))
    merged = None if omit else {**start_usage, **delta_usage}
    return a.response(
        stream=True,
        events=events,
        usage=merged,
        usage_pieces=[] if omit else [start_usage, delta_usage],
        **common,
    )


def _anthropic_delta_usage(a: _Answer, usage: Mapping[str, Any]) -> dict[str, Any]:
    """The ``message_delta`` usage: cumulative output, plus (by default) repeated input/cache counts."""
    choice = a.reply.delta_usage if a.reply else None
    if choice == "output_only":
        delta: dict[str, Any] = {"output_tokens": usage["output_tokens"]}
    elif isinstance(choice, Mapping):
        delta = {"output_tokens": usage["output_tokens"], **copy.deepcopy(dict(choice))}
    else:
        delta = {
            key: usage[key]
            for key in (
                "input_tokens",
                "cache_creation_input_tokens",
                "cache_read_input_tokens",
                "output_tokens",
            )
            if key in usage
        }
    if "output_tokens_details" in usage and not isinstance(choice, Mapping):
        delta["output_tokens_details"] = usage["output_tokens_details"]
    return delta


def _anthropic_count_tokens(a: _Answer) -> SentResponse:
    tokens = _anthropic_prompt(a.body).words + PROMPT_OVERHEAD
    doc = _deep_merge({"input_tokens": tokens}, a.usage_override)
    return a.response(json=doc, usage=doc)


# ---- Gemini / Vertex AI ---------------------------------------------------------------------------


def _gemini_usage(a: _Answer, prompt: int, candidates: int, thoughts: int) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": 0,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    }
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    if a.request.backend == "vertex":
        usage["candidatesTokensDetails"] = [{"modality": "TEXT", "tokenCount": candidates}]
        usage["trafficType"] = "ON_DEMAND"
    override = a.usage_override
    usage = _deep_merge(usage, override)
    if not _has(override, "totalTokenCount"):
        usage["totalTokenCount"] = _gemini_total(usage)
    return usage


def _gemini_total(usage: Mapping[str, Any]) -> int:
    keys = ("promptTokenCount", "candidatesTokenCount", "thoughtsTokenCount", "toolUsePromptTokenCount")
    return sum(usage.get(key) or 0 for key in keys)


def _gemini_generate(a: _Answer) -> SentResponse:
    body = a.body
    config = _gfield(body, "generationConfig") or {}
    prompt = _gemini_prompt(body)
    schema = _gfield(config, "responseJsonSchema") or _gfield(config, "responseSchema")
    json_mode = _gfield(config, "responseMimeType") == "application/json"
    text = a.reply_text(prompt.last_user, schema if schema is not None else None, json_mode)
    text, cut = _truncate(text, _gfield(config, "maxOutputTokens"))
    thinking_config = _gfield(config, "thinkingConfig")
    thinking_on = isinstance(thinking_config, Mapping) and _gfield(thinking_config, "thinkingBudget") != 0
    thought = _thinking_text(prompt.last_user) if thinking_on else ""
    show_thoughts = thinking_on and bool(_gfield(thinking_config, "includeThoughts"))
    usage = _gemini_usage(a, prompt.words + PROMPT_OVERHEAD, word_count(text), word_count(thought))
    omit = bool(a.reply and a.reply.omit_usage)
    model = a.model("gemini-2.5-flash")
    rid = a.server._new_id("local-")
    vertex = a.request.backend == "vertex"
    tail: dict[str, Any] = {"modelVersion": model}
    if vertex:
        tail["createTime"] = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    tail["responseId"] = rid
    finish = "MAX_TOKENS" if cut else "STOP"

    def document(parts: list[dict[str, Any]], finish_reason: str | None, chunk_usage: Any) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
        if finish_reason:
            candidate["finishReason"] = finish_reason
        if not vertex:
            candidate["index"] = 0
        doc: dict[str, Any] = {"candidates": [candidate]}
        if chunk_usage is not None:
            doc["usageMetadata"] = chunk_usage
        return {**doc, **tail}

    thought_parts = [{"text": thought, "thought": True}] if show_thoughts else []
    common = {"text": text, "model": model, "response_id": rid}
    if a.request.kind == "gemini.generate_content":
        doc = document(thought_parts + [{"text": text}], finish, None if omit else usage)
        return a.response(json=doc, usage=None if omit else usage, **common)

    # Stream: optional thought chunk, one chunk per word, finishReason on the last; usage repeated.
    parts_per_chunk = [[p] for p in thought_parts] + [[{"text": piece}] for piece in _pieces(text) or [""]]
    every = not (a.reply and a.reply.stream_usage == "last")
    events, pieces, words_so_far = [], [], 0
    for i, parts in enumerate(parts_per_chunk):
        last = i == len(parts_per_chunk) - 1
        if not parts[0].get("thought"):
            words_so_far += word_count(str(parts[0]["text"]))
        chunk_usage: dict[str, Any] | None = None
        if not omit and (every or last):
            chunk_usage = usage if last else _gemini_partial_usage(a, usage, words_so_far)
            pieces.append(chunk_usage)
        events.append(SSEEvent(None, document(parts, finish if last else None, chunk_usage)))
    return a.response(
        stream=True, events=events, usage=None if omit else usage, usage_pieces=pieces, **common
    )


def _gemini_partial_usage(a: _Answer, usage: Mapping[str, Any], words_so_far: int) -> dict[str, Any]:
    """Usage of a non-final stream chunk: candidates so far (the API leaves out a zero count)."""
    partial = {k: v for k, v in usage.items() if k not in ("candidatesTokenCount", "candidatesTokensDetails")}
    candidates = min(words_so_far, usage.get("candidatesTokenCount") or 0)
    if candidates:
        partial["candidatesTokenCount"] = candidates
    if not _has(a.usage_override, "totalTokenCount"):
        partial["totalTokenCount"] = _gemini_total(partial)
    return partial


def _gemini_count_tokens(a: _Answer) -> SentResponse:
    prompt = _gemini_prompt(a.body)
    tokens = prompt.words + PROMPT_OVERHEAD
    doc: dict[str, Any] = {"totalTokens": tokens}
    if a.request.backend == "vertex":
        doc["totalBillableCharacters"] = sum(len(t.replace(" ", "")) for t in prompt.texts)
    else:
        doc["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": tokens}]
    doc = _deep_merge(doc, a.usage_override)
    return a.response(json=doc, usage=doc)


def _gemini_embed(a: _Answer) -> SentResponse:
    """batchEmbedContents / embedContent (Gemini API and Vertex) and Vertex ``:predict``."""
    body = a.body
    omit = bool(a.reply and a.reply.omit_usage)
    path = a.request.path
    if path.endswith(":predict"):  # Vertex text-embedding models
        dims = _gfield(body.get("parameters"), "outputDimensionality") or DEFAULT_EMBEDDING_DIMENSIONS
        predictions, chars = [], 0
        for instance in body.get("instances") or []:
            text = " ".join(_gemini_parts_texts(instance.get("content", "")))
            chars += len(text.replace(" ", ""))
            stats = _deep_merge({"truncated": False, "token_count": word_count(text)}, a.usage_override)
            predictions.append({"embeddings": {"values": _embedding(text, dims), "statistics": stats}})
        doc: dict[str, Any] = {"predictions": predictions, "metadata": {"billableCharacterCount": chars}}
        pieces = [p["embeddings"]["statistics"] for p in predictions]
        return a.response(json=doc, usage=doc["metadata"], usage_pieces=pieces, model=a.request.model)

    if path.endswith(":embedContent"):
        requests = [body]
    else:
        requests = list(body.get("requests") or [])
    vectors, tokens = [], 0
    for request in requests:
        text = " ".join(_gemini_parts_texts(request.get("content", {})))
        tokens += word_count(text)
        dims = (
            _gfield(request, "outputDimensionality")
            or _gfield(body, "outputDimensionality")
            or DEFAULT_EMBEDDING_DIMENSIONS
        )
        vectors.append({"values": _embedding(text, dims)})
    usage = _deep_merge({"promptTokenCount": tokens, "totalTokenCount": tokens}, a.usage_override)
    doc = {"embedding": vectors[0]} if path.endswith(":embedContent") else {"embeddings": vectors}
    if not omit:
        doc["usageMetadata"] = usage
    return a.response(json=doc, usage=None if omit else usage, model=a.request.model)


def _error(a: _Answer, status: int, message: str | None = None) -> SentResponse:
    reply = a.reply or Reply(status=status)
    if message and not reply.message:
        reply = Reply(
            status=status, message=message, error_type=reply.error_type, retry_delay=reply.retry_delay
        )
    vendor = a.request.vendor if a.request.vendor != "unknown" else "openai"
    return SentResponse(
        kind=a.request.kind,
        status=status,
        headers={},
        json=_error_body(vendor, status, reply),
        scripted=a.reply is not None,
    )


_BUILDERS: dict[str, Callable[[_Answer], SentResponse]] = {
    "openai.chat": _openai_chat,
    "openai.completions": _openai_completions,
    "openai.embeddings": _openai_embeddings,
    "openai.responses": _openai_responses,
    "openai.responses.retrieve": _openai_responses_retrieve,
    "openai.responses.delete": _openai_responses_retrieve,
    "anthropic.messages": _anthropic_messages,
    "anthropic.count_tokens": _anthropic_count_tokens,
    "gemini.generate_content": _gemini_generate,
    "gemini.stream_generate_content": _gemini_generate,
    "gemini.count_tokens": _gemini_count_tokens,
    "gemini.embed_content": _gemini_embed,
}

# Endpoints whose SSE events carry an ``event:`` line named after the payload's ``type``.
_NAMED_EVENT_KINDS = ("anthropic.", "openai.responses")


def _scripted_event(kind: str, item: Any) -> SSEEvent:
    if isinstance(item, SSEEvent):
        return item
    if isinstance(item, tuple) and len(item) == 2:
        return SSEEvent(item[0], item[1])
    if isinstance(item, Mapping) and kind.startswith(_NAMED_EVENT_KINDS) and "type" in item:
        return SSEEvent(str(item["type"]), dict(item))
    return SSEEvent(None, item)


def _split_sse(raw: bytes) -> list[bytes]:
    """Split a recorded SSE body into events, keeping every byte (separators stay with their event)."""
    parts = re.split(rb"(\r\n\r\n|\n\n|\r\r)", raw)
    chunks = [parts[i] + (parts[i + 1] if i + 1 < len(parts) else b"") for i in range(0, len(parts), 2)]
    return [c for c in chunks if c]


def _parse_sse(chunks: Iterable[bytes]) -> list[SSEEvent]:
    events = []
    for chunk in chunks:
        name, data = None, []
        for line in chunk.decode("utf-8", "replace").splitlines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if data:
            text = "\n".join(data)
            try:
                events.append(SSEEvent(name, json.loads(text)))
            except ValueError:
                events.append(SSEEvent(name, text))
    return events


# --------------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], api: LocalAPIServer) -> None:
        self.api = api
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn), slow or hanging offline: skip it.
        socketserver.TCPServer.server_bind(self)
        host, self.server_port = self.server_address[:2]
        self.server_name = host if isinstance(host, str) else host.decode()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients dropping pooled keep-alive connections is normal: keep that out of stderr, but
        # report anything else (e.g. a scripted reply callable that raised).
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            _log.debug("connection from %s ended: %r", client_address, error)
        else:
            _log.error("local test server failed answering %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so the SDKs' connection pools are exercised
    disable_nagle_algorithm = True  # small SSE writes must leave at once for real time-to-first-chunk
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.api._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.api._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        _log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            data = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(data)
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def _dispatch(self) -> None:
        api = self.server.api
        raw = self._read_body()
        request = api._record(self.command, self.path, self.headers.items(), raw, self.client_address[1])
        entry = api._take_reply(request)
        reply = entry(request) if callable(entry) else entry
        if reply is not None and reply.delay:
            time.sleep(reply.delay)
        sent = api._build(request, reply)
        request.response = sent
        try:
            if sent.stream:
                self._send_stream(sent, reply)
            else:
                self._send_body(sent)
        except OSError:  # the client went away (broken pipe, reset...)
            sent.completed = False
            self.close_connection = True

    def _send_head(self, sent: SentResponse) -> None:
        self.send_response(sent.status)
        for name, value in sent.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

    def _send_body(self, sent: SentResponse) -> None:
        self._send_head(sent)
        # Marked before the last write so a client that has read everything never sees it unset.
        sent.completed = True
        if self.command != "HEAD":
            self.wfile.write(sent.raw)

    def _send_stream(self, sent: SentResponse, reply: Reply | None) -> None:
        self._send_head(sent)
        delay = reply.event_delay if reply else 0.0
        abort_after = reply.abort_after if reply else None
        last = len(sent.chunks) - 1
        for index, chunk in enumerate(sent.chunks):
            if abort_after is not None and index >= abort_after:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)  # a dropped stream: no terminating chunk
                return
            if index and delay:
                time.sleep(delay)
            # One HTTP chunk per event, written straight to the socket (wfile is unbuffered); the
            # last event goes out together with the terminating chunk.
            data = b"%x\r\n%s\r\n" % (len(chunk), chunk)
            if index == last:
                sent.completed = True
                data += b"0\r\n\r\n"
            self.wfile.write(data)
        if last < 0:
            sent.completed = True
            self.wfile.write(b"0\r\n\r\n")


# --------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------


class LocalAPIServer:
    """A local OpenAI + Anthropic + Gemini endpoint on ``127.0.0.1`` (see the module docstring).

    Use it as a context manager, or call :meth:`start` and :meth:`stop`::

        with LocalAPIServer() as server:
            client = openai.OpenAI(api_key="test", base_url=server.url + "/v1")
            client.chat.completions.create(model="gpt-4o-mini", messages=[...])
            assert server.responses[0].usage["prompt_tokens"] == ...
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        default_headers: Mapping[str, str] | None = None,
        response_models: Mapping[str, str] | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        #: Headers added to every response (e.g. rate-limit headers); a Reply's headers win.
        self.default_headers: dict[str, str] = dict(default_headers or {})
        #: Request model -> model reported in responses (e.g. ``{"gpt-4o": "gpt-4o-2024-11-20"}``).
        self.response_models: dict[str, str] = dict(response_models or {})
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._queue: list[tuple[str, ReplyLike]] = []
        self._stored: dict[str, dict[str, Any]] = {}
        self._connections: set[socket.socket] = set()
        self._ids = itertools.count(1)
        self._httpd: _HTTPServer | None = None
        self._port: int | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle --------------------------------------------------------------------------------

    def start(self) -> LocalAPIServer:
        """Bind (a free port unless one was given) and serve on a daemon thread."""
        if self._httpd is not None:
            return self
        self._httpd = _HTTPServer((self.host, self._requested_port), self)
        self._port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"LocalAPIServer:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every open (keep-alive) connection."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:  # wakes handler threads blocked waiting for the next keep-alive request
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> LocalAPIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (still readable after :meth:`stop`)."""
        if self._port is None:
            raise RuntimeError("LocalAPIServer has not been started")
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash, no version segment)."""
        return f"http://{self.host}:{self.port}"

    # ---- records ----------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received, oldest first (a snapshot)."""
        with self._lock:
            return list(self._requests)

    @property
    def responses(self) -> list[SentResponse | None]:
        """``responses[i]`` is what was sent for ``requests[i]`` (None while still being built)."""
        return [r.response for r in self.requests]

    @property
    def last_request(self) -> RecordedRequest:
        return self.requests[-1]

    @property
    def last_response(self) -> SentResponse | None:
        return self.requests[-1].response

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Wait until at least ``count`` requests have been answered (for async / threaded tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            requests = self.requests
            if len(requests) >= count and all(r.response and r.response.completed for r in requests[:count]):
                return requests
            time.sleep(0.005)
        raise TimeoutError(f"expected {count} answered requests, saw {len(self.requests)}")

    def clear(self) -> None:
        """Forget recorded requests and responses (scripted replies stay queued)."""
        with self._lock:
            self._requests.clear()

    def reset(self) -> None:
        """Forget records, queued replies, stored Responses-API objects and default headers."""
        with self._lock:
            self._requests.clear()
            self._queue.clear()
            self._stored.clear()
        self.default_headers.clear()

    # ---- scripting --------------------------------------------------------------------------------

    def enqueue(self, key: str, *replies: ReplyLike) -> None:
        """Queue replies for requests matching ``key``; they are used in order, then defaults resume.

        ``key`` is ``"*"`` (any request), a path prefix (``"/v1/chat/completions"``), a vendor
        (``"openai"``, ``"anthropic"``, ``"gemini"``) or an endpoint kind (``"openai.chat"``,
        ``"openai.responses"``, ``"anthropic.messages"``, ``"gemini.stream_generate_content"``...).
        A reply may also be a callable taking the :class:`RecordedRequest` and returning a Reply.
        """
        with self._lock:
            self._queue.extend((key, reply) for reply in replies)

    def replay(self, key: str, file: str | Path, **options: Any) -> None:
        """Queue a recorded body (e.g. from shared/real-responses) to be sent verbatim."""
        self.enqueue(key, Reply.from_file(file, **options))

    def pending(self, key: str | None = None) -> int:
        """Number of queued replies (for ``key`` only, when given)."""
        with self._lock:
            return sum(1 for k, _ in self._queue if key is None or k == key)

    # ---- client factories (lazy imports: the SDKs are optional) -----------------------------------

    def openai_client(self, *, async_: bool = False, **kwargs: Any) -> Any:
        import openai

        cls = openai.AsyncOpenAI if async_ else openai.OpenAI
        return cls(**{"api_key": "test", "base_url": self.url + "/v1", **kwargs})

    def azure_openai_client(self, *, async_: bool = False, **kwargs: Any) -> Any:
        import openai

        cls = openai.AsyncAzureOpenAI if async_ else openai.AzureOpenAI
        return cls(**{"api_key": "test", "api_version": "2024-10-21", "azure_endpoint": self.url, **kwargs})

    def anthropic_client(self, *, async_: bool = False, **kwargs: Any) -> Any:
        import anthropic

        cls = anthropic.AsyncAnthropic if async_ else anthropic.Anthropic
        return cls(**{"api_key": "test", "base_url": self.url, **kwargs})

    def genai_client(self, *, vertexai: bool = False, **kwargs: Any) -> Any:
        """A google-genai client for the Gemini API, or Vertex AI with offline credentials."""
        from google import genai
        from google.genai import types

        http_options = kwargs.pop("http_options", None) or types.HttpOptions()
        if isinstance(http_options, Mapping):
            http_options = types.HttpOptions(**http_options)
        if not http_options.base_url:  # keep the caller's other options (retry_options, timeout...)
            http_options = http_options.model_copy(update={"base_url": self.url})
        options = {"http_options": http_options, **kwargs}
        if vertexai:
            options = {
                "vertexai": True,
                "project": "local-project",
                "location": "us-central1",
                "credentials": offline_google_credentials(),
                **options,
            }
        else:
            options = {"api_key": "test", **options}
        return genai.Client(**options)

    # ---- internals used by the handler ------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):06d}"

    def _track(self, conn: socket.socket, alive: bool) -> None:
        with self._lock:
            (self._connections.add if alive else self._connections.discard)(conn)

    def _store_response(self, response: dict[str, Any]) -> None:
        with self._lock:
            self._stored[response["id"]] = response

    def _stored_response(self, response_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._stored.get(response_id)

    def _delete_response(self, response_id: str) -> None:
        with self._lock:
            self._stored.pop(response_id, None)

    def _record(
        self, method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes, client_port: int
    ) -> RecordedRequest:
        parts = urlsplit(target)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        route = _route(method, parts.path)
        model = route.model
        if isinstance(parsed, Mapping) and isinstance(parsed.get("model"), str) and route.vendor != "gemini":
            model = route.model if route.backend == "azure" and route.model else parsed["model"]
        if route.kind.startswith("gemini.") or route.kind == "openai.responses.retrieve":
            stream = route.kind == "gemini.stream_generate_content" or query.get("stream") == "true"
        else:
            stream = bool(isinstance(parsed, Mapping) and parsed.get("stream"))
        with self._lock:
            request = RecordedRequest(
                index=len(self._requests),
                method=method,
                path=parts.path,
                query=query,
                headers={k.lower(): v for k, v in headers},
                body=body,
                json=parsed,
                kind=route.kind,
                vendor=route.vendor,
                backend=route.backend,
                model=model,
                stream=stream,
                client_port=client_port,
                received_at=time.monotonic(),
            )
            self._requests.append(request)
        return request

    def _take_reply(self, request: RecordedRequest) -> ReplyLike | None:
        with self._lock:
            for i, (key, reply) in enumerate(self._queue):
                if _key_matches(key, request):
                    del self._queue[i]
                    return reply
        return None

    def _build(self, request: RecordedRequest, reply: Reply | None) -> SentResponse:
        """Decide the whole response (recorded before a byte is sent, so tests never race it)."""
        answer = _Answer(self, request, reply)
        if request.kind == "unknown":
            sent = _error(answer, 404, f"Unknown endpoint {request.method} {request.path}")
        elif reply is not None and (reply.raw_body is not None or reply.body is not None or reply.events):
            sent = self._scripted(request, reply)
        elif reply is not None and reply.status >= 400:
            sent = _error(answer, reply.status)
        else:
            try:
                sent = _BUILDERS[request.kind](answer)
            except Exception as exc:  # a malformed request must not kill the connection silently
                _log.exception("local server could not answer %s", request.path)
                sent = _error(answer, 400, f"Local test server could not handle the request: {exc!r}")
            if reply is not None and sent.status == 200:
                sent.status = reply.status
        self._finish(request, sent, reply)
        return sent

    def _scripted(self, request: RecordedRequest, reply: Reply) -> SentResponse:
        sent = SentResponse(kind=request.kind, status=reply.status, headers={}, scripted=True)
        if reply.raw_body is not None:
            raw = reply.raw_body.encode() if isinstance(reply.raw_body, str) else reply.raw_body
            sent.headers["Content-Type"] = reply.content_type or "application/json"
            if "event-stream" in sent.headers["Content-Type"]:
                sent.stream, sent.chunks = True, _split_sse(raw)
                sent.events = _parse_sse(sent.chunks)
            else:
                sent.raw = raw
                try:
                    sent.json = json.loads(raw)
                except ValueError:
                    pass
        elif reply.events:
            sent.stream = True
            sent.events = [_scripted_event(request.kind, e) for e in reply.events]
        else:
            sent.json = reply.body
        if isinstance(sent.json, Mapping):
            usage = sent.json.get("usage", sent.json.get("usageMetadata"))
            sent.usage = usage if isinstance(usage, dict) else None
        return sent

    def _finish(self, request: RecordedRequest, sent: SentResponse, reply: Reply | None) -> None:
        """Encode the body and settle the headers (vendor defaults < server defaults < reply)."""
        if sent.stream and not sent.chunks:
            newline = "\r\n" if request.vendor == "gemini" else "\n"  # Google ends SSE lines with CRLF
            sent.chunks = _sse(sent.events, newline)
        if sent.stream:
            sent.raw = b"".join(sent.chunks)
        elif not sent.raw and sent.json is not None:
            sent.raw = json.dumps(sent.json).encode()
        headers: dict[str, str] = {}
        if "Content-Type" not in sent.headers:
            headers["Content-Type"] = (
                "text/event-stream; charset=utf-8" if sent.stream else "application/json"
            )
        request_id = f"req_local{request.index:06d}"
        if request.vendor == "openai":
            headers.update({"x-request-id": request_id, "openai-processing-ms": "1"})
            if request.backend == "azure":
                headers["apim-request-id"] = request_id
        elif request.vendor == "anthropic":
            headers["request-id"] = request_id
        headers.update(sent.headers)
        headers.update(self.default_headers)
        if reply is not None:
            headers.update(reply.headers)
        # Message framing is the server's business: drop any scripted framing header, then set ours.
        framing = {"content-length", "transfer-encoding"}
        headers = {k: v for k, v in headers.items() if k.lower() not in framing}
        if sent.stream:
            headers["Transfer-Encoding"] = "chunked"
            headers.setdefault("Cache-Control", "no-cache")
        else:
            headers["Content-Length"] = str(len(sent.raw))
        sent.headers = headers
