"""CPU overhead of tokenmetry per SDK call and per stream chunk, against hand-written yardsticks.

Every call goes through the real vendor SDK client (``openai.OpenAI``, ``anthropic.Anthropic``,
``google.genai.Client``) over an in-process ``httpx2.MockTransport`` that answers with realistic
bodies and headers (rate-limit headers included): a chat completion with usage details (1024 of the
1149 prompt tokens cached), a 50-chunk SSE stream whose usage chunk is sent only when the request
asks for it (``stream_options.include_usage``, as the real API does), and the Anthropic / Gemini
equivalents. No network, no sockets: what is measured is the CPU time of the SDK call in Python.

Modes (each in fresh processes of its own):

``bare``
    No instrumentation, measured against itself: an A/A control whose "added" cost is the noise.
``tokenmetry``
    tokenmetry with the OpenTelemetry SDK: ``TracerProvider`` + ``BatchSpanProcessor`` into an
    ``InMemorySpanExporter`` (the processor production set-ups use; ``--span-processor simple``
    for the synchronous one) and ``MeterProvider`` + ``InMemoryMetricReader``, passed as
    ``tokenmetry.instrument(tracer_provider=..., meter_provider=...)``.
``tokenmetry-nosdk``
    tokenmetry with no OpenTelemetry SDK anywhere in the process: sessions, statistics, costs.
``yardstick``
    A minimal hand-written wrapper around ``Completions.create`` / ``Messages.create`` /
    ``Models.generate_content[_stream]``: one current CLIENT span with the standard gen_ai
    attributes, ``gen_ai.client.token.usage`` (input, output) and ``gen_ai.client.operation.duration``
    into the same SDK providers; for streams it wraps the iterator to read the usage.
``floor`` (plain calls)
    The least any exact per-call account can do, with no OpenTelemetry: a wrapper around the
    resource method that notes when the call starts and keeps (model, response model, id, input
    and output tokens, duration) of each response in a list, emptied every 16 calls; no session,
    price, rate limit, stream or error handling. The lower bound for ``tokenmetry-nosdk``.
``floor-hooks`` (OpenAI plain calls)
    The floor taken where tokenmetry takes it: the client's ``request`` (the start, and the context
    variable that tells the inner hook which call runs) and ``_process_response`` (the header list),
    the two points that see every surface, the retry loop and the headers. Keeps the floor's tuple
    plus the header list; nothing else. What any account through those points costs at least.
``yardstick-full`` (OpenAI only)
    The yardstick made to emit exactly what tokenmetry emits (same span attributes, same metric
    points: cache-read token counter, cost counter, time-to-first-chunk, time per chunk; a
    hard-coded price). tokenmetry minus this one is tokenmetry's own machinery (sessions,
    statistics, rate limits, price lookup), not the telemetry volume SPEC §7 asks for.

Method (``--method paired``, the default): one process holds two clients of the same SDK, one bare
and one instrumented on that instance only (``tokenmetry.wrap(client)`` after
``tokenmetry.instrument(providers=[], tracer_provider=..., meter_provider=...)``, which sets the
options and patches nothing; the yardsticks wrap that client's resource method). Groups of
``--group`` calls (16) alternate bare / instrumented, the order flipped every pair, and each group's
CPU time is read with ``time.process_time`` (every thread of the process: the batch span
processor's worker counts) and divided by its calls. tokenmetry applies finished calls to sessions
and statistics in batches of 16 (``tokenmetry.pending``): a group of 16 holds one batch, so that
work is in every measured figure rather than in one call in 16 that the median would skip.
A pair sees the same machine state, so its difference cancels the drift of a busy machine that
separate runs do not (this machine's bare call varies by 2x over minutes). The added cost is the
median of the paired differences, with a distribution-free 95% confidence interval of that median;
the relative cost is the median over pairs of difference / bare call. Each mode runs in
``--processes`` fresh interpreters, interleaved across modes. After warm-up (and after tokenmetry's
background price-data loader has finished) the benchmark checks that the mode did its job:
tokenmetry's statistics, spans and metric points count exactly the calls made, every span carries
the usage, and the user sees exactly the chunks the bare client sees.

``--method blocks`` is the cross-check through the process-wide path: one client, instrumentation
switched on and off with ``tokenmetry.instrument()`` / ``uninstrument()`` (the yardsticks: a
class-level wrapt patch) between blocks of calls in ABBA order. Noisier, same order of magnitude.

Usage::

    python benchmarks/bench_overhead.py                       # every provider whose adapter exists
    python benchmarks/bench_overhead.py --quick               # 2 processes, a fifth of the calls
    python benchmarks/bench_overhead.py --providers openai --kinds chat,stream --json out.json
    python benchmarks/bench_overhead.py --method blocks --providers openai --kinds chat
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

MODES = ("bare", "tokenmetry", "tokenmetry-nosdk", "yardstick", "yardstick-full", "floor", "floor-hooks")
FULL_YARDSTICK_PROVIDERS = ("openai",)  # the same-output yardstick is written for OpenAI only
STREAM_CHUNKS = 50
ADAPTER_MODULES = {"openai": "tokenmetry.providers.openai",
                   "anthropic": "tokenmetry.providers.anthropic",
                   "gemini": "tokenmetry.providers.google_genai"}
TOKENMETRY_PROVIDER = {"openai": "openai", "anthropic": "anthropic", "gemini": "google_genai"}

# the token counts every body below reports; the checks compare tokenmetry's totals with them
INPUT_TOKENS = {"openai": 1149, "anthropic": 1219, "gemini": 1045}
OUTPUT_TOKENS = {"openai": 270, "anthropic": 270, "gemini": 270}

PROMPT = [{"role": "system", "content": "You are a concise assistant."},
          {"role": "user", "content": "Summarise the four articles below in one paragraph each. " * 8}]


# ============================================================================ wire bodies
def _words(count: int) -> list[str]:
    base = ["Prompt", "caching", "stores", "the", "processed", "prefix", "of", "a", "request", "so", "later",
            "calls", "that", "share", "it", "are", "cheaper", "and", "faster", "to", "answer"]
    return [(" " if i else "") + base[i % len(base)] for i in range(count)]


def _sse(data: dict[str, Any] | str, event: str | None = None, crlf: bool = False) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    end = "\r\n" if crlf else "\n"
    head = f"event: {event}{end}" if event else ""
    return f"{head}data: {payload}{end}{end}".encode()


def openai_chat_body() -> bytes:
    return json.dumps({
        "id": "chatcmpl-DPTPCDddFShpJ6LTV2KjWxWxyR4yh", "object": "chat.completion", "created": 1774963606,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(_words(270)),
                                             "refusal": None, "annotations": []},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": INPUT_TOKENS["openai"], "completion_tokens": OUTPUT_TOKENS["openai"],
                  "total_tokens": INPUT_TOKENS["openai"] + OUTPUT_TOKENS["openai"],
                  "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                "accepted_prediction_tokens": 0,
                                                "rejected_prediction_tokens": 0}},
        "service_tier": "default", "system_fingerprint": "fp_f3f8cb237c",
    }).encode()


def openai_stream_events(include_usage: bool) -> list[bytes]:
    """50 chunks with choices (role, 48 deltas, finish) and, when asked for, the usage-only chunk."""
    head = {"id": "chatcmpl-CnMGGNmSdY4yYxO9NmV7cSVxXZ5ci", "object": "chat.completion.chunk",
            "created": 1765879680, "model": "gpt-4o-mini-2024-07-18", "service_tier": "default",
            "system_fingerprint": "fp_644f11dd4d"}
    deltas: list[tuple[dict[str, Any], str | None]] = [({"role": "assistant", "content": "", "refusal": None}, None)]
    deltas += [({"content": word}, None) for word in _words(STREAM_CHUNKS - 2)]
    deltas.append(({}, "stop"))
    events = []
    for delta, finish in deltas:
        chunk = {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if include_usage:
            chunk["usage"] = None
        events.append(_sse(chunk))
    if include_usage:
        events.append(_sse({**head, "choices": [], "usage": {
            "prompt_tokens": INPUT_TOKENS["openai"], "completion_tokens": OUTPUT_TOKENS["openai"],
            "total_tokens": INPUT_TOKENS["openai"] + OUTPUT_TOKENS["openai"],
            "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}}))
    events.append(b"data: [DONE]\n\n")
    return events


def anthropic_message_body() -> bytes:
    return json.dumps({
        "model": "claude-sonnet-4-6", "id": "msg_01T6ZKdiPpyZ2jcHWNAeByvH", "type": "message",
        "role": "assistant", "content": [{"type": "text", "text": "".join(_words(270))}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 195, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 1024,
                  "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
                  "output_tokens": OUTPUT_TOKENS["anthropic"], "service_tier": "standard",
                  "inference_geo": "not_available"},
    }).encode()


def anthropic_stream_events() -> list[bytes]:
    """message_start, content_block_start, 45 text deltas, content_block_stop, message_delta, message_stop."""
    usage = {"input_tokens": 195, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 1024,
             "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
             "output_tokens": 1, "service_tier": "standard", "inference_geo": "not_available"}
    events = [
        _sse({"type": "message_start", "message": {
            "model": "claude-sonnet-4-6", "id": "msg_01CpLvutrn5ZEYqp6J9PqxDN", "type": "message",
            "role": "assistant", "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage}},
            "message_start"),
        _sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
             "content_block_start"),
    ]
    events += [_sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}},
                    "content_block_delta") for word in _words(STREAM_CHUNKS - 5)]
    events += [
        _sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        _sse({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
              "usage": {"input_tokens": 195, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 1024,
                        "output_tokens": OUTPUT_TOKENS["anthropic"]}}, "message_delta"),
        _sse({"type": "message_stop"}, "message_stop"),
    ]
    return events


def _gemini_usage(candidates: int) -> dict[str, Any]:
    return {"promptTokenCount": INPUT_TOKENS["gemini"], "candidatesTokenCount": candidates,
            "totalTokenCount": INPUT_TOKENS["gemini"] + candidates,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": INPUT_TOKENS["gemini"]}],
            "serviceTier": "standard"}


def gemini_body() -> bytes:
    return json.dumps({
        "candidates": [{"content": {"parts": [{"text": "".join(_words(270))}], "role": "model"},
                        "finishReason": "STOP", "avgLogprobs": -0.011}],
        "usageMetadata": _gemini_usage(OUTPUT_TOKENS["gemini"]),
        "modelVersion": "gemini-2.5-flash", "responseId": "hNcEarPuMNa3qtsP7MHt4As",
    }).encode()


def gemini_stream_events() -> list[bytes]:
    """50 chunks, each repeating the usage so far (as the Gemini API does); CRLF separators."""
    words = _words(STREAM_CHUNKS)
    events = []
    for index, word in enumerate(words):
        last = index == len(words) - 1
        candidate: dict[str, Any] = {"content": {"parts": [{"text": word}], "role": "model"}, "index": 0}
        if last:
            candidate["finishReason"] = "STOP"
        produced = OUTPUT_TOKENS["gemini"] if last else (index + 1) * 5
        events.append(_sse({"candidates": [candidate], "usageMetadata": _gemini_usage(produced),
                            "modelVersion": "gemini-2.5-flash", "responseId": "ru1garvBEoOiqtsP2fznmQw"},
                           crlf=True))
    return events


# response headers as the vendors send them (rate-limit headers included: tokenmetry reads them)
OPENAI_HEADERS = {
    "date": "Tue, 31 Mar 2026 13:26:46 GMT", "connection": "keep-alive",
    "access-control-expose-headers": "X-Request-ID", "openai-organization": "user-bench",
    "openai-processing-ms": "412", "openai-project": "proj_bench", "openai-version": "2020-10-01",
    "x-envoy-upstream-service-time": "415", "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-limit-tokens": "30000000", "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-remaining-tokens": "29998581", "x-ratelimit-reset-requests": "6ms",
    "x-ratelimit-reset-tokens": "2ms", "x-request-id": "req_7f0c3e1b2a9d4c8e",
    "strict-transport-security": "max-age=31536000; includeSubDomains; preload",
    "cf-cache-status": "DYNAMIC", "x-content-type-options": "nosniff", "server": "cloudflare",
    "cf-ray": "9a1b2c3d4e5f6a7b-AMS", "alt-svc": 'h3=":443"; ma=86400',
}
ANTHROPIC_HEADERS = {
    "date": "Tue, 31 Mar 2026 13:26:46 GMT", "connection": "keep-alive",
    "anthropic-ratelimit-input-tokens-limit": "2000000", "anthropic-ratelimit-input-tokens-remaining": "1998000",
    "anthropic-ratelimit-input-tokens-reset": "2026-03-31T13:26:47Z",
    "anthropic-ratelimit-output-tokens-limit": "400000", "anthropic-ratelimit-output-tokens-remaining": "399000",
    "anthropic-ratelimit-output-tokens-reset": "2026-03-31T13:26:47Z",
    "anthropic-ratelimit-requests-limit": "4000", "anthropic-ratelimit-requests-remaining": "3999",
    "anthropic-ratelimit-requests-reset": "2026-03-31T13:26:46Z",
    "anthropic-ratelimit-tokens-limit": "2400000", "anthropic-ratelimit-tokens-remaining": "2397000",
    "anthropic-ratelimit-tokens-reset": "2026-03-31T13:26:47Z",
    "request-id": "req_011CUbench", "strict-transport-security": "max-age=31536000; includeSubDomains; preload",
    "anthropic-organization-id": "0f0e0d0c-bench", "via": "1.1 google", "cf-cache-status": "DYNAMIC",
    "x-robots-tag": "none", "server": "cloudflare", "cf-ray": "9a1b2c3d4e5f6a7b-AMS",
}
GEMINI_HEADERS = {
    "vary": "Origin, X-Origin, Referer", "date": "Tue, 31 Mar 2026 13:26:46 GMT", "server": "scaffolding on HTTPServer2",
    "x-xss-protection": "0", "x-frame-options": "SAMEORIGIN", "x-content-type-options": "nosniff",
    "server-timing": "gfet4t7; dur=812", "alt-svc": 'h3=":443"; ma=2592000,h3-29=":443"; ma=2592000',
}


# ============================================================================ scenarios
@dataclass
class Scenario:
    """One provider surface: how to build a client over the mock transport and make one call."""

    provider: str
    kind: str  # "chat" | "stream" | "stream-inject"
    make_client: Callable[[], Any]
    call: Callable[[Any], int]  # makes one call, consumes it; returns the chunks the user saw
    expected_chunks: int  # what the user must see (0 for a non-streamed call)


def _mock_http_client(content_type: str, sse_content_type: str, vendor_headers: dict[str, str], body: bytes,
                      stream_events: Callable[[Any], list[bytes] | None]) -> Any:
    """An ``httpx2.Client`` answering every request in process: the SSE events ``stream_events``
    gives for a streamed request, else the JSON ``body``, with the vendor's response headers."""
    import httpx2

    json_headers = {"content-type": content_type, **vendor_headers}
    sse_headers = {"content-type": sse_content_type, **vendor_headers}

    def handler(request: Any) -> Any:
        events = stream_events(request)
        if events is not None:
            return httpx2.Response(200, headers=sse_headers, content=iter(events))
        return httpx2.Response(200, headers=json_headers, content=body)

    return httpx2.Client(transport=httpx2.MockTransport(handler))


