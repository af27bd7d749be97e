"""The ``google-genai`` SDK: Gemini API (``gcp.gemini``) and Vertex AI (``gcp.vertex_ai``).

Patch points, one per HTTP request, so every API call is recorded exactly once:

* ``Models._generate_content`` / ``_generate_content_stream`` / ``_embed_content`` / ``count_tokens``
  and their ``AsyncModels`` twins. The public ``generate_content`` / ``generate_content_stream`` /
  ``embed_content`` and ``client.chats`` sessions all end in these; automatic function calling and
  automatic continuation send several requests and each one is its own (billed) call.
* ``BaseApiClient._request_once`` / ``_async_request_once``: one HTTP attempt, called again by the
  SDK's tenacity loop (built from ``HttpRetryOptions``) after each backoff sleep. The time between a
  failed attempt and the next one is the sleep that really happened (see :mod:`tokenmetry.patching`).

Usage (SPEC §3): input = ``prompt_token_count + tool_use_prompt_token_count``; output =
``candidates_token_count + thoughts_token_count``; cache_read = ``cached_content_token_count``;
reasoning = ``thoughts_token_count``; tool = ``tool_use_prompt_token_count``; no cache write. A field
the response leaves out stays None. Streams repeat ``usage_metadata`` on chunks and a value can go down
mid-stream: the last chunk's is the whole, so each one is assigned, never added.

``count_tokens`` bills nothing: it is recorded as operation ``count_tokens`` with zero usage (it
appears in the session's calls and the request counts, adds nothing to the token totals or costs); the
counted figure is the span attribute ``tokenmetry.counted.input_tokens``.

``gen_ai.request.model`` is the model without the resource prefixes Google accepts for the same
model (``models/``, ``publishers/google/models/``, ``projects/…/publishers/google/models/``), so one
model gives one attribute value however it was spelt, and matches the response's ``model_version``
and the price data. Tuned models and endpoints keep their full name.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from .. import patching
from ..call import Call, recorder
from ..retries import error_facts
from .base import Endpoint, Patch, Target

__all__ = ["GoogleGenAIAdapter", "request_model_name", "adapter"]


# ----------------------------------------------------------------------------- request facts
def request_model_name(model: Any) -> str | None:
    """The model name of a google-genai ``model=`` argument, without Google's resource prefixes."""
    if not isinstance(model, str):
        return None
    if "/" not in model:
        return model
    if model.startswith("projects/"):
        marker = model.find("/publishers/google/models/")
        return model[marker + 26:] if marker >= 0 else model
    for prefix in ("models/", "publishers/google/models/", "google/"):
        if model.startswith(prefix):
            return model[len(prefix):]
    return model


def _option(config: Any, name: str) -> Any:
    if config is None:
        return None
    if isinstance(config, Mapping):
        return config.get(name)
    return getattr(config, name, None)


