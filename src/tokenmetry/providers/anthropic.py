"""The ``anthropic`` SDK: messages (plain, streamed, ``stream()`` helpers, beta), token counting,
and the Vertex AI and Bedrock clients.

Usage (SPEC §3): input = ``input_tokens + cache_read_input_tokens + cache_creation_input_tokens``;
output = ``output_tokens``; cache read / write are the two cache fields; reasoning is
``output_tokens_details.thinking_tokens``. The ``compaction`` entries of ``usage.iterations`` are not
included in the top-level fields, so they are added to them. The 1-hour part of the cache writes
(``cache_creation.ephemeral_1h_input_tokens``) is kept on the call for pricing.

Streams: ``message_start`` carries the input and cache counts and each ``message_delta`` the
*cumulative* output count; newer API versions repeat (and update) the input and cache counts in
``message_delta``. A delta's non-null fields therefore replace what came before and a field it omits
keeps its value: each stream has a :class:`_MessageStreamReader` that keeps the raw running values.

``messages.count_tokens`` bills no tokens: it is recorded as a call with operation ``count_tokens``
and zero usage (so session totals are unchanged), and the counted number is put on its span as
``tokenmetry.counted.input_tokens``.

The SDK traces its own calls with OpenTelemetry (see ``docs/anthropic-tracing.md``): for a call that
tokenmetry records with a span, the SDK's span is suppressed (``suppress_sdk_spans``, the default)
or kept as a child whose ``gen_ai.usage.*`` attributes are withheld, so the trace counts tokens once.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from ..call import Call, current_call, recorder, report_failure
from ..streams import ChunkReader
from ..telemetry import stand_in_span, without_usage
from .base import Endpoint, Patch, RateLimitHeaders, RateLimitTable, Target
from .stainless import StainlessAdapter

__all__ = ["AnthropicAdapter", "adapter", "COUNT_TOKENS_ATTRIBUTE", "read_ratelimit_headers"]

#: the span attribute holding what a ``messages.count_tokens`` call counted
COUNT_TOKENS_ATTRIBUTE = "tokenmetry.counted.input_tokens"


def _value(entry: Any, name: str) -> Any:
    """A field of a usage object: an SDK model, or a plain dict (parsed JSON) when the SDK's type
    lacks the field. Runs about ten times per call, so it looks where pydantic keeps values (declared
    fields in ``__dict__``, others in ``__pydantic_extra__``) instead of ``getattr``, whose miss on
    a field the SDK's version does not declare raises and catches an ``AttributeError``."""
    if isinstance(entry, dict):
        return entry.get(name)
    fields = getattr(entry, "__dict__", None)
    if fields is not None and name in fields:
        return fields[name]
    extra = getattr(entry, "__pydantic_extra__", None)
    if extra is not None:
        return extra.get(name)
    return getattr(entry, name, None)


# ----------------------------------------------------------------------------- usage
def _set_usage(call: Call, input_tokens: int | None, output_tokens: int | None, cache_read: int | None,
               cache_write: int | None, cache_write_1h: int | None, reasoning: int | None,
               iterations: Any) -> None:
    """Normalise raw Anthropic counts into the call (assigns every field: safe to repeat)."""
    input_tokens = input_tokens or 0
    output_tokens = output_tokens or 0
    if iterations:
        # compaction runs are billed but left out of the top-level fields: add them
        for entry in iterations:
            if _value(entry, "type") != "compaction":
                continue
            input_tokens += _value(entry, "input_tokens") or 0
            output_tokens += _value(entry, "output_tokens") or 0
            entry_read = _value(entry, "cache_read_input_tokens")
            if entry_read is not None:
                cache_read = (cache_read or 0) + entry_read
            entry_write = _value(entry, "cache_creation_input_tokens")
            if entry_write is not None:
                cache_write = (cache_write or 0) + entry_write
            creation = _value(entry, "cache_creation")
            entry_1h = None if creation is None else _value(creation, "ephemeral_1h_input_tokens")
            if entry_1h is not None:
                cache_write_1h = (cache_write_1h or 0) + entry_1h
    call.set_usage(input_tokens + (cache_read or 0) + (cache_write or 0), output_tokens, cache_read,
                   cache_write, reasoning)
    call.cache_write_1h_tokens = cache_write_1h


def _fields(entry: Any) -> Mapping[str, Any]:
    """All fields of an SDK model at once (declared ones are in ``__dict__``, others pydantic keeps
    in ``__pydantic_extra__``), or the entry itself when it is a plain dict (parsed JSON): one look
    per object for the readers of a whole response, where :func:`_value` looks per field."""
    if type(entry) is dict:
        return entry
    fields = getattr(entry, "__dict__", None)
    if fields is None:
        return {}
    extra = getattr(entry, "__pydantic_extra__", None)
    return {**fields, **extra} if extra else fields