def _count(chunks: Any) -> int:
    """Consume a stream as a user would; the chunks the user saw."""
    seen = 0
    for _ in chunks:
        seen += 1
    return seen


def _openai_client() -> Any:
    import openai

    streams = {True: openai_stream_events(True), False: openai_stream_events(False)}

    def stream_events(request: Any) -> list[bytes] | None:
        sent = json.loads(request.content)
        if not sent.get("stream"):
            return None
        return streams[bool((sent.get("stream_options") or {}).get("include_usage"))]

    return openai.OpenAI(api_key="sk-bench", max_retries=0, http_client=_mock_http_client(
        "application/json", "text/event-stream; charset=utf-8", OPENAI_HEADERS, openai_chat_body(),
        stream_events))


def _openai_chat(client: Any) -> int:
    client.chat.completions.create(model="gpt-4o-mini", messages=PROMPT)
    return 0


def _openai_stream(client: Any) -> int:
    return _count(client.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, stream=True,
                                                 stream_options={"include_usage": True}))


def _openai_stream_no_usage_asked(client: Any) -> int:
    return _count(client.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, stream=True))


def _anthropic_client() -> Any:
    import anthropic

    events = anthropic_stream_events()
    return anthropic.Anthropic(api_key="sk-ant-bench", max_retries=0, http_client=_mock_http_client(
        "application/json", "text/event-stream; charset=utf-8", ANTHROPIC_HEADERS, anthropic_message_body(),
        lambda request: events if json.loads(request.content).get("stream") else None))


