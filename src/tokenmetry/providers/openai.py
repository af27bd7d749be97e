"""The ``openai`` SDK: chat completions, responses, completions, embeddings; Azure and compatibles.

Usage (SPEC §3): chat/completions read ``prompt_tokens`` / ``completion_tokens`` and their details;
responses read ``input_tokens`` / ``output_tokens`` and theirs. Streamed chat and completions get
``stream_options.include_usage`` added when the user did not ask for it, and the extra usage-only
chunk (``choices == []``) is then withheld, so the user iterates exactly what they would have.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from ..call import Call, recorder
from ..streams import ChunkReader
from .base import Endpoint, RateLimitHeaders, RateLimitTable, Target
from .stainless import StainlessAdapter

__all__ = ["OpenAIAdapter", "provider_for_host"]

# OpenAI-compatible vendors recognised from the client's base_url host (suffix match)
_HOST_PROVIDERS: tuple[tuple[str, str], ...] = (
    ("api.openai.com", "openai"),
    (".openai.azure.com", "azure.ai.openai"),
    (".cognitiveservices.azure.com", "azure.ai.openai"),
    (".services.ai.azure.com", "azure.ai.openai"),
    ("api.deepseek.com", "deepseek"),
    ("api.groq.com", "groq"),
    ("openrouter.ai", "openrouter"),
    ("api.mistral.ai", "mistral_ai"),
    ("api.x.ai", "x_ai"),
    ("api.together.xyz", "together_ai"),
    ("api.together.ai", "together_ai"),
    ("api.fireworks.ai", "fireworks"),
    ("api.perplexity.ai", "perplexity"),
    ("generativelanguage.googleapis.com", "gcp.gemini"),
    ("aiplatform.googleapis.com", "gcp.vertex_ai"),
    ("api.cerebras.ai", "cerebras"),
    ("api.anthropic.com", "anthropic"),
)


def provider_for_host(host: str) -> str:
    """The gen_ai.provider.name of an OpenAI-compatible endpoint; local servers (vLLM, Ollama,
    LM Studio) and unknown hosts are ``openai``-compatible and reported as ``openai``."""
    host = host.lower()
    for suffix, provider in _HOST_PROVIDERS:
        if host == suffix.lstrip(".") or host.endswith(suffix if suffix.startswith(".") else "." + suffix):
            return provider
    return "openai"


# ----------------------------------------------------------------------------- usage readers
def _read_completion_usage(call: Call, usage: Any) -> None:
    """Assign (never add) a chat or text completion's usage: Call.set_usage's work, done here for
    every call without its frame, reading the models' ``__dict__`` (where pydantic keeps declared
    fields: an attribute of an SDK model goes through pydantic's ``__getattr__`` hook)."""
    counts = usage.__dict__
    call.input_tokens = counts["prompt_tokens"] or 0
    call.output_tokens = counts["completion_tokens"] or 0
    details = counts["prompt_tokens_details"]
    if details is None:
        call.cache_read_tokens = call.cache_write_tokens = None
    else:
        counts = details.__dict__
        call.cache_read_tokens = counts["cached_tokens"]
        written = counts.get("cache_write_tokens", _UNDECLARED)
        call.cache_write_tokens = getattr(details, "cache_write_tokens", None) \
            if written is _UNDECLARED else written  # (an SDK before the field: maybe an extra)
    details = usage.completion_tokens_details
    call.reasoning_tokens = None if details is None else details.reasoning_tokens
    call.usage_source = "provider"


_UNDECLARED: Any = object()

# the tiers OpenAI bills at their own prices (genai-prices variants); "default" is the list price
_TIER_CONTEXTS: dict[str | None, dict[str, str]] = {
    tier: {"service_tier": tier} for tier in ("flex", "priority", "scale", "fast")}


def read_service_tier(call: Call, response: Any) -> None:
    """The service tier the response was served at (``flex`` costs half, ``priority`` more)."""
    context = _TIER_CONTEXTS.get(getattr(response, "service_tier", None))
    if context is not None:  # the default tier is the list price: nothing to note
        call.price_context = context


def _unset_injected_usage(chunk: Any) -> None:
    """Once usage is asked for, the API sends ``"usage": null`` on every chunk: when tokenmetry asked,
    mark the field unset again so the chunk serialises (``to_dict()``, ``exclude_unset``) as it would
    have without the injection."""
    chunk.__pydantic_fields_set__.discard("usage")