def _read_usage(call: Call, usage: Any) -> None:
    """A complete usage object (a non-streamed Message)."""
    fields = _fields(usage)
    creation = fields.get("cache_creation")
    details = fields.get("output_tokens_details")
    _set_usage(
        call,
        fields.get("input_tokens"),
        fields.get("output_tokens"),
        fields.get("cache_read_input_tokens"),
        fields.get("cache_creation_input_tokens"),
        None if creation is None else _value(creation, "ephemeral_1h_input_tokens"),
        None if details is None else _value(details, "thinking_tokens"),
        fields.get("iterations"),
    )


def _read_message(call: Call, message: Any) -> None:
    fields = _fields(message)
    call.response_id = fields.get("id")
    call.response_model = fields.get("model")
    stop_reason = fields.get("stop_reason")
    if stop_reason:
        call.add_finish_reason(stop_reason)
    usage = fields.get("usage")
    if usage is not None:
        _read_usage(call, usage)
        if not recorder.keeps_output_text:
            return
    for block in fields.get("content") or ():  # the text, for an estimate (no usage) or captured content
        text = _value(block, "text") or _value(block, "thinking")
        if text:
            call.add_text(text)


class _MessageStreamReader:
    """Reads one stream's events into its call, keeping the raw running usage values.

    ``message_start`` sets them; each ``message_delta`` replaces those it carries (its output count
    is cumulative: assigned, never added) and keeps the others. Every change is normalised into the
    call at once, so a stream left at any point has the usage reported so far.
    """

    __slots__ = ("input_tokens", "output_tokens", "cache_read", "cache_write", "cache_write_1h",
                 "reasoning", "iterations")

    def __init__(self) -> None:
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.cache_read: int | None = None
        self.cache_write: int | None = None
        self.cache_write_1h: int | None = None
        self.reasoning: int | None = None
        self.iterations: Any = None

    def __call__(self, call: Call, event: Any) -> bool:
        kind = event.type
        if kind == "content_block_delta":  # by far the most frequent event: first
            delta = event.delta
            delta_type = delta.type
            if delta_type == "text_delta":
                call.add_text(delta.text)
            elif delta_type == "thinking_delta":
                call.add_text(delta.thinking)
            elif delta_type == "input_json_delta":
                call.add_text(delta.partial_json)
        elif kind == "message_start":
            message = event.message
            call.response_id = message.id
            call.response_model = message.model
            usage = message.usage
            if usage is not None:
                self._merge(usage)
                creation = _value(usage, "cache_creation")
                if creation is not None:
                    self.cache_write_1h = _value(creation, "ephemeral_1h_input_tokens")
                self._apply(call)
                call.output_pending = True  # message_start's output count is a placeholder
        elif kind == "message_delta":
            stop_reason = _value(event.delta, "stop_reason")
            if stop_reason:
                call.finish_reasons = (stop_reason,)
            usage = _value(event, "usage")
            if usage is not None:
                self._merge(usage)
                self._apply(call)
                call.output_pending = False
        return True

    def _merge(self, usage: Any) -> None:
        value = _value(usage, "input_tokens")
        if value is not None:
            self.input_tokens = value
        value = _value(usage, "output_tokens")
        if value is not None:
            self.output_tokens = value
        value = _value(usage, "cache_read_input_tokens")
        if value is not None:
            self.cache_read = value
        value = _value(usage, "cache_creation_input_tokens")
        if value is not None:
            self.cache_write = value
        details = _value(usage, "output_tokens_details")
        if details is not None:
            value = _value(details, "thinking_tokens")
            if value is not None:
                self.reasoning = value
        value = _value(usage, "iterations")
        if value is not None:
            self.iterations = value

    def _apply(self, call: Call) -> None:
        _set_usage(call, self.input_tokens, self.output_tokens, self.cache_read, self.cache_write,
                   self.cache_write_1h, self.reasoning, self.iterations)


def _read_token_count(call: Call, count: Any) -> None:
    # counting bills nothing: zero provider usage keeps session totals (and estimates) out of it
    call.set_usage(0, 0)
    counted = _value(count, "input_tokens")
    if isinstance(counted, int):
        call.attributes = {COUNT_TOKENS_ATTRIBUTE: counted}


MESSAGES = Endpoint("chat", _read_message)
COUNT_TOKENS = Endpoint("count_tokens", _read_token_count)

# (header, key in call.rate_limits, parser): "remaining_tokens" etc., as the telemetry gauge reads them
_RATE_LIMIT_HEADERS: RateLimitTable = tuple(
    (f"anthropic-ratelimit-{kind.replace('_', '-')}-{field}", f"{field}_{kind}",
     str if field == "reset" else int)
    for kind in ("requests", "tokens", "input_tokens", "output_tokens")
    for field in ("remaining", "limit", "reset")
)

#: ``anthropic-ratelimit-*`` headers into ``call.rate_limits`` (``remaining_tokens``, ...); a response
#: without either probe is not from the Anthropic API (Vertex AI, Bedrock, a proxy)
read_ratelimit_headers = RateLimitHeaders(
    _RATE_LIMIT_HEADERS,
    probes=("anthropic-ratelimit-requests-remaining", "anthropic-ratelimit-tokens-remaining"),
)