def _anthropic_call(client: Any) -> int:
    client.messages.create(model="claude-sonnet-4-6", max_tokens=1024, system=PROMPT[0]["content"],
                           messages=PROMPT[1:])
    return 0


def _anthropic_stream(client: Any) -> int:
    return _count(client.messages.create(model="claude-sonnet-4-6", max_tokens=1024,
                                         system=PROMPT[0]["content"], messages=PROMPT[1:], stream=True))


def _gemini_client() -> Any:
    from google import genai
    from google.genai import types

    events = gemini_stream_events()
    return genai.Client(api_key="bench-key", http_options=types.HttpOptions(httpx_client=_mock_http_client(
        "application/json; charset=UTF-8", "text/event-stream", GEMINI_HEADERS, gemini_body(),
        lambda request: events if request.url.path.endswith(":streamGenerateContent") else None)))


_GEMINI_CONTENTS = PROMPT[1]["content"]


def _gemini_call(client: Any) -> int:
    client.models.generate_content(model="gemini-2.5-flash", contents=_GEMINI_CONTENTS)
    return 0


def _gemini_stream(client: Any) -> int:
    return _count(client.models.generate_content_stream(model="gemini-2.5-flash", contents=_GEMINI_CONTENTS))


SCENARIOS: dict[tuple[str, str], Scenario] = {
    ("openai", "chat"): Scenario("openai", "chat", _openai_client, _openai_chat, 0),
    # the user asks for include_usage: every mode receives exactly the same bytes
    ("openai", "stream"): Scenario("openai", "stream", _openai_client, _openai_stream, STREAM_CHUNKS + 1),
    # the user does not: tokenmetry (and the yardstick) add include_usage and withhold the extra chunk
    ("openai", "stream-inject"): Scenario("openai", "stream-inject", _openai_client,
                                          _openai_stream_no_usage_asked, STREAM_CHUNKS),
    ("anthropic", "chat"): Scenario("anthropic", "chat", _anthropic_client, _anthropic_call, 0),
    ("anthropic", "stream"): Scenario("anthropic", "stream", _anthropic_client, _anthropic_stream, STREAM_CHUNKS),
    ("gemini", "chat"): Scenario("gemini", "chat", _gemini_client, _gemini_call, 0),
    ("gemini", "stream"): Scenario("gemini", "stream", _gemini_client, _gemini_stream, STREAM_CHUNKS),
}


# ============================================================================ OpenTelemetry SDK set-up
class OTelSDK:
    """The SDK providers both tokenmetry and the yardstick record into."""

    def __init__(self, span_processor: str) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        processor = BatchSpanProcessor(self.spans) if span_processor == "batch" else SimpleSpanProcessor(self.spans)
        self.tracer_provider.add_span_processor(processor)
        self.metrics = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.metrics])

    def take_spans(self) -> list[Any]:
        self.tracer_provider.force_flush()
        spans = list(self.spans.get_finished_spans())
        self.spans.clear()
        return spans

    def histogram_count(self, name: str, scope: str) -> int:
        """Calls recorded so far by histogram ``name`` of instrumentation scope ``scope``."""
        data = self.metrics.get_metrics_data()
        count = 0
        for resource_metrics in data.resource_metrics if data else ():
            for scope_metrics in resource_metrics.scope_metrics:
                if scope_metrics.scope.name != scope:
                    continue
                for metric in scope_metrics.metrics:
                    if metric.name == name:
                        count += sum(point.count for point in metric.data.data_points)
        return count


# ============================================================================ the yardstick
TOKEN_BUCKETS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864]
DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]


# the OpenTelemetry API, bound when a yardstick is built (a bare process never imports it)
otel_context: Any = None
otel_trace: Any = None
SpanKind: Any = None
Status: Any = None
StatusCode: Any = None


def _load_otel_api() -> None:
    global otel_context, otel_trace, SpanKind, Status, StatusCode
    from opentelemetry import context, trace
    from opentelemetry.trace import SpanKind as kind
    from opentelemetry.trace import Status as status
    from opentelemetry.trace import StatusCode as code

    otel_context, otel_trace, SpanKind, Status, StatusCode = context, trace, kind, status, code