def _plain(value: Any) -> Any:
    """SDK contents as the plain structure tokenmetry's estimators read (text only)."""
    if value is None or isinstance(value, (str, Mapping)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    parts = getattr(value, "parts", None)
    if parts is not None:  # a Content
        return {"role": getattr(value, "role", None) or "user", "parts": [_plain(part) for part in parts]}
    text = getattr(value, "text", None)  # a Part
    if isinstance(text, str):
        return {"text": text}
    return None  # images, files, function calls: no text to estimate from


class _Request(dict):  # type: ignore[type-arg]
    """A request as a budget, an estimate or content capture read it (``contents``, ``system``,
    ``max_output_tokens``). The SDK's objects are converted on first read only: the hot path keeps
    two references and allocates nothing else."""

    __slots__ = ("_contents", "_config", "_filled")

    def __init__(self, contents: Any, config: Any) -> None:
        super().__init__()
        self._contents = contents
        self._config = config
        self._filled = False

    def _fill(self) -> None:
        self._filled = True
        if self._contents is not None:
            self["contents"] = _plain(self._contents)
        config = self._config
        system = _option(config, "system_instruction")
        if system is not None:
            self["system"] = _plain(system)
        limit = _option(config, "max_output_tokens")
        if isinstance(limit, int):
            self["max_output_tokens"] = limit
        self._contents = self._config = None

    def get(self, key: Any, default: Any = None) -> Any:
        if not self._filled:
            self._fill()
        return dict.get(self, key, default)

    def __missing__(self, key: Any) -> Any:
        if not self._filled:
            self._fill()
            return self[key]
        raise KeyError(key)


# ----------------------------------------------------------------------------- response readers
_FINISH_NAMES: dict[Any, str] = {}
# proto numbers of FinishReason, for responses encoded with enum-encoding=int
_FINISH_NUMBERS = {0: "finish_reason_unspecified", 1: "stop", 2: "max_tokens", 3: "safety", 4: "recitation",
                   5: "other"}


def _finish_name(reason: Any) -> str:
    """``FinishReason.MAX_TOKENS`` -> ``"max_tokens"``: lower case, as the OpenTelemetry google-genai
    instrumentation reports them (cached: a handful of values)."""
    name = _FINISH_NAMES.get(reason)
    if name is None:
        if isinstance(reason, int) and not isinstance(reason, bool):
            name = _FINISH_NUMBERS.get(reason, str(reason))
        else:
            name = str(getattr(reason, "value", reason)).lower()
        if len(_FINISH_NAMES) < 64:
            _FINISH_NAMES[reason] = name
    return name


def _read_usage(call: Call, usage: Any) -> None:
    tool = usage.tool_use_prompt_token_count
    thoughts = usage.thoughts_token_count
    call.set_usage((usage.prompt_token_count or 0) + (tool or 0),
                   (usage.candidates_token_count or 0) + (thoughts or 0),
                   usage.cached_content_token_count, None, thoughts, tool)


def _read_candidates(call: Call, candidates: Any, keep_text: bool) -> None:
    for candidate in candidates:
        if keep_text:
            content = candidate.content
            parts = None if content is None else content.parts
            if parts:
                for part in parts:
                    text = part.text
                    if text:
                        call.add_text(text)
        reason = candidate.finish_reason
        if reason is not None:
            call.add_finish_reason(_finish_name(reason))


def _read_generate(call: Call, response: Any) -> None:
    call.response_id = response.response_id
    call.response_model = response.model_version
    usage = response.usage_metadata
    candidates = response.candidates
    if candidates:
        _read_candidates(call, candidates, keep_text=usage is None or recorder.keeps_output_text)
    if usage is not None:
        _read_usage(call, usage)
    elif candidates is None and response.sdk_http_response is not None:
        # config.should_return_http_response: the SDK returns the raw body, unparsed
        _read_body(call, GENERATE_CONTENT, response.sdk_http_response.body)


def _read_generate_chunk(call: Call, chunk: Any) -> bool:
    if call.response_id is None:
        call.response_id = chunk.response_id
    model = chunk.model_version
    if model:
        call.response_model = model
    candidates = chunk.candidates
    usage = chunk.usage_metadata
    if candidates:
        # the text is for an estimate, used only when no chunk carried usage (a stream left early
        # is otherwise counted by the last usage it delivered), and for captured content
        _read_candidates(call, candidates, keep_text=usage is None and call.late_usage is None
                         or recorder.keeps_output_text)
    if usage is not None:
        # every chunk repeats the totals so far and the last one is the whole: read it once, at the end
        call.late_usage = usage
        call.late_usage_reader = _read_usage
    return True


def _read_embed(call: Call, response: Any) -> None:
    usage = response.usage_metadata
    if usage is not None:
        tool = usage.tool_use_prompt_token_count
        call.set_usage((usage.prompt_token_count or 0) + (tool or 0), 0, usage.cached_content_token_count,
                       None, None, tool)
        return
    # Vertex AI text-embedding models (":predict") count tokens per embedded text
    embeddings = response.embeddings
    if embeddings:
        total = 0
        counted = False
        for embedding in embeddings:
            statistics = embedding.statistics
            if statistics is not None and statistics.token_count is not None:
                total += int(statistics.token_count)
                counted = True
        if counted:
            call.set_usage(total, 0)


def _read_count_tokens(call: Call, response: Any) -> None:
    call.set_usage(0, 0)  # counting is free: nothing billed, nothing added to the totals
    counted = getattr(response, "total_tokens", None)
    if counted is not None:
        call.attributes = {"tokenmetry.counted.input_tokens": counted}


GENERATE_CONTENT = Endpoint("generate_content", _read_generate, _read_generate_chunk)
EMBED_CONTENT = Endpoint("embeddings", _read_embed)
COUNT_TOKENS = Endpoint("count_tokens", _read_count_tokens)


def _read_body(call: Call, endpoint: Endpoint, body: Any) -> None:
    """Usage from a raw JSON body (camelCase wire names): for responses the SDK did not parse."""
    if not body or endpoint is COUNT_TOKENS:
        return
    document = json.loads(body) if isinstance(body, (str, bytes)) else body
    if not isinstance(document, Mapping):
        return
    usage = document.get("usageMetadata")
    if endpoint is GENERATE_CONTENT:
        if call.response_id is None:
            call.response_id = document.get("responseId")
        if call.response_model is None:
            call.response_model = document.get("modelVersion")
        for candidate in document.get("candidates") or ():
            reason = candidate.get("finishReason") if isinstance(candidate, Mapping) else None
            if reason is not None:
                call.add_finish_reason(_finish_name(reason))
        if isinstance(usage, Mapping):
            tool = usage.get("toolUsePromptTokenCount")
            thoughts = usage.get("thoughtsTokenCount")
            call.set_usage((usage.get("promptTokenCount") or 0) + (tool or 0),
                           (usage.get("candidatesTokenCount") or 0) + (thoughts or 0),
                           usage.get("cachedContentTokenCount"), None, thoughts, tool)
    elif isinstance(usage, Mapping):
        tool = usage.get("toolUsePromptTokenCount")
        call.set_usage((usage.get("promptTokenCount") or 0) + (tool or 0), 0,
                       usage.get("cachedContentTokenCount"), None, None, tool)


def _salvage(call: Call, endpoint: Endpoint, response: Any) -> None:
    """The SDK raised after a successful HTTP response (it could not parse the body): the API billed
    the call, so read the usage from the raw body of that response."""
    if call.usage_source != "missing":
        return
    segments = getattr(response, "response_stream", None)
    if isinstance(segments, list) and segments:
        _read_body(call, endpoint, segments[0])


# ----------------------------------------------------------------------------- the adapter
class GoogleGenAIAdapter:
    """Instruments ``google.genai`` (sync and ``client.aio``, Gemini API and Vertex AI)."""

    name = "google_genai"
    package = "google.genai"

    def __init__(self) -> None:
        self.sdk: Any = None
        self._patches: list[Patch] | None = None

    # ----------------------------------------------------------------- what instrument() uses
    def available(self) -> bool:
        try:
            self.sdk = importlib.import_module("google.genai")
            self._models = importlib.import_module("google.genai.models")
            self._api_client = importlib.import_module("google.genai._api_client")
            self._client = importlib.import_module("google.genai.client")
        except ImportError:
            return False
        return True

    def patches(self) -> list[Patch]:
        if self._patches is None:
            models, async_models = self._models.Models, self._models.AsyncModels
            api_client = self._api_client.BaseApiClient
            generate = self._beginner(GENERATE_CONTENT, stream=False)
            generate_stream = self._beginner(GENERATE_CONTENT, stream=True)
            embed = self._beginner(EMBED_CONTENT, stream=False)
            count = self._beginner(COUNT_TOKENS, stream=False)
            self._patches = [
                Patch(models, "_generate_content", patching.sync_call(generate, _salvage)),
                Patch(models, "_generate_content_stream", patching.sync_stream(generate_stream)),
                Patch(models, "_embed_content", patching.sync_call(embed, _salvage)),
                Patch(models, "count_tokens", patching.sync_call(count)),
                Patch(async_models, "_generate_content", patching.async_call(generate, _salvage)),
                Patch(async_models, "_generate_content_stream", patching.async_stream(generate_stream)),
                Patch(async_models, "_embed_content", patching.async_call(embed, _salvage)),
                Patch(async_models, "count_tokens", patching.async_call(count)),
                Patch(api_client, "_request_once", patching.sync_attempt(error_facts)),
                Patch(api_client, "_async_request_once", patching.async_attempt(error_facts)),
            ]
        return self._patches

    def owns(self, client: Any) -> bool:
        return self.sdk is not None and isinstance(client, (self._client.Client, self._client.AsyncClient))

    def wrap_client(self, client: Any) -> None:
        """Instrument one ``genai.Client`` (its ``models``, ``aio.models``, ``chats`` and ``aio.chats``,
        which share them) or one ``AsyncClient``."""
        owners: list[Any] = [client._models, client._api_client]
        if isinstance(client, self._client.Client):
            owners.append(client._aio._models)
        for owner in owners:
            if owner.__dict__.get("_tokenmetry_wrapped"):
                continue  # shared by a client wrapped before (client.aio and its parent)
            for patch in self.patches():
                if isinstance(owner, patch.owner):
                    patching.bind(owner, patch.name, patch.wrapper)
            owner.__dict__["_tokenmetry_wrapped"] = True

    # ----------------------------------------------------------------- request facts
    def _beginner(self, endpoint: Endpoint, stream: bool) -> patching.Begin:
        target = self._target
        counting = endpoint is COUNT_TOKENS

        def begin(models: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Endpoint, Call]:
            config = kwargs.get("config")
            where = target(models._api_client, config)
            # count_tokens carries no body: its prompt is neither billed nor reserved against a budget
            body = None if counting else _Request(
                kwargs.get("contents") or kwargs.get("content") or kwargs.get("batch_contents"), config)
            call = recorder.begin(where.provider, endpoint.operation, request_model_name(kwargs.get("model")),
                                  stream, where.server_address, where.server_port, body)
            return endpoint, call

        return begin

    def _target(self, api_client: Any, config: Any) -> Target:
        """Provider and server of a request: from the client's base URL (cached per client), or the
        base URL a request's own ``config.http_options`` sets."""
        vertexai = bool(api_client.vertexai)
        request_options = _option(config, "http_options")
        if request_options is not None:
            base_url = _option(request_options, "base_url")
            if base_url:
                return _target_of(base_url, vertexai)
        base_url = api_client._http_options.base_url
        cached = api_client.__dict__.get("_tokenmetry_target")
        if cached is not None and cached[0] is base_url and cached[1] == vertexai:
            return cached[2]  # type: ignore[no-any-return]
        found = _target_of(base_url, vertexai)
        api_client.__dict__["_tokenmetry_target"] = (base_url, vertexai, found)
        return found


def _target_of(base_url: str | None, vertexai: bool) -> Target:
    provider = "gcp.vertex_ai" if vertexai else "gcp.gemini"
    if not base_url:
        return Target(provider, None, None)
    url = urlsplit(base_url)
    try:
        port = url.port
    except ValueError:
        port = None
    return Target(provider, url.hostname, port or (443 if url.scheme == "https" else 80))


adapter = GoogleGenAIAdapter()