# ----------------------------------------------------------------------------- the SDK's own spans
def _sdk_span(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Around the SDK's ``start_api_call_span``: one span per call reaches the exporter."""
    call = current_call.get()
    if call is None or call.span is None:
        return wrapped(*args, **kwargs)  # not a call tokenmetry traces: the SDK's span is the only one
    if recorder.options.suppress_sdk_spans:
        try:
            return stand_in_span(call.span)
        except Exception:
            report_failure("sdk_span")
            return wrapped(*args, **kwargs)
    span = wrapped(*args, **kwargs)
    try:
        return without_usage(span)
    except Exception:
        report_failure("sdk_span")
        return span


class _SpanHook:
    """``_sdk_span`` installed by hand for clients instrumented with ``wrap()`` alone."""

    __slots__ = ("original",)

    def __init__(self, original: Any) -> None:
        self.original = original

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _sdk_span(self.original, None, args, kwargs)


# ----------------------------------------------------------------------------- the adapter
_MESSAGES_PATH = "/v1/messages"
_COUNT_TOKENS_PATH = "/v1/messages/count_tokens"


class AnthropicAdapter(StainlessAdapter):
    package = "anthropic"
    name = "anthropic"
    rate_limit_headers = read_ratelimit_headers
    #: the module whose start_api_call_span the SDK's own tracing calls (None: the SDK has none)
    _tracing_home: Any = None

    def available(self) -> bool:
        if not super().available():
            return False
        try:
            self._tracing_home = importlib.import_module("anthropic._base_client")
            self._tracing_home.__dict__["start_api_call_span"]
        except (ImportError, KeyError):
            self._tracing_home = None  # an SDK without its own tracing: nothing to suppress
        return True

    def patches(self) -> list[Patch]:
        patches = super().patches()
        if self._tracing_home is not None:
            patches.append(Patch(self._tracing_home, "start_api_call_span", _sdk_span))
        return patches

    def _begin(self, client: Any, args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> tuple[Endpoint, Call] | None:
        begun = super()._begin(client, args, kwargs)
        if begun is not None and begun[1].span is not None:
            self._ensure_sdk_span_hook()
        return begun

    def _ensure_sdk_span_hook(self) -> None:
        """The SDK-span hook must be in place for a traced call. instrument() patches it (and
        uninstrument() restores it); a client instrumented by wrap() alone finds it missing and
        installs it here, for good: it is inert for every call tokenmetry does not record."""
        home = self._tracing_home
        if home is None:
            return
        current = home.__dict__.get("start_api_call_span")
        # isinstance sees through instrument()'s wrapt proxy, which carries _sdk_span itself
        if current is None or isinstance(current, _SpanHook) or \
                getattr(current, "_self_wrapper", None) is _sdk_span:
            return
        home.start_api_call_span = _SpanHook(current)

    def route(self, client: Any, options: Any) -> Endpoint | None:
        if options.method != "post":
            return None
        # older SDKs send beta calls to "/v1/messages?beta=true"; newer ones mark them by header only
        path = options.url.partition("?")[0]
        if path.endswith(_MESSAGES_PATH):
            return MESSAGES
        if path.endswith(_COUNT_TOKENS_PATH):
            return COUNT_TOKENS
        # the platform forms, should a request arrive already rewritten (Vertex AI, Bedrock)
        if "/publishers/anthropic/models/" in path:
            if path.endswith("/count-tokens:rawPredict"):
                return COUNT_TOKENS
            if path.endswith((":rawPredict", ":streamRawPredict")):
                return MESSAGES
        elif path.startswith("/model/") and path.endswith(("/invoke", "/invoke-with-response-stream")):
            return MESSAGES
        return None

    def request_facts(self, options: Any) -> tuple[str | None, bool, Any]:
        model, stream, body = super().request_facts(options)
        if not isinstance(model, str):
            # a rewritten platform request names the model (and streaming) in its path
            path = options.url.partition("?")[0]
            if "/publishers/anthropic/models/" in path:
                segment = path.rsplit("/", 1)[-1]
                name, _, action = segment.partition(":")
                if name != "count-tokens":
                    model = name
                stream = stream or action == "streamRawPredict"
            elif path.startswith("/model/"):
                model = path.split("/")[2]
                stream = stream or path.endswith("/invoke-with-response-stream")
            else:
                model = None
        return model, stream, body

    def chunk_reader(self, endpoint: Endpoint, call: Call) -> ChunkReader:
        return _MessageStreamReader()

    def target(self, client: Any) -> Target:
        url = client.base_url
        host = url.host or None
        port = url.port or (443 if url.scheme == "https" else 80)
        # the SDK names its platform clients' providers itself: "gcp.vertex_ai", "aws.bedrock"
        provider = getattr(client, "_gen_ai_provider_name", None)
        if not isinstance(provider, str) or not provider:
            provider = "anthropic"
        return Target(provider, host, port)


adapter = AnthropicAdapter()