class Yardstick:
    """The minimal GenAI instrumentation: one current CLIENT span, the two standard histograms."""

    scope = "bench.yardstick"

    def __init__(self, sdk: OTelSDK, provider: str) -> None:
        _load_otel_api()
        self.provider = provider
        self.tracer = sdk.tracer_provider.get_tracer(self.scope)
        meter = sdk.meter_provider.get_meter(self.scope)
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS)
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        self._patched: list[tuple[type, str, Any]] = []

    # ----------------------------------------------------------------- switching on and off
    def enable(self) -> None:
        import wrapt

        if self.provider == "openai":
            from openai.resources.chat.completions import Completions as owner

            targets = [(owner, "create", self._openai_create)]
        elif self.provider == "anthropic":
            from anthropic.resources.messages import Messages as owner

            targets = [(owner, "create", self._anthropic_create)]
        else:
            from google.genai.models import Models as owner

            targets = [(owner, "generate_content", self._gemini_generate),
                       (owner, "generate_content_stream", self._gemini_generate_stream)]
        for cls, name, wrapper in targets:
            self._patched.append((cls, name, cls.__dict__[name]))
            setattr(cls, name, wrapt.FunctionWrapper(cls.__dict__[name], wrapper))

    def disable(self) -> None:
        for cls, name, original in reversed(self._patched):
            setattr(cls, name, original)
        self._patched.clear()

    def attach(self, client: Any) -> None:
        """Wrap the methods of this one client's resource objects (the per-call paired method)."""
        if self.provider == "openai":
            targets = [(client.chat.completions, "create", self._openai_create)]
        elif self.provider == "anthropic":
            targets = [(client.messages, "create", self._anthropic_create)]
        else:
            targets = [(client.models, "generate_content", self._gemini_generate),
                       (client.models, "generate_content_stream", self._gemini_generate_stream)]
        for resource, name, wrapper in targets:
            setattr(resource, name, _bound_wrapper(getattr(resource, name), resource, wrapper))

    # ----------------------------------------------------------------- shared span/metric work
    def _start(self, operation: str, provider: str, model: str | None, address: str | None,
               port: int | None, stream: bool) -> tuple[Any, dict[str, Any], object]:
        attributes: dict[str, Any] = {"gen_ai.operation.name": operation, "gen_ai.provider.name": provider,
                                      "gen_ai.request.model": model, "gen_ai.request.stream": stream}
        if address:
            attributes["server.address"] = address
            attributes["server.port"] = port
        span = self.tracer.start_span(f"{operation} {model}", kind=SpanKind.CLIENT, attributes=attributes)
        token = otel_context.attach(otel_trace.set_span_in_context(span))
        return span, attributes, token

    @staticmethod
    def _detach(token: object) -> None:
        otel_context.detach(token)

    def _end(self, span: Any, attributes: dict[str, Any], started: float, response_model: str | None,
             response_id: str | None, finish_reasons: list[str], input_tokens: int | None,
             output_tokens: int | None, usage: Any = None, **unused: Any) -> None:
        end_attributes: dict[str, Any] = {"gen_ai.response.model": response_model,
                                          "gen_ai.response.id": response_id,
                                          "gen_ai.response.finish_reasons": finish_reasons}
        if input_tokens is not None:
            end_attributes["gen_ai.usage.input_tokens"] = input_tokens
            end_attributes["gen_ai.usage.output_tokens"] = output_tokens
        span.set_attributes(end_attributes)
        span.end()
        metric_attributes = {key: value for key, value in attributes.items() if key != "gen_ai.request.stream"}
        metric_attributes["gen_ai.response.model"] = response_model
        self.duration.record(time.perf_counter() - started, metric_attributes)
        if input_tokens is not None:
            self.token_usage.record(input_tokens, {**metric_attributes, "gen_ai.token.type": "input"})
            self.token_usage.record(output_tokens, {**metric_attributes, "gen_ai.token.type": "output"})

    def _fail(self, span: Any, attributes: dict[str, Any], started: float, error: BaseException) -> None:
        span.set_attribute("error.type", type(error).__qualname__)
        span.set_status(Status(StatusCode.ERROR))
        span.end()
        self.duration.record(time.perf_counter() - started, {**attributes, "error.type": type(error).__qualname__})

    # ----------------------------------------------------------------- openai
    def _openai_create(self, wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        streaming = kwargs.get("stream") is True
        hide_usage_chunk = False
        if streaming and not (kwargs.get("stream_options") or {}).get("include_usage"):
            kwargs = {**kwargs, "stream_options": {**(kwargs.get("stream_options") or {}), "include_usage": True}}
            hide_usage_chunk = True
        url = instance._client.base_url
        span, attributes, token = self._start("chat", "openai", kwargs.get("model"), url.host,
                                              url.port or 443, streaming)
        started = time.perf_counter()
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as error:
            self._fail(span, attributes, started, error)
            raise
        finally:
            self._detach(token)
        if streaming:
            return self._openai_stream(result, span, attributes, started, hide_usage_chunk)
        usage = result.usage
        self._end(span, attributes, started, result.model, result.id,
                  [choice.finish_reason for choice in result.choices],
                  None if usage is None else usage.prompt_tokens,
                  None if usage is None else usage.completion_tokens, usage)
        return result

    def _openai_stream(self, stream: Any, span: Any, attributes: dict[str, Any], started: float,
                       hide_usage_chunk: bool) -> Any:
        return _OpenAIStream(stream, self, span, attributes, started, hide_usage_chunk)

    # ----------------------------------------------------------------- anthropic
    def _anthropic_create(self, wrapped: Any, instance: Any, args: tuple[Any, ...],
                          kwargs: dict[str, Any]) -> Any:
        streaming = kwargs.get("stream") is True
        url = instance._client.base_url
        span, attributes, token = self._start("chat", "anthropic", kwargs.get("model"), url.host,
                                              url.port or 443, streaming)
        started = time.perf_counter()
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as error:
            self._fail(span, attributes, started, error)
            raise
        finally:
            self._detach(token)
        if streaming:
            return _AnthropicStream(result, self, span, attributes, started)
        usage = result.usage
        self._end(span, attributes, started, result.model, result.id, [result.stop_reason],
                  usage.input_tokens + (usage.cache_read_input_tokens or 0)
                  + (usage.cache_creation_input_tokens or 0), usage.output_tokens)
        return result

    # ----------------------------------------------------------------- gemini
    def _gemini_generate(self, wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        span, attributes, token = self._start("generate_content", "gcp.gemini", kwargs.get("model"),
                                              "generativelanguage.googleapis.com", 443, False)
        started = time.perf_counter()
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as error:
            self._fail(span, attributes, started, error)
            raise
        finally:
            self._detach(token)
        self._end_gemini(span, attributes, started, result)
        return result

    def _gemini_generate_stream(self, wrapped: Any, instance: Any, args: tuple[Any, ...],
                                kwargs: dict[str, Any]) -> Any:
        span, attributes, token = self._start("generate_content", "gcp.gemini", kwargs.get("model"),
                                              "generativelanguage.googleapis.com", 443, True)
        started = time.perf_counter()
        try:
            chunks = wrapped(*args, **kwargs)
        except BaseException as error:
            self._fail(span, attributes, started, error)
            raise
        finally:
            self._detach(token)
        return self._gemini_chunks(chunks, span, attributes, started)

    def _gemini_chunks(self, chunks: Iterator[Any], span: Any, attributes: dict[str, Any],
                       started: float) -> Iterator[Any]:
        last = None
        try:
            for chunk in chunks:
                last = chunk
                yield chunk
        except BaseException as error:
            self._fail(span, attributes, started, error)
            raise
        self._end_gemini(span, attributes, started, last)

    def _end_gemini(self, span: Any, attributes: dict[str, Any], started: float, response: Any) -> None:
        usage = None if response is None else response.usage_metadata
        candidates = [] if response is None or not response.candidates else response.candidates
        self._end(span, attributes, started, None if response is None else response.model_version,
                  None if response is None else response.response_id,
                  [str(c.finish_reason) for c in candidates if c.finish_reason],
                  None if usage is None else (usage.prompt_token_count or 0),
                  None if usage is None else (usage.candidates_token_count or 0)
                  + (usage.thoughts_token_count or 0))


def _bound_wrapper(original: Any, instance: Any, wrapper: Any) -> Any:
    def patched(*args: Any, **kwargs: Any) -> Any:
        return wrapper(original, instance, args, kwargs)

    return patched


# gpt-4o-mini list prices per token (USD), for the same-output yardstick's cost figure
_PRICE_INPUT = Decimal("0.15") / 1_000_000
_PRICE_CACHE_READ = Decimal("0.075") / 1_000_000
_PRICE_OUTPUT = Decimal("0.6") / 1_000_000


class YardstickFull(Yardstick):
    """The yardstick made to emit what tokenmetry emits for an OpenAI call: the same span attributes
    (conversation id, usage source, retries, throttle wait, cache and reasoning tokens, cost) and
    the same metric points (plus the cache-read token counter and the cost counter), with a
    hard-coded price. Like tokenmetry, it keeps the two counters as running totals observed when
    the SDK collects (the cheapest way to emit them). The gap between tokenmetry and this one is
    tokenmetry's own machinery (sessions, statistics, rate limits, price lookup, adapters), not the
    telemetry volume SPEC §7 asks for."""

    scope = "bench.yardstick-full"

    def __init__(self, sdk: OTelSDK, provider: str) -> None:
        super().__init__(sdk, provider)
        meter = sdk.meter_provider.get_meter(self.scope)
        self._token_totals: dict[frozenset[Any], list[Any]] = {}
        self._cost_totals: dict[frozenset[Any], list[Any]] = {}
        self._totals_lock = threading.Lock()
        meter.create_observable_counter("tokenmetry.tokens", callbacks=[self._observer(self._token_totals)],
                                        unit="{token}")
        meter.create_observable_counter("tokenmetry.cost", callbacks=[self._observer(self._cost_totals)],
                                        unit="USD")
        self.time_to_first_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk", unit="s",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        self.time_per_output_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_per_output_chunk", unit="s",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS)

    def _openai_stream(self, stream: Any, span: Any, attributes: dict[str, Any], started: float,
                       hide_usage_chunk: bool) -> Any:
        return _OpenAIStreamFull(stream, self, span, attributes, started, hide_usage_chunk)

    def _observer(self, totals: dict[frozenset[Any], list[Any]]) -> Callable[[Any], list[Any]]:
        from opentelemetry.metrics import Observation

        def observe(_: Any) -> list[Any]:
            with self._totals_lock:
                return [Observation(amount, attributes) for attributes, amount in totals.values()]

        return observe

    def _add(self, totals: dict[frozenset[Any], list[Any]], attributes: dict[str, Any], amount: float) -> None:
        key = frozenset(attributes.items())
        with self._totals_lock:
            entry = totals.get(key)
            if entry is None:
                totals[key] = [attributes, amount]
            else:
                entry[1] += amount

    def _start(self, operation: str, provider: str, model: str | None, address: str | None,
               port: int | None, stream: bool) -> tuple[Any, dict[str, Any], object]:
        attributes: dict[str, Any] = {"gen_ai.operation.name": operation, "gen_ai.provider.name": provider,
                                      "gen_ai.request.model": model, "gen_ai.request.stream": stream,
                                      "gen_ai.conversation.id": "default"}
        if address:
            attributes["server.address"] = address
            attributes["server.port"] = port
        span = self.tracer.start_span(f"{operation} {model}", kind=SpanKind.CLIENT, attributes=attributes)
        token = otel_context.attach(otel_trace.set_span_in_context(span))
        return span, attributes, token

    def _end(self, span: Any, attributes: dict[str, Any], started: float, response_model: str | None,
             response_id: str | None, finish_reasons: list[str], input_tokens: int | None,
             output_tokens: int | None, usage: Any = None, time_to_first_chunk: float | None = None,
             chunks: int = 0) -> None:
        details = None if usage is None else usage.prompt_tokens_details
        cache_read = None if details is None else details.cached_tokens
        completion_details = None if usage is None else usage.completion_tokens_details
        reasoning = None if completion_details is None else completion_details.reasoning_tokens
        end_attributes: dict[str, Any] = {"tokenmetry.usage.source": "provider", "tokenmetry.retries": 0,
                                          "tokenmetry.throttle_wait_s": 0.0,
                                          "gen_ai.response.model": response_model,
                                          "gen_ai.response.id": response_id,
                                          "gen_ai.response.finish_reasons": finish_reasons}
        cost = None
        if input_tokens is not None:
            end_attributes["gen_ai.usage.input_tokens"] = input_tokens
            end_attributes["gen_ai.usage.output_tokens"] = output_tokens
            cached = cache_read or 0
            cost = ((input_tokens - cached) * _PRICE_INPUT + cached * _PRICE_CACHE_READ
                    + output_tokens * _PRICE_OUTPUT)
        if cache_read is not None:
            end_attributes["gen_ai.usage.cache_read.input_tokens"] = cache_read
        if reasoning is not None:
            end_attributes["gen_ai.usage.reasoning.output_tokens"] = reasoning
        if cost is not None:
            end_attributes["tokenmetry.cost.amount"] = float(cost)
            end_attributes["tokenmetry.cost.currency"] = "USD"
        if time_to_first_chunk is not None:
            end_attributes["tokenmetry.time_to_first_chunk_s"] = time_to_first_chunk
        span.set_attributes(end_attributes)
        span.end()
        duration = time.perf_counter() - started
        metric_attributes = {key: value for key, value in attributes.items()
                             if key not in ("gen_ai.request.stream", "gen_ai.conversation.id")}
        metric_attributes["gen_ai.response.model"] = response_model
        self.duration.record(duration, metric_attributes)
        if time_to_first_chunk is not None:
            self.time_to_first_chunk.record(time_to_first_chunk, metric_attributes)
            if chunks > 1:
                self.time_per_output_chunk.record((duration - time_to_first_chunk) / (chunks - 1),
                                                  metric_attributes)
        if input_tokens is not None:
            self.token_usage.record(input_tokens, {**metric_attributes, "gen_ai.token.type": "input"})
            self.token_usage.record(output_tokens, {**metric_attributes, "gen_ai.token.type": "output"})
        if cache_read:
            self._add(self._token_totals, {**metric_attributes, "tokenmetry.token.kind": "cache_read"}, cache_read)
        if cost is not None:
            self._add(self._cost_totals, {**metric_attributes, "tokenmetry.cost.currency": "USD"}, float(cost))


def _stream_proxy_base() -> type:
    import wrapt

    return wrapt.ObjectProxy  # type: ignore[no-any-return]


class _YardstickStream(_stream_proxy_base()):  # type: ignore[misc]
    """A yardstick's stream wrapper: the SDK's stream, plus the span to end when it is consumed."""

    def __init__(self, stream: Any, yardstick: Yardstick, span: Any, attributes: dict[str, Any],
                 started: float) -> None:
        super().__init__(stream)
        self._self_yardstick = yardstick
        self._self_span = span
        self._self_attributes = attributes
        self._self_started = started

    def __iter__(self) -> Any:
        return self


class _OpenAIStream(_YardstickStream):
    """The yardstick's stream wrapper: reads the usage chunk, ends the span at the end."""

    def __init__(self, stream: Any, yardstick: Yardstick, span: Any, attributes: dict[str, Any],
                 started: float, hide_usage_chunk: bool) -> None:
        super().__init__(stream, yardstick, span, attributes, started)
        self._self_hide = hide_usage_chunk
        self._self_usage: Any = None
        self._self_model: str | None = None
        self._self_id: str | None = None
        self._self_finish: list[str] = []

    def __next__(self) -> Any:
        while True:
            try:
                chunk = next(self.__wrapped__)
            except StopIteration:
                self._self_end()
                raise
            if chunk.usage is not None:
                self._self_usage = chunk.usage
            if self._self_model is None:
                self._self_model = chunk.model
                self._self_id = chunk.id
            for choice in chunk.choices:
                if choice.finish_reason:
                    self._self_finish.append(choice.finish_reason)
            if self._self_hide and not chunk.choices and chunk.usage is not None:
                continue
            return chunk

    def _self_end(self, **extra: Any) -> None:
        usage = self._self_usage
        self._self_yardstick._end(self._self_span, self._self_attributes, self._self_started,
                                  self._self_model, self._self_id, self._self_finish,
                                  None if usage is None else usage.prompt_tokens,
                                  None if usage is None else usage.completion_tokens, usage, **extra)


class _OpenAIStreamFull(_OpenAIStream):
    """The same-output yardstick's stream wrapper: also times the first chunk and counts chunks."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._self_chunks = 0
        self._self_first: float | None = None

    def __next__(self) -> Any:
        chunk = super().__next__()
        if not self._self_chunks:
            self._self_first = time.perf_counter()
        self._self_chunks += 1
        return chunk

    def _self_end(self, **extra: Any) -> None:
        first = self._self_first
        super()._self_end(time_to_first_chunk=None if first is None else first - self._self_started,
                          chunks=self._self_chunks)


class _AnthropicStream(_YardstickStream):
    def __init__(self, stream: Any, yardstick: Yardstick, span: Any, attributes: dict[str, Any],
                 started: float) -> None:
        super().__init__(stream, yardstick, span, attributes, started)
        self._self_message: Any = None
        self._self_input: int | None = None
        self._self_output: int | None = None
        self._self_stop: list[str] = []

    def __next__(self) -> Any:
        try:
            event = next(self.__wrapped__)
        except StopIteration:
            message = self._self_message
            self._self_yardstick._end(self._self_span, self._self_attributes, self._self_started,
                                      None if message is None else message.model,
                                      None if message is None else message.id, self._self_stop,
                                      self._self_input, self._self_output)
            raise
        kind = event.type
        if kind == "message_start":
            message = self._self_message = event.message
            usage = message.usage
            self._self_input = (usage.input_tokens + (usage.cache_read_input_tokens or 0)
                                + (usage.cache_creation_input_tokens or 0))
            self._self_output = usage.output_tokens
        elif kind == "message_delta":
            self._self_output = event.usage.output_tokens
            if event.delta.stop_reason:
                self._self_stop.append(event.delta.stop_reason)
        return event


# ============================================================================ the floor
class Floor:
    """The least an exact per-call account can do (see the module docstring): no OpenTelemetry."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.kept: list[tuple[Any, ...]] = []
        self.calls = 0
        self.input_tokens = 0

    def attach(self, client: Any) -> None:
        if self.provider == "openai":
            resource, name, wrapper = client.chat.completions, "create", self._openai
        elif self.provider == "anthropic":
            resource, name, wrapper = client.messages, "create", self._anthropic
        else:
            resource, name, wrapper = client.models, "generate_content", self._gemini
        setattr(resource, name, _bound_wrapper(getattr(resource, name), resource, wrapper))

    def _keep(self, row: tuple[Any, ...]) -> None:
        kept = self.kept
        kept.append(row)
        if len(kept) >= 16:  # what a real account would add to its totals, in batches
            self.calls += len(kept)
            self.input_tokens += sum(entry[3] for entry in kept)
            kept.clear()

    def _openai(self, wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        started = time.perf_counter()
        result = wrapped(*args, **kwargs)
        usage = result.usage
        self._keep((kwargs.get("model"), result.model, result.id, usage.prompt_tokens, usage.completion_tokens,
                    time.perf_counter() - started))
        return result

    def _anthropic(self, wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        started = time.perf_counter()
        result = wrapped(*args, **kwargs)
        usage = result.usage
        self._keep((kwargs.get("model"), result.model, result.id, usage.input_tokens
                    + (usage.cache_read_input_tokens or 0) + (usage.cache_creation_input_tokens or 0),
                    usage.output_tokens, time.perf_counter() - started))
        return result

    def _gemini(self, wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        started = time.perf_counter()
        result = wrapped(*args, **kwargs)
        usage = result.usage_metadata
        self._keep((kwargs.get("model"), result.model_version, result.response_id, usage.prompt_token_count,
                    usage.candidates_token_count, time.perf_counter() - started))
        return result


class FloorHooks(Floor):
    """The floor at tokenmetry's patch points (``floor-hooks``, OpenAI): ``request`` and
    ``_process_response`` of one client instance, as ``tokenmetry.wrap`` binds them."""

    def __init__(self, provider: str) -> None:
        super().__init__(provider)
        import contextvars

        self.running: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar("floor", default=None)

    def attach(self, client: Any) -> None:
        client.__dict__["request"] = _bound_wrapper(client.request, client, self._request)
        client.__dict__["_process_response"] = _bound_wrapper(client._process_response, client, self._response)

    def _request(self, wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.running.get() is not None:
            return wrapped(*args, **kwargs)
        started = time.perf_counter()
        scratch: list[Any] = [None]
        token = self.running.set(scratch)
        try:
            result = wrapped(*args, **kwargs)
        finally:
            self.running.reset(token)
        usage = result.usage
        self._keep((args[1].json_data.get("model"), result.model, result.id, usage.prompt_tokens,
                    usage.completion_tokens, time.perf_counter() - started, scratch[0]))
        return result

    def _response(self, wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        scratch = self.running.get()
        if scratch is not None:
            scratch[0] = kwargs["response"].headers._list
        return wrapped(*args, **kwargs)


# ============================================================================ the modes
class Mode:
    """One kind of instrumentation: on one client instance (``attach``, the paired method) or
    process-wide (``enable``/``disable``, the block method), and the check that it recorded
    exactly the calls it saw. The base class is ``bare``: no instrumentation (the A/A control)."""

    def attach(self, client: Any) -> None: ...
    def enable(self) -> None: ...
    def disable(self) -> None: ...
    def check(self, calls: int) -> None: ...
    def final_check(self, instrumented_calls: int) -> None: ...


def _check_spans(who: str, spans: list[Any], expected: int, provider: str) -> None:
    if len(spans) != expected or any(s.attributes.get("gen_ai.usage.input_tokens") != INPUT_TOKENS[provider]
                                     for s in spans):
        raise SystemExit(f"{who} exported {len(spans)} spans, expected {expected} with usage")


class Tokenmetry(Mode):
    def __init__(self, provider: str, sdk: OTelSDK | None) -> None:
        import tokenmetry

        self.tokenmetry = tokenmetry
        self.provider = provider
        self.sdk = sdk
        self.kwargs: dict[str, Any] = {} if sdk is None else {
            "tracer_provider": sdk.tracer_provider, "meter_provider": sdk.meter_provider}
        self.requests = 0
        self.input_tokens = 0

    def attach(self, client: Any) -> None:
        self.tokenmetry.instrument(providers=[], **self.kwargs)  # options (the SDK providers) only
        self.tokenmetry.wrap(client)

    def enable(self) -> None:
        active = self.tokenmetry.instrument(providers=[TOKENMETRY_PROVIDER[self.provider]], **self.kwargs)
        if TOKENMETRY_PROVIDER[self.provider] not in active:
            raise SystemExit(f"tokenmetry did not instrument {self.provider}: {active}")

    def disable(self) -> None:
        self.tokenmetry.uninstrument()

    def check(self, calls: int) -> None:
        snapshot = self.tokenmetry.stats()
        if snapshot.requests != self.requests + calls or \
                snapshot.usage.input_tokens != self.input_tokens + calls * INPUT_TOKENS[self.provider]:
            raise SystemExit(f"tokenmetry recorded {snapshot.requests - self.requests} calls / "
                             f"{snapshot.usage.input_tokens - self.input_tokens} input tokens, "
                             f"expected {calls} / {calls * INPUT_TOKENS[self.provider]}")
        self.requests, self.input_tokens = snapshot.requests, snapshot.usage.input_tokens
        if self.sdk is not None:
            _check_spans("tokenmetry", self.sdk.take_spans(), calls, self.provider)

    def final_check(self, instrumented_calls: int) -> None:
        if self.sdk is not None:
            count = self.sdk.histogram_count("gen_ai.client.operation.duration", "tokenmetry")
            if count != instrumented_calls:
                raise SystemExit(f"tokenmetry recorded {count} duration points, expected {instrumented_calls}")


class YardstickMode(Mode):
    def __init__(self, provider: str, sdk: OTelSDK, kind: type[Yardstick] = Yardstick) -> None:
        self.sdk = sdk
        self.provider = provider
        self.yardstick = kind(sdk, provider)

    def attach(self, client: Any) -> None:
        self.yardstick.attach(client)

    def enable(self) -> None:
        self.yardstick.enable()

    def disable(self) -> None:
        self.yardstick.disable()

    def check(self, calls: int) -> None:
        _check_spans("yardstick", self.sdk.take_spans(), calls, self.provider)

    def final_check(self, instrumented_calls: int) -> None:
        count = self.sdk.histogram_count("gen_ai.client.operation.duration", self.yardstick.scope)
        if count != instrumented_calls:
            raise SystemExit(f"yardstick recorded {count} duration points, expected {instrumented_calls}")


class FloorMode(Mode):
    def __init__(self, provider: str, kind: type[Floor] = Floor) -> None:
        self.floor = kind(provider)
        self.provider = provider
        self.seen = 0

    def attach(self, client: Any) -> None:
        self.floor.attach(client)

    def check(self, calls: int) -> None:
        self.seen += calls
        kept = self.floor.calls + len(self.floor.kept)
        inputs = self.floor.input_tokens + sum(entry[3] for entry in self.floor.kept)
        if kept != self.seen or inputs != self.seen * INPUT_TOKENS[self.provider]:
            raise SystemExit(f"floor kept {kept} calls / {inputs} input tokens, expected {self.seen}")


def make_mode(mode: str, provider: str, span_processor: str) -> Mode:
    if mode == "bare":
        return Mode()
    if mode == "floor":
        return FloorMode(provider)
    if mode == "floor-hooks":
        return FloorMode(provider, FloorHooks)
    if mode == "tokenmetry-nosdk":
        return Tokenmetry(provider, None)
    sdk = OTelSDK(span_processor)
    if mode == "tokenmetry":
        return Tokenmetry(provider, sdk)
    if mode == "yardstick-full":
        return YardstickMode(provider, sdk, YardstickFull)
    return YardstickMode(provider, sdk)


# ============================================================================ one child process
def _join_background_loaders() -> None:
    # tokenmetry loads its price data in a background thread when the first call begins: let it
    # finish before timing, so its CPU time is not billed to whichever calls it overlaps
    for thread in threading.enumerate():
        if thread.name.startswith("tokenmetry"):
            thread.join(timeout=60)


def run_child_paired(args: argparse.Namespace) -> dict[str, Any]:
    """Two clients in one process, one bare and one instrumented (instance-level), calls alternating
    bare/instrumented (the order flipped every pair): each pair sees the same machine state."""
    scenario = SCENARIOS[(args.provider, args.kind)]
    call = scenario.call
    mode = make_mode(args.mode, args.provider, args.span_processor)
    bare_client = scenario.make_client()
    instrumented_client = scenario.make_client()
    mode.attach(instrumented_client)
    for _ in range(args.warmup):
        call(bare_client)
        call(instrumented_client)
    _join_background_loaders()
    mode.check(args.warmup)
    process_time = time.process_time
    bare: list[float] = []
    instrumented: list[float] = []
    checked = 0
    expected = scenario.expected_chunks
    group = args.group
    groups = max(args.pairs // group, 1)
    check_every = max(200 // group, 1)
    for pair in range(groups):
        instrumented_first = pair % 2 == 1
        first, second = (instrumented_client, bare_client) if instrumented_first else (bare_client, instrumented_client)
        seen: list[int] = []
        started = process_time()
        for _ in range(group):
            seen.append(call(first))
        middle = process_time()
        for _ in range(group):
            seen.append(call(second))
        ended = process_time()
        if any(count != expected for count in seen):
            raise SystemExit(f"{args.mode}: the user saw {seen} chunks, expected {expected} each time")
        first_us, second_us = (middle - started) * 1e6 / group, (ended - middle) * 1e6 / group
        if instrumented_first:
            instrumented.append(first_us)
            bare.append(second_us)
        else:
            bare.append(first_us)
            instrumented.append(second_us)
        if pair % check_every == check_every - 1:  # between groups: keep the in-memory exporter small
            mode.check((pair + 1 - checked) * group)
            checked = pair + 1
    mode.check((groups - checked) * group)
    mode.final_check(args.warmup + groups * group)
    return {"provider": args.provider, "kind": args.kind, "mode": args.mode, "method": "paired",
            "bare_us": bare, "mode_us": instrumented, "diff_us": [m - b for m, b in zip(instrumented, bare)],
            "chunks": scenario.expected_chunks}


def run_child_blocks(args: argparse.Namespace) -> dict[str, Any]:
    """One client; the instrumentation switched on and off process-wide (``tokenmetry.instrument()``
    / ``uninstrument()``, the yardstick's class-level wrapt patch) between blocks of calls, in ABBA
    order; each block's CPU time per call is one sample."""
    scenario = SCENARIOS[(args.provider, args.kind)]
    client = scenario.make_client()
    call = scenario.call
    mode = make_mode(args.mode, args.provider, args.span_processor)
    process_time = time.process_time
    expected = scenario.expected_chunks

    def block(enabled: bool) -> float:
        if enabled:
            mode.enable()
        for _ in range(args.warmup):
            seen = call(client)
        if seen != expected:
            raise SystemExit(f"{args.mode}: the user saw {seen} chunks, expected {expected}")
        mode.check(args.warmup if enabled else 0)
        gc.collect()
        started = process_time()
        for _ in range(args.calls):
            call(client)
        elapsed = process_time() - started
        mode.check(args.calls if enabled else 0)
        if enabled:
            mode.disable()
        return elapsed / args.calls * 1e6

    # settle: whatever loads on first use (price data, stream classes, attribute caches) loads now
    mode.enable()
    for _ in range(args.warmup * 3):
        call(client)
    _join_background_loaders()
    mode.disable()
    mode.check(args.warmup * 3)
    settled = args.warmup * 3
    bare: list[float] = []
    instrumented: list[float] = []
    for pair in range(args.pairs):
        order = (False, True) if pair % 2 == 0 else (True, False)  # ABBA: cancels a linear drift
        for enabled in order:
            (instrumented if enabled else bare).append(block(enabled))
    mode.final_check(settled + args.pairs * (args.calls + args.warmup))
    return {"provider": args.provider, "kind": args.kind, "mode": args.mode, "method": "blocks",
            "bare_us": bare, "mode_us": instrumented, "diff_us": [m - b for m, b in zip(instrumented, bare)],
            "chunks": scenario.expected_chunks}


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    import logging

    logging.getLogger("opentelemetry").setLevel(logging.ERROR)  # duplicate-instrument notices
    return run_child_blocks(args) if args.method == "blocks" else run_child_paired(args)


# ============================================================================ the parent: run, aggregate, print
def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "p25": _quantile(values, 0.25), "p75": _quantile(values, 0.75),
            "n": len(values)}


def adapter_present(provider: str) -> bool:
    try:
        return importlib.util.find_spec(ADAPTER_MODULES[provider]) is not None
    except ModuleNotFoundError:
        return False


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str | None] = {}
    for package in ("openai", "anthropic", "google-genai", "httpx2", "opentelemetry-sdk", "wrapt"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu,
            "cores": os.cpu_count(), "packages": versions}


def run_parent(args: argparse.Namespace) -> dict[str, Any]:
    providers = [p for p in args.providers.split(",") if p]
    kinds = [k for k in args.kinds.split(",") if k]
    modes = [m for m in args.modes.split(",") if m]
    skipped = {}
    scenarios = []
    for provider in providers:
        if provider != "openai" and not adapter_present(provider):
            skipped[provider] = f"{ADAPTER_MODULES[provider]} does not exist yet"
            continue
        scenarios += [(provider, kind) for kind in kinds if (provider, kind) in SCENARIOS]
    modes_of = {scenario: [m for m in modes if (m != "yardstick-full" or scenario[0] in FULL_YARDSTICK_PROVIDERS)
                           and (m != "floor" or (scenario[1] == "chat" and args.method == "paired"))
                           and (m != "floor-hooks" or (scenario == ("openai", "chat") and args.method == "paired"))]
                for scenario in scenarios}
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    raw: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for scenario in scenarios:
        streamed = scenario[1] != "chat"
        if args.method == "paired":
            sizes = ["--pairs", str(args.stream_pairs if streamed else args.pairs), "--group", str(args.group)]
        else:
            sizes = ["--pairs", str(args.blocks), "--calls", str(args.stream_calls if streamed else args.calls)]
        mine = modes_of[scenario]
        for round_number in range(args.processes):
            # interleaved rounds, each starting with another mode: slow phases hit every mode alike
            rotation = mine[round_number % len(mine):] + mine[:round_number % len(mine)]
            for mode in rotation:
                command = [sys.executable, os.path.abspath(__file__), "--child", "--method", args.method,
                           "--provider", scenario[0], "--kind", scenario[1], "--mode", mode, *sizes,
                           "--warmup", str(args.warmup), "--span-processor", args.span_processor]
                print(f"  {scenario[0]:9} {scenario[1]:13} {mode:17} process {round_number + 1}/{args.processes}",
                      file=sys.stderr, flush=True)
                done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise SystemExit(f"child failed: {' '.join(command)}\n{done.stdout}\n{done.stderr}")
                raw.setdefault((*scenario, mode), []).append(json.loads(done.stdout.strip().splitlines()[-1]))
    return aggregate(raw, scenarios, modes, skipped, args)


def _median_interval(values: list[float]) -> tuple[float, float]:
    """A distribution-free 95% confidence interval of the median (binomial order statistics)."""
    ordered = sorted(values)
    n = len(ordered)
    half_width = 1.96 * (n ** 0.5) / 2
    low = max(0, int(n / 2 - half_width))
    high = min(n - 1, int(n / 2 + half_width + 1))
    return ordered[low], ordered[high]


def aggregate(raw: dict[tuple[str, str, str], list[dict[str, Any]]], scenarios: list[tuple[str, str]],
              modes: list[str], skipped: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    results = []
    for provider, kind in scenarios:
        entry: dict[str, Any] = {"provider": provider, "kind": kind, "modes": {}}
        all_bare: list[float] = []
        chunks = 0
        for mode in modes:
            runs = raw.get((provider, kind, mode), [])
            if not runs:
                continue
            bare = [v for run in runs for v in run["bare_us"]]
            measured = [v for run in runs for v in run["mode_us"]]
            diffs = [v for run in runs for v in run["diff_us"]]
            chunks = runs[0]["chunks"]
            all_bare += bare
            added = _summary(diffs)
            added["ci95"] = _median_interval(diffs)
            added["mean"] = statistics.fmean(diffs)
            added["per_process_medians"] = [statistics.median(run["diff_us"]) for run in runs]
            # relative overhead of each pair (difference / its bare call): the machine's speed drifts
            # between processes and over time, and an overhead in µs drifts with it
            fractions = [[d / b for d, b in zip(run["diff_us"], run["bare_us"])] for run in runs]
            entry["modes"][mode] = {
                "us_per_call": _summary(measured), "added_us": added, "bare_us_same_processes": _summary(bare),
                "added_fraction_of_bare": statistics.median([f for run in fractions for f in run]),
                "added_fraction_ci95": _median_interval([f for run in fractions for f in run]),
                "per_process_fractions": [statistics.median(run) for run in fractions],
            }
        entry["bare_us"] = _summary(all_bare)
        entry["chunks"] = chunks
        found = entry["modes"]
        # ratios of the relative overheads (each measured against the bare calls of its own processes)
        if "tokenmetry" in found and "yardstick" in found:
            entry["ratio_tokenmetry_to_yardstick"] = (found["tokenmetry"]["added_fraction_of_bare"]
                                                      / found["yardstick"]["added_fraction_of_bare"])
            entry["ratio_tokenmetry_to_yardstick_us"] = (found["tokenmetry"]["added_us"]["median"]
                                                         / found["yardstick"]["added_us"]["median"])
        if "tokenmetry" in found and "yardstick-full" in found:
            entry["ratio_tokenmetry_to_yardstick_full"] = (found["tokenmetry"]["added_fraction_of_bare"]
                                                           / found["yardstick-full"]["added_fraction_of_bare"])
        if "tokenmetry-nosdk" in found:
            entry["nosdk_added_fraction_of_bare"] = found["tokenmetry-nosdk"]["added_fraction_of_bare"]
        if "floor" in found:
            entry["floor_added_fraction_of_bare"] = found["floor"]["added_fraction_of_bare"]
        if "floor-hooks" in found:
            entry["floor_hooks_added_fraction_of_bare"] = found["floor-hooks"]["added_fraction_of_bare"]
        if chunks:
            for values in found.values():
                values["added_us_per_chunk"] = values["added_us"]["median"] / chunks
        results.append(entry)
    # the per-chunk marginal cost: a stream's added cost beyond the same mode's non-streamed call
    by_key = {(r["provider"], r["kind"]): r for r in results}
    for result in results:
        chat = by_key.get((result["provider"], "chat"))
        if result["chunks"] and chat is not None:
            for name, values in result["modes"].items():
                if name in chat["modes"]:
                    values["marginal_added_us_per_chunk"] = (
                        values["added_us"]["median"] - chat["modes"][name]["added_us"]["median"]) / result["chunks"]
    settings: dict[str, Any] = {"method": args.method, "processes": args.processes, "warmup": args.warmup,
                                "span_processor": args.span_processor, "stream_chunks": STREAM_CHUNKS,
                                "clock": "time.process_time (CPU time of all threads of the process)"}
    if args.method == "paired":
        settings.update(pairs=args.pairs, stream_pairs=args.stream_pairs)
    else:
        settings.update(blocks=args.blocks, calls=args.calls, stream_calls=args.stream_calls)
    return {"machine": machine(), "settings": settings, "skipped": skipped, "results": results}


def print_table(report: dict[str, Any]) -> None:
    settings = report["settings"]
    if settings["method"] == "paired":
        size = f"{settings['pairs']} pairs of calls ({settings['stream_pairs']} for streams)"
    else:
        size = f"{settings['blocks']} pairs of blocks of {settings['calls']} calls ({settings['stream_calls']} for streams)"
    print(f"\nCPU time per call, µs (process_time). Method: {settings['method']}, {settings['processes']} fresh "
          f"processes per mode x {size}; span processor: {settings['span_processor']}.")
    print("added = median of paired differences (instrumented - bare) [95% CI of that median]; added/bare = "
          "median over pairs of difference/bare call, overall and [lowest, highest] per process.")
    header = (f"{'provider':9} {'kind':13} {'mode':17} {'µs/call':>8} {'added µs':>9} {'95% CI':>17} "
              f"{'added/bare':>10} {'per process':>21} {'µs/chunk':>8}")
    print(header)
    print("-" * len(header))
    for result in report["results"]:
        bare = result["bare_us"]
        print(f"{result['provider']:9} {result['kind']:13} {'bare':17} {bare['median']:8.0f}")
        for mode, values in result["modes"].items():
            added = values["added_us"]
            low, high = added["ci95"]
            fractions = values["per_process_fractions"]
            per_chunk = values.get("added_us_per_chunk")
            print(f"{'':9} {'':13} {mode + (' (A/A)' if mode == 'bare' else ''):17} "
                  f"{values['us_per_call']['median']:8.0f} {added['median']:+9.1f} [{low:+7.1f},{high:+7.1f}] "
                  f"{values['added_fraction_of_bare']:+10.2%} "
                  f"{'[' + format(min(fractions), '+.2%') + ', ' + format(max(fractions), '+.2%') + ']':>21} "
                  f"{'' if per_chunk is None else format(per_chunk, '8.2f')}")
        notes = []
        if "ratio_tokenmetry_to_yardstick" in result:
            ratio = result["ratio_tokenmetry_to_yardstick"]
            notes.append(f"tokenmetry/yardstick added = {ratio:.2f} (target <= 1.1: {'ok' if ratio <= 1.1 else 'MISSED'}; "
                         f"in µs: {result['ratio_tokenmetry_to_yardstick_us']:.2f})")
        if "ratio_tokenmetry_to_yardstick_full" in result:
            notes.append(f"tokenmetry/yardstick-full added = {result['ratio_tokenmetry_to_yardstick_full']:.2f}")
        if "nosdk_added_fraction_of_bare" in result:
            fraction = result["nosdk_added_fraction_of_bare"]
            notes.append(f"nosdk added/bare = {fraction:.2%} (target < 2%: {'ok' if fraction < 0.02 else 'MISSED'})")
        if "floor_added_fraction_of_bare" in result:
            notes.append(f"floor added/bare = {result['floor_added_fraction_of_bare']:.2%} (the least an exact "
                         "per-call account costs)")
        if "floor_hooks_added_fraction_of_bare" in result:
            notes.append(f"floor-hooks added/bare = {result['floor_hooks_added_fraction_of_bare']:.2%} (the same, "
                         "taken at tokenmetry's patch points)")
        marginal = {m: v["marginal_added_us_per_chunk"] for m, v in result["modes"].items()
                    if "marginal_added_us_per_chunk" in v and m != "bare"}
        if marginal:
            notes.append("marginal µs/chunk (beyond the non-streamed call): "
                         + ", ".join(f"{m} {v:.2f}" for m, v in marginal.items()))
        for note in notes:
            print(f"{'':24}{note}")
    for provider, reason in report["skipped"].items():
        print(f"skipped {provider}: {reason}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--providers", default="openai,anthropic,gemini")
    parser.add_argument("--kinds", default="chat,stream,stream-inject")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--method", choices=("paired", "blocks"), default="paired",
                        help="paired: bare and instrumented client alternate call by call (instance-level "
                        "instrumentation, tokenmetry.wrap); blocks: instrument()/uninstrument() between blocks")
    parser.add_argument("--processes", type=int, default=3, help="fresh processes per mode and scenario")
    parser.add_argument("--pairs", type=int, default=1500, help="paired: call pairs per process (non-streamed)")
    parser.add_argument("--stream-pairs", type=int, default=400, help="paired: call pairs per process (streams)")
    parser.add_argument("--group", type=int, default=16,
                        help="paired: calls timed together as one unit of a pair (tokenmetry applies finished "
                             "calls to sessions and statistics every 16 calls: a group of 16 holds that work once)")
    parser.add_argument("--blocks", type=int, default=10, help="blocks: bare/instrumented block pairs per process")
    parser.add_argument("--calls", type=int, default=150, help="blocks: calls per block (non-streamed)")
    parser.add_argument("--stream-calls", type=int, default=40, help="blocks: calls per block (streamed)")
    parser.add_argument("--warmup", type=int, default=30, help="untimed calls first (blocks: before each block)")
    parser.add_argument("--span-processor", choices=("batch", "simple"), default="batch")
    parser.add_argument("--quick", action="store_true", help="2 processes, a fifth of the calls")
    parser.add_argument("--json", metavar="FILE", help="also write the full report as JSON ('-': only JSON, to stdout)")
    # internal: one measuring process
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--provider", help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args)))
        return
    for option, given, known in (("--providers", args.providers, ADAPTER_MODULES),
                                 ("--kinds", args.kinds, {kind for _, kind in SCENARIOS}),
                                 ("--modes", args.modes, MODES)):
        unknown = [name for name in given.split(",") if name and name not in known]
        if unknown:
            parser.error(f"{option}: unknown {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    if args.quick:
        args.processes = 2
        args.pairs, args.stream_pairs = args.pairs // 5, args.stream_pairs // 5
        args.blocks, args.calls, args.stream_calls = 6, args.calls // 2, args.stream_calls // 2
    report = run_parent(args)
    if args.json == "-":
        print(json.dumps(report, indent=2))
        return
    print_table(report)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