# /chat/completions and /completions differ only in where a choice keeps its text: a chat choice in
# ``message.content`` (``delta.content`` in a chunk), a text-completion choice in ``text``. The readers
# are made once per endpoint and test ``chat`` inline: a chunk reader runs for every chunk, and a
# text getter passed in would cost a call per choice.
def _completion_readers(chat: bool) -> tuple[Callable[[Call, Any], None], ChunkReader]:
    """The response and chunk readers of /chat/completions (``chat``) or /completions."""

    def read_completion(call: Call, completion: Any) -> None:
        # fields read from the models' __dict__ (where pydantic keeps declared fields): an attribute
        # of an SDK model goes through pydantic's __getattr__ hook, a dict subscript does not
        fields = completion.__dict__
        call.response_id = fields["id"]
        call.response_model = fields["model"]
        tier = fields.get("service_tier")  # (text completions have none)
        if tier is not None and tier in _TIER_CONTEXTS:  # read_service_tier, inline: once per call
            call.price_context = _TIER_CONTEXTS[tier]
        reasons: tuple[str, ...] = ()
        for choice in fields["choices"]:
            if choice.finish_reason:
                reasons += (choice.finish_reason,)
        call.finish_reasons = reasons
        usage = fields["usage"]
        if usage is not None:
            _read_completion_usage(call, usage)
            if not recorder.keeps_output_text:
                return
        for choice in completion.choices:  # the text, for an estimate (no usage) or captured content
            if chat:
                message = choice.message
                text = message.content if message is not None else None
            else:
                text = choice.text
            if text:
                call.add_text(text)

    def read_completion_chunk(call: Call, chunk: Any) -> bool:
        usage = chunk.usage
        if usage is not None:
            _read_completion_usage(call, usage)  # the last non-null usage wins
        elif call.withhold_usage_chunk:
            _unset_injected_usage(chunk)
        choices = chunk.choices
        if not choices:
            # the usage-only chunk we asked for on the user's behalf; anything else passes
            return usage is None or not call.withhold_usage_chunk
        if call.response_id is None:
            call.response_id = chunk.id
            call.response_model = chunk.model
            read_service_tier(call, chunk)
        for choice in choices:
            if chat:
                delta = choice.delta
                text = delta.content if delta is not None else None
            else:
                text = choice.text
            if text:
                call.add_text(text)
            if choice.finish_reason:
                call.add_finish_reason(choice.finish_reason)
        return True

    return read_completion, read_completion_chunk


def _read_embeddings(call: Call, response: Any) -> None:
    call.response_model = response.model
    usage = response.usage
    if usage is not None:
        call.set_usage(usage.prompt_tokens, 0)


def _read_response(call: Call, response: Any) -> None:
    call.response_id = response.id
    call.response_model = response.model
    if recorder.keeps_output_text and not call.stream:  # a stream's text comes in its deltas
        text = getattr(response, "output_text", None)  # the SDK joins the output's text items
        if text:
            call.add_text(text)
    read_service_tier(call, response)
    status = response.status
    if status:
        reason = status
        details = response.incomplete_details
        if details is not None and details.reason:
            reason = details.reason
        call.add_finish_reason(reason)
    usage = response.usage
    if usage is not None:
        input_details = usage.input_tokens_details
        output_details = usage.output_tokens_details
        call.set_usage(
            usage.input_tokens,
            usage.output_tokens,
            None if input_details is None else input_details.cached_tokens,
            None if input_details is None else getattr(input_details, "cache_write_tokens", None),
            None if output_details is None else output_details.reasoning_tokens,
        )
    elif status in _UNFINISHED:
        # a background response not generated yet: nothing billed so far, nothing to estimate;
        # its usage is counted when a retrieve finds it complete
        call.set_usage(0, 0)


_UNFINISHED = frozenset({"queued", "in_progress"})
_FINAL_RESPONSE_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def _read_response_event(call: Call, event: Any) -> bool:
    kind = event.type
    if kind == "response.output_text.delta":
        call.add_text(event.delta)
    elif kind in _FINAL_RESPONSE_EVENTS:
        call.finish_reasons = ()
        _read_created(call, event.response)
    elif kind == "response.created":
        call.response_id = event.response.id
        call.response_model = event.response.model
    return True


