"""The patch points shared by the Stainless-generated SDKs (``openai`` and ``anthropic``).

Both SDKs send every API request through ``SyncAPIClient.request`` / ``AsyncAPIClient.request``
(which owns the retry loop and sleeps in ``_sleep_for_retry``) and read every response in
``_process_response``. Patching those three points, rather than each resource method, covers every
surface at once: ``create``/``parse``/``stream()`` helpers, ``with_raw_response``,
``with_streaming_response``, Azure and compatible endpoints, and surfaces the SDK adds later.

A vendor module subclasses :class:`StainlessAdapter` and declares only which requests are
token-producing (:meth:`route`), where the client points (:meth:`target`) and what its headers say.
"""

from __future__ import annotations

import contextvars
import importlib
import inspect
import sys
import time
from collections.abc import Mapping
from typing import Any

from ..call import Call, current_call, recorder, report_failure
from ..errors import BudgetExceeded
from ..patching import bind
from ..retries import retry_after_seconds, retry_cause
from ..streams import ChunkReader, aobserve, observe
from .base import Endpoint, Patch, RateLimitHeaders, Target

__all__ = ["StainlessAdapter", "retry_after_seconds", "retry_cause"]

_perf = time.perf_counter
# set while a retry sleep is being measured: with instrument() and wrap() both on a client, the
# instance-level and class-level hooks nest, and only the outer one may note the sleep
_sleep_noted: contextvars.ContextVar[bool] = contextvars.ContextVar("tokenmetry_sleep_noted", default=False)


_UNROUTED: Any = object()
_ROUTES_MAX = 512

# what a request returned (see StainlessAdapter._settle)
_PARSED, _RAW, _SYNC_STREAM, _ASYNC_STREAM = "parsed", "raw", "sync stream", "async stream"