class _CountedResponses:
    """Ids of Responses whose usage this process has already counted (the most recent 10,000).

    ``responses.retrieve`` returns a stored response with the usage its creation was billed for:
    counting it again would double a session's totals. A retrieved response is counted only when
    its usage was not seen before (a background response polled until it completes).
    """

    def __init__(self, limit: int = 10_000) -> None:
        self._ids: dict[str, None] = {}
        self._limit = limit
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._ids.clear()

    def first_time(self, response_id: str) -> bool:
        with self._lock:
            if response_id in self._ids:
                return False
            self._ids[response_id] = None
            if len(self._ids) > self._limit:
                del self._ids[next(iter(self._ids))]
            return True


_counted = _CountedResponses()


def _read_created(call: Call, response: Any) -> None:
    _read_response(call, response)
    if response.usage is not None and response.id:
        _counted.first_time(response.id)


def _read_retrieved(call: Call, response: Any) -> None:
    _read_response(call, response)
    if response.usage is not None and response.id and not _counted.first_time(response.id):
        call.set_usage(0, 0)  # billed, and counted, when it was created
        call.attributes = {"tokenmetry.usage.already_counted": True}


def _read_retrieved_event(call: Call, event: Any) -> bool:
    if event.type in _FINAL_RESPONSE_EVENTS:
        call.finish_reasons = ()
        _read_retrieved(call, event.response)
        return True
    return _read_response_event(call, event) if event.type != "response.completed" else True


def _ask_for_stream_usage(call: Call, body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """Add ``stream_options.include_usage`` to a streamed request that lacks it."""
    if not body.get("stream") or not recorder.options.inject_stream_usage:
        return None
    stream_options = body.get("stream_options")
    if isinstance(stream_options, Mapping):
        if stream_options.get("include_usage") is True:
            return None
        stream_options = {**stream_options, "include_usage": True}
    else:
        stream_options = {"include_usage": True}
    call.withhold_usage_chunk = True
    return {**body, "stream_options": stream_options}


CHAT = Endpoint("chat", *_completion_readers(chat=True), _ask_for_stream_usage)
TEXT_COMPLETION = Endpoint("text_completion", *_completion_readers(chat=False), _ask_for_stream_usage)
EMBEDDINGS = Endpoint("embeddings", _read_embeddings)
RESPONSES = Endpoint("chat", _read_created, _read_response_event)
RETRIEVED_RESPONSE = Endpoint("chat", _read_retrieved, _read_retrieved_event)

_POST_ENDPOINTS = {
    "/chat/completions": CHAT,
    "/completions": TEXT_COMPLETION,
    "/embeddings": EMBEDDINGS,
    "/responses": RESPONSES,
}

# (header, key in call.rate_limits, parser): "remaining_tokens" etc., as the telemetry gauge reads them
_RATE_LIMIT_HEADERS: RateLimitTable = (
    ("x-ratelimit-remaining-requests", "remaining_requests", int),
    ("x-ratelimit-remaining-tokens", "remaining_tokens", int),
    ("x-ratelimit-limit-requests", "limit_requests", int),
    ("x-ratelimit-limit-tokens", "limit_tokens", int),
    ("x-ratelimit-reset-requests", "reset_requests", str),
    ("x-ratelimit-reset-tokens", "reset_tokens", str),
)

#: ``x-ratelimit-*`` headers (OpenAI and most compatible vendors) into ``call.rate_limits``
read_ratelimit_headers = RateLimitHeaders(
    _RATE_LIMIT_HEADERS, probes=("x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens"),
)


class OpenAIAdapter(StainlessAdapter):
    package = "openai"
    name = "openai"
    rate_limit_headers = read_ratelimit_headers
    helper_streams = (
        "openai.lib.streaming.chat._completions:ChatCompletionStream",
        "openai.lib.streaming.chat._completions:AsyncChatCompletionStream",
        "openai.lib.streaming.responses._responses:ResponseStream",
        "openai.lib.streaming.responses._responses:AsyncResponseStream",
    )

    def route(self, client: Any, options: Any) -> Endpoint | None:
        method = options.method
        url = options.url
        if method == "post":
            return _POST_ENDPOINTS.get(url)
        if method == "get" and url.startswith("/responses/") and url.count("/") == 2:
            return RETRIEVED_RESPONSE  # responses.retrieve
        return None

    def target(self, client: Any) -> Target:
        url = client.base_url
        host = url.host or None
        port = url.port or (443 if url.scheme == "https" else 80)
        azure = getattr(self.sdk, "AzureOpenAI", None), getattr(self.sdk, "AsyncAzureOpenAI", None)
        if any(cls is not None and isinstance(client, cls) for cls in azure):
            return Target("azure.ai.openai", host, port)
        return Target(provider_for_host(host or ""), host, port)


adapter = OpenAIAdapter()