class StainlessAdapter:
    """Generic instrumentation of one Stainless SDK; vendor modules fill in the blanks."""

    #: the SDK's import name, e.g. "openai"
    package = ""

    def __init__(self) -> None:
        self._tracked_classes: dict[type, type] = {}
        self._result_kinds: dict[type, str] = {}
        self._routes: dict[tuple[str, str], Endpoint | None] = {}
        self.sdk: Any = None

    # ----------------------------------------------------------------- to fill in per vendor
    def route(self, client: Any, options: Any) -> Endpoint | None:
        """The endpoint of this request, or None when it produces no tokens."""
        raise NotImplementedError

    def target(self, client: Any) -> Target:
        raise NotImplementedError

    #: the vendor's rate-limit headers (None: it sends none tokenmetry reads)
    rate_limit_headers: RateLimitHeaders | None = None

    def read_headers(self, call: Call, headers: Any) -> None:
        """Read the rate-limit headers of a failed attempt's response into the call at once."""
        parser = self.rate_limit_headers
        if parser is not None:
            parser(call, headers)

    def chunk_reader(self, endpoint: Endpoint, call: Call) -> ChunkReader:
        """The reader of one stream's chunks. An adapter whose usage builds up over a stream's
        chunks overrides this to return a reader that keeps that running state per stream."""
        return endpoint.read_chunk or _deliver_all

    def request_facts(self, options: Any) -> tuple[str | None, bool, Any]:
        """(request model, stream, body) of a request."""
        body = options.json_data
        if type(body) is dict or isinstance(body, Mapping):
            return body.get("model"), bool(body.get("stream")), body
        params = options.params
        stream = isinstance(params, Mapping) and str(params.get("stream")).lower() == "true"
        return None, stream, body

    # ----------------------------------------------------------------- patch points
    def available(self) -> bool:
        try:
            self.sdk = importlib.import_module(self.package)
            self._base = importlib.import_module(f"{self.package}._base_client")
            self._response = importlib.import_module(f"{self.package}._response")
            self._streaming = importlib.import_module(f"{self.package}._streaming")
        except ImportError:
            return False
        self._result_kinds = {}  # classes of the modules just (re)loaded
        try:  # openai still has the legacy raw-response class; anthropic 2.x no longer does
            self._legacy_response_class = importlib.import_module(
                f"{self.package}._legacy_response").LegacyAPIResponse
        except (ImportError, AttributeError):
            self._legacy_response_class = None
        return True

    #: SDK stream helpers ("module:Class") that wrap a raw stream in ``_raw_stream`` but whose
    #: ``close()`` closes the HTTP response directly: their close must account the raw stream's call
    helper_streams: tuple[str, ...] = ()

    def patches(self) -> list[Patch]:
        sync_client, async_client = self._base.SyncAPIClient, self._base.AsyncAPIClient
        patches = [
            Patch(sync_client, "request", self._sync_request),
            Patch(async_client, "request", self._async_request),
            Patch(sync_client, "_sleep_for_retry", self._sync_sleep),
            Patch(async_client, "_sleep_for_retry", self._async_sleep),
        ]
        if self.rate_limit_headers is not None:
            # the successful response's rate-limit figures go with the call (the headers are not kept)
            keep_headers = self.rate_limit_headers.response_hook()
            patches += [Patch(sync_client, "_process_response", keep_headers),
                        Patch(async_client, "_process_response", keep_headers)]
        patches.extend(self.helper_patches())
        return patches

    def helper_patches(self) -> list[Patch]:
        """The ``close()`` hooks of the stream helpers whose modules are imported. Process-wide but
        inert for streams tokenmetry does not track, so :func:`tokenmetry.wrap` applies them too."""
        patches = []
        for name in self.helper_streams:
            module = sys.modules.get(name.partition(":")[0])
            if module is not None:  # not imported yet: deferred_patches() hooks its import instead
                patches.extend(_helper_patches(module, name.partition(":")[2]))
        return patches

    def deferred_patches(self) -> list[tuple[str, Any]]:
        """(module, patches-of-the-module function) for helper modules the application has not
        imported yet: importing them here would cost instrument() ~0.15 s for openai's helpers."""
        return [(module_name, lambda module, class_name=class_name: _helper_patches(module, class_name))
                for module_name, _, class_name in (n.partition(":") for n in self.helper_streams)
                if module_name not in sys.modules]

    def wrap_client(self, client: Any) -> None:
        """Instrument one client instance (and the copies ``with_options``/``copy`` make of it)."""
        for patch in self.patches():
            # a patch on a module (not a client class) is process-wide: instrument() applies it
            if isinstance(patch.owner, type) and isinstance(client, patch.owner):
                bind(client, patch.name, patch.wrapper)
        adapter = self

        def copy_wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            copied = wrapped(*args, **kwargs)
            adapter.wrap_client(copied)
            return copied

        for name in ("copy", "with_options"):
            if hasattr(client, name):
                bind(client, name, copy_wrapper)

    def owns(self, client: Any) -> bool:
        return self.sdk is not None and isinstance(client, (self._base.SyncAPIClient, self._base.AsyncAPIClient))

    # ----------------------------------------------------------------- request
    def _begin(self, client: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Endpoint, Call] | None:
        options: Any = args[1] if len(args) > 1 else kwargs.get("options")
        fields = options.__dict__  # (FinalRequestOptions is a pydantic model: see the OpenAI readers)
        # route() depends on the method and path only: its answers are kept (a bounded memo)
        key = (fields["method"], fields["url"])
        endpoint = self._routes.get(key, _UNROUTED)
        if endpoint is _UNROUTED:
            endpoint = self._route_once(client, options, key)
        if endpoint is None:
            return None
        # the target depends on base_url only; recomputed when the URL object the client stores
        # changes (read from the instance: the SDKs' ``base_url`` properties cost a call or more)
        stored = client.__dict__
        cached = stored.get("_tokenmetry_target")
        target = cached[2] if cached is not None and stored.get(cached[0]) is cached[1] else \
            self._remember_target(client)
        body = fields["json_data"]
        if type(body) is dict:  # the usual request (request_facts' first case, inline)
            model, stream = body.get("model"), bool(body.get("stream"))
        else:
            model, stream, body = self.request_facts(options)
        call = recorder.begin(target.provider, endpoint.operation, model, stream,
                              target.server_address, target.server_port, body)
        if stream and endpoint.prepare is not None and isinstance(body, Mapping) and options is not None \
                and not _reads_raw_bytes(options):
            replacement = endpoint.prepare(call, body)
            if replacement is not None:
                options.json_data = replacement
        return endpoint, call

    def _route_once(self, client: Any, options: Any, key: tuple[str, str]) -> Endpoint | None:
        endpoint = self.route(client, options)
        routes = self._routes
        if len(routes) >= _ROUTES_MAX:  # paths with ids in them (responses.retrieve): forget, start again
            routes.clear()
        routes[key] = endpoint
        return endpoint

    def _remember_target(self, client: Any) -> Target:
        """Work out where the client points and keep it with the base_url object it holds now.

        The SDKs keep that URL object under a private name that has changed between versions
        (openai: ``_base_url``, then ``_configured_base_url``): the instance attribute holding the
        very object ``base_url`` returns is found here, once per URL, and checked on every call.
        """
        target = self.target(client)
        stored = client.__dict__
        url = client.base_url
        name = next((key for key, value in stored.items() if value is url and key != "_tokenmetry_target"),
                    None)
        if name is not None:  # else a URL made afresh on each access: the target is worked out each time
            stored["_tokenmetry_target"] = (name, url, target)
        return target

    def _sync_request(self, wrapped: Any, client: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if current_call.get() is not None:
            return wrapped(*args, **kwargs)
        try:
            begun = self._begin(client, args, kwargs)
        except BudgetExceeded:
            raise
        except Exception:
            report_failure("begin")
            begun = None
        if begun is None:
            return wrapped(*args, **kwargs)
        endpoint, call = begun
        token = current_call.set(call)
        span_token = None if call.span is None else recorder.telemetry.activate(call)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as error:
            self._read_error_headers(call, error)
            recorder.fail(call, error)
            raise
        finally:
            if span_token is not None:
                recorder.telemetry.deactivate(span_token)
            current_call.reset(token)
        return self._settle(result, endpoint, call)

    async def _async_request(self, wrapped: Any, client: Any, args: tuple[Any, ...],
                             kwargs: dict[str, Any]) -> Any:
        if current_call.get() is not None:
            return await wrapped(*args, **kwargs)
        try:
            begun = self._begin(client, args, kwargs)
        except BudgetExceeded:
            raise
        except Exception:
            report_failure("begin")
            begun = None
        if begun is None:
            return await wrapped(*args, **kwargs)
        endpoint, call = begun
        token = current_call.set(call)
        span_token = None if call.span is None else recorder.telemetry.activate(call)
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as error:
            self._read_error_headers(call, error)
            recorder.fail(call, error)
            raise
        finally:
            if span_token is not None:
                recorder.telemetry.deactivate(span_token)
            current_call.reset(token)
        return self._settle(result, endpoint, call)

    # ----------------------------------------------------------------- what the request returned
    def _settle(self, result: Any, endpoint: Endpoint, call: Call) -> Any:
        """Account a parsed result now; hook a stream or a raw response to account it later."""
        try:
            kind = self._result_kinds.get(type(result))
            if kind is None:
                kind = self._result_kinds[type(result)] = self._result_kind(type(result))
            if kind is _PARSED:
                endpoint.read_response(call, result)
                recorder.finish(call)
            elif kind is _RAW:
                self._track_raw(result, endpoint, call)
            else:
                self._track_stream(result, endpoint, call, is_async=kind is _ASYNC_STREAM)
        except Exception:
            report_failure("response")
            recorder.finish(call)
        return result

    def _result_kind(self, cls: type) -> str:
        """What a request's result of this class is (cached per class by :meth:`_settle`)."""
        streaming = self._streaming
        if issubclass(cls, streaming.Stream):
            return _SYNC_STREAM
        if issubclass(cls, streaming.AsyncStream):
            return _ASYNC_STREAM
        if issubclass(cls, self._response.BaseAPIResponse):
            return _RAW
        if self._legacy_response_class is not None and issubclass(cls, self._legacy_response_class):
            return _RAW
        return _PARSED

    def _track_stream(self, stream: Any, endpoint: Endpoint, call: Call, is_async: bool) -> None:
        read_chunk = self.chunk_reader(endpoint, call)
        # anthropic makes ``_iterator`` lazily from a copy of the stream: take it before the class
        # swap, so that copy is a plain SDK stream without the accounting finaliser
        inner = stream._iterator
        stream.__class__ = self._tracked_class(type(stream), is_async)
        stream._tokenmetry_call = call
        if is_async:
            stream._iterator = aobserve(inner, call, read_chunk, recorder)
        else:
            stream._iterator = observe(inner, call, read_chunk, recorder)

    def _track_raw(self, response: Any, endpoint: Endpoint, call: Call) -> None:
        http_response = response.http_response
        already_read = not getattr(response, "_stream", False) and http_response.is_closed and \
            not _is_async_response(response)
        if already_read:
            # with_raw_response: the body is in memory; parse() caches, so the user's own parse()
            # later returns this very object at no extra cost
            try:
                parsed = response.parse()
            except Exception:
                recorder.finish(call)
                return
            endpoint.read_response(call, parsed)
            recorder.finish(call)
            return
        response.__class__ = self._tracked_raw_class(type(response))
        response._tokenmetry_call = call
        response._tokenmetry_endpoint = endpoint

    def _on_parsed(self, response: Any, parsed: Any) -> None:
        """A raw response was parsed by the user: account its value or hook its stream."""
        call = response.__dict__.get("_tokenmetry_call")
        if call is None or call.done:
            return
        endpoint = response._tokenmetry_endpoint
        streaming = self._streaming
        try:
            if isinstance(parsed, (streaming.Stream, streaming.AsyncStream)):
                # the stream owns the call from here: dropping the raw response must not end it
                response.__dict__["_tokenmetry_call"] = None
                if "_tokenmetry_call" not in parsed.__dict__:
                    self._track_stream(parsed, endpoint, call, is_async=isinstance(parsed, streaming.AsyncStream))
            else:
                endpoint.read_response(call, parsed)
                recorder.finish(call)
        except Exception:
            report_failure("response")
            recorder.finish(call)

    # ----------------------------------------------------------------- subclasses swapped in
    def _tracked_class(self, cls: Any, is_async: bool) -> type:
        tracked = self._tracked_classes.get(cls)
        if tracked is not None:
            return tracked
        if is_async:
            async def aclose(self: Any) -> None:
                recorder.finish(self._tokenmetry_call)
                await cls.close(self)

            namespace: dict[str, Any] = {"close": aclose}
        else:
            def close(self: Any) -> None:
                recorder.finish(self._tokenmetry_call)
                cls.close(self)

            namespace = {"close": close}

        def __del__(self: Any) -> None:  # noqa: N807 - dropped unfinished: account it now
            call = self.__dict__.get("_tokenmetry_call")
            if call is not None and not call.done:
                recorder.finish(call, incomplete=True)

        namespace.update({"__del__": __del__, "__module__": cls.__module__, "__qualname__": cls.__qualname__,
                          "__doc__": cls.__doc__})
        tracked = type(cls.__name__, (cls,), namespace)
        self._tracked_classes[cls] = tracked
        return tracked

    def _tracked_raw_class(self, cls: Any) -> type:
        tracked = self._tracked_classes.get(cls)
        if tracked is not None:
            return tracked
        adapter = self
        if _is_async_class(cls):
            async def aparse(self: Any, *, to: Any = None) -> Any:
                parsed = await (cls.parse(self) if to is None else cls.parse(self, to=to))
                adapter._on_parsed(self, parsed)
                return parsed

            async def aclose(self: Any) -> None:
                await cls.close(self)
                _finish_raw(self)

            namespace: dict[str, Any] = {"parse": aparse, "close": aclose}
        else:
            def parse(self: Any, *, to: Any = None) -> Any:
                parsed = cls.parse(self) if to is None else cls.parse(self, to=to)
                adapter._on_parsed(self, parsed)
                return parsed

            namespace = {"parse": parse}
            if hasattr(cls, "close"):
                def close(self: Any) -> None:
                    cls.close(self)
                    _finish_raw(self)

                namespace["close"] = close

        def __del__(self: Any) -> None:  # noqa: N807
            _finish_raw(self, incomplete=True)

        namespace.update({"__del__": __del__, "__module__": cls.__module__, "__qualname__": cls.__qualname__,
                          "__doc__": cls.__doc__})
        tracked = type(cls.__name__, (cls,), namespace)
        self._tracked_classes[cls] = tracked
        return tracked

    # ----------------------------------------------------------------- retries and headers
    def _sync_sleep(self, wrapped: Any, client: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        call = current_call.get()
        if call is None or _sleep_noted.get():
            return wrapped(*args, **kwargs)
        retry = self._retry_facts(call, kwargs)  # before sleeping: an HTTP-date retry-after is relative to now
        token = _sleep_noted.set(True)
        started = _perf()
        try:
            return wrapped(*args, **kwargs)
        finally:
            _sleep_noted.reset(token)
            _note_sleep(call, retry, _perf() - started)

    async def _async_sleep(self, wrapped: Any, client: Any, args: tuple[Any, ...],
                           kwargs: dict[str, Any]) -> Any:
        call = current_call.get()
        if call is None or _sleep_noted.get():
            return await wrapped(*args, **kwargs)
        retry = self._retry_facts(call, kwargs)
        token = _sleep_noted.set(True)
        started = _perf()
        try:
            return await wrapped(*args, **kwargs)
        finally:
            _sleep_noted.reset(token)
            _note_sleep(call, retry, _perf() - started)

    def _read_error_headers(self, call: Call, error: BaseException) -> None:
        """The rate-limit headers of the response a call finally failed with (a 429's "remaining: 0")."""
        response = getattr(error, "response", None)
        headers = getattr(response, "headers", None)
        if headers is not None:
            try:
                self.read_headers(call, headers)
            except Exception:
                report_failure("headers")

    def _retry_facts(self, call: Call, kwargs: Mapping[str, Any]) -> tuple[int, int | None, float | None] | None:
        """(retry number, status, seconds asked) of the retry about to sleep; reads the failed
        response's rate-limit headers too (a 429 is when "remaining: 0" matters most)."""
        try:
            response = kwargs.get("response")
            attempt = int(kwargs.get("retries_taken", call.retries)) + 1
            if response is None:
                return attempt, None, None
            headers = response.headers
            try:
                self.read_headers(call, headers)
            except Exception:
                report_failure("headers")
            return attempt, response.status_code, retry_after_seconds(headers)
        except Exception:
            report_failure("retry")
            return None


def _note_sleep(call: Call, retry: tuple[int, int | None, float | None] | None, slept: float) -> None:
    if retry is None:
        return
    attempt, status, retry_after = retry
    try:
        recorder.note_retry(call, attempt=attempt, status=status, retry_after_s=retry_after, slept_s=slept,
                            cause=retry_cause(status))
    except Exception:
        report_failure("retry")


def _helper_patches(module: Any, class_name: str) -> list[Patch]:
    helper = getattr(module, class_name, None)
    if helper is None or "close" not in helper.__dict__:
        return []  # another SDK version: nothing to hook
    is_async = inspect.iscoroutinefunction(helper.__dict__["close"])
    return [Patch(helper, "close", _helper_aclose if is_async else _helper_close)]


def _reads_raw_bytes(options: Any) -> bool:
    """``with_streaming_response``: the user may read the body's bytes or lines themselves, where
    nothing added to the request (an extra usage chunk) could be withheld from them."""
    headers = options.headers
    return isinstance(headers, Mapping) and headers.get("X-Stainless-Raw-Response") == "stream"


def _finish_helper(helper: Any) -> None:
    raw = getattr(helper, "_raw_stream", None)
    call = None if raw is None else raw.__dict__.get("_tokenmetry_call")
    if call is not None and not call.done:
        recorder.finish(call)


def _helper_close(wrapped: Any, helper: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A stream helper closed (``with`` left early, or ``close()``): account its stream now."""
    try:
        _finish_helper(helper)
    except Exception:
        report_failure("stream")
    return wrapped(*args, **kwargs)


async def _helper_aclose(wrapped: Any, helper: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        _finish_helper(helper)
    except Exception:
        report_failure("stream")
    return await wrapped(*args, **kwargs)


def _finish_raw(response: Any, incomplete: bool = False) -> None:
    call = response.__dict__.get("_tokenmetry_call")
    if call is not None and not call.done:
        recorder.finish(call, incomplete=incomplete)


def _is_async_class(cls: type) -> bool:
    return inspect.iscoroutinefunction(getattr(cls, "parse", None))


def _is_async_response(response: Any) -> bool:
    return _is_async_class(type(response))


def _deliver_all(call: Call, chunk: Any) -> bool:
    return True

