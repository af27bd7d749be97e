"""Generic wrappers that run the call lifecycle around one SDK method, for SDKs that are not
Stainless-generated (google-genai today; any vendor whose SDK has one method per HTTP request).

A vendor adapter supplies ``begin(instance, args, kwargs) -> (Endpoint, Call) | None`` (None: not a
token-producing request, let it pass) and picks the wrapper matching the method's shape:

* :func:`sync_call` / :func:`async_call`: the method returns the parsed response.
* :func:`sync_stream`: a *generator function* (nothing is sent until iterated): the call begins at
  the first ``next()`` and the chunks flow through :func:`tokenmetry.streams.observe`.
* :func:`async_stream`: a coroutine that sends the request when awaited and returns an async
  iterator of chunks, observed by :func:`tokenmetry.streams.aobserve`.
* :func:`sync_attempt` / :func:`async_attempt`: the SDK's *single HTTP attempt*, which its retry
  loop calls again after each backoff sleep. The time between a failed attempt and the next attempt
  of the same call is the sleep that really happened (monotonic clock), recorded with the failed
  attempt's status and the server's requested delay through ``recorder.note_retry``. No retry loop
  or sleep function is replaced, so sync and async loops, per-client and per-request retry settings
  are all seen the same way.

Every wrapper has the ``(wrapped, instance, args, kwargs)`` signature of ``wrapt.FunctionWrapper``
(how :func:`tokenmetry.instrument` applies a :class:`~tokenmetry.providers.base.Patch`); :func:`bind`
applies one to a single instance (``tokenmetry.wrap``). A call already running in this context
(``current_call``) is never recorded twice by nested layers.
"""

from __future__ import annotations

import contextvars
import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from .call import Call, current_call, recorder, report_failure
from .errors import BudgetExceeded
from .providers.base import Endpoint
from .streams import aobserve, observe

__all__ = ["CallScope", "sync_call", "async_call", "sync_stream", "async_stream", "sync_attempt",
           "async_attempt", "bind"]

Wrapper = Callable[[Any, Any, tuple[Any, ...], dict[str, Any]], Any]
Begin = Callable[[Any, tuple[Any, ...], dict[str, Any]], "tuple[Endpoint, Call] | None"]
#: reads what it can from the raw response of the last successful attempt when the SDK raised while
#: parsing it (the API has billed the call even though the user got an exception)
Salvage = Callable[[Call, Endpoint, Any], None]
#: (HTTP status, seconds the server asked to wait) of an exception an attempt raised
DescribeError = Callable[[BaseException], "tuple[int | None, float | None]"]

_perf = time.perf_counter


class CallScope:
    """What the attempt hooks of one in-flight call share: one small object per call."""

    __slots__ = ("call", "failed_at", "failed_status", "failed_retry_after", "response")

    def __init__(self, call: Call) -> None:
        self.call = call
        self.failed_at: float | None = None  # perf_counter() when the last attempt raised
        self.failed_status: int | None = None
        self.failed_retry_after: float | None = None
        self.response: Any = None  # what the last successful attempt returned


_scope: contextvars.ContextVar[CallScope | None] = contextvars.ContextVar("tokenmetry_scope", default=None)


# ----------------------------------------------------------------------------- lifecycle steps
def _start(begin: Begin, instance: Any, args: tuple[Any, ...],
           kwargs: dict[str, Any]) -> tuple[Endpoint, Call] | None:
    if current_call.get() is not None:
        return None  # an outer layer already records this call
    try:
        return begin(instance, args, kwargs)
    except BudgetExceeded:
        raise  # the budget refuses the call before anything is sent: the user asked for this
    except Exception:
        report_failure("begin")
        return None


def _enter(scope: CallScope) -> tuple[Any, Any, Any]:
    call = scope.call
    return current_call.set(call), _scope.set(scope), recorder.telemetry.activate(call)


def _leave(tokens: tuple[Any, Any, Any]) -> None:
    call_token, scope_token, span_token = tokens
    recorder.telemetry.deactivate(span_token)
    _scope.reset(scope_token)
    current_call.reset(call_token)


def _settle(call: Call, endpoint: Endpoint, result: Any) -> None:
    try:
        endpoint.read_response(call, result)
    except Exception:
        report_failure("response")
    recorder.finish(call)


def _fail(scope: CallScope, endpoint: Endpoint, error: BaseException, salvage: Salvage | None) -> None:
    call = scope.call
    if salvage is not None and scope.response is not None:
        try:
            salvage(call, endpoint, scope.response)
        except Exception:
            report_failure("salvage")
    recorder.fail(call, error)


def _deliver_all(call: Call, chunk: Any) -> bool:
    return True


# ----------------------------------------------------------------------------- call wrappers
def sync_call(begin: Begin, salvage: Salvage | None = None) -> Wrapper:
    """A wrapper recording each call of a method that returns the parsed response."""

    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        begun = _start(begin, instance, args, kwargs)
        if begun is None:
            return wrapped(*args, **kwargs)
        endpoint, call = begun
        scope = CallScope(call)
        tokens = _enter(scope)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as error:
            _fail(scope, endpoint, error, salvage)
            raise
        finally:
            _leave(tokens)
        _settle(call, endpoint, result)
        return result

    return wrapper


def async_call(begin: Begin, salvage: Salvage | None = None) -> Wrapper:
    """The async twin of :func:`sync_call` (for ``async def`` methods)."""

    async def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        begun = _start(begin, instance, args, kwargs)
        if begun is None:
            return await wrapped(*args, **kwargs)
        endpoint, call = begun
        scope = CallScope(call)
        tokens = _enter(scope)
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as error:
            _fail(scope, endpoint, error, salvage)
            raise
        finally:
            _leave(tokens)
        _settle(call, endpoint, result)
        return result

    return wrapper


def sync_stream(begin: Begin) -> Wrapper:
    """A wrapper for a generator function yielding chunks: returns a generator that begins the call
    when first iterated (when the SDK's would send the request) and accounts it once at its end."""

    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if current_call.get() is not None:
            return wrapped(*args, **kwargs)
        return _stream(begin, wrapped, instance, args, kwargs)

    return wrapper


def _stream(begin: Begin, wrapped: Any, instance: Any, args: tuple[Any, ...],
            kwargs: dict[str, Any]) -> Iterator[Any]:
    begun = _start(begin, instance, args, kwargs)
    if begun is None:
        yield from wrapped(*args, **kwargs)
        return
    endpoint, call = begun
    yield from observe(_sent_in_scope(CallScope(call), wrapped, args, kwargs), call,
                       endpoint.read_chunk or _deliver_all, recorder)


def _sent_in_scope(scope: CallScope, wrapped: Any, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> Iterator[Any]:
    # The request (and its retries) happens in the first step: only that step runs in the call's scope,
    # so the retry hooks find the call; later chunks flow through untouched.
    tokens = _enter(scope)
    try:
        inner = iter(wrapped(*args, **kwargs))
        first = next(inner)
    except StopIteration:
        return
    finally:
        _leave(tokens)
    yield first
    yield from inner


def async_stream(begin: Begin) -> Wrapper:
    """A wrapper for a coroutine that sends the request when awaited and returns an async iterator
    of chunks: the chunks are observed, the call accounted once at the iterator's end."""

    async def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        begun = _start(begin, instance, args, kwargs)
        if begun is None:
            return await wrapped(*args, **kwargs)
        endpoint, call = begun
        scope = CallScope(call)
        tokens = _enter(scope)
        try:
            inner: AsyncIterator[Any] = await wrapped(*args, **kwargs)
        except BaseException as error:
            recorder.fail(call, error)
            raise
        finally:
            _leave(tokens)
        return aobserve(inner, call, endpoint.read_chunk or _deliver_all, recorder)

    return wrapper


# ----------------------------------------------------------------------------- attempt hooks
def _note_backoff(scope: CallScope) -> None:
    """The next attempt starts: the time since the last one failed was the SDK's backoff sleep."""
    slept = _perf() - scope.failed_at  # type: ignore[operator]
    scope.failed_at = None
    try:
        from .retries import retry_cause

        call = scope.call
        status = scope.failed_status
        recorder.note_retry(call, attempt=call.retries + 1, status=status,
                            retry_after_s=scope.failed_retry_after, slept_s=slept, cause=retry_cause(status))
    except Exception:
        report_failure("retry")


def _note_failure(scope: CallScope, error: BaseException, describe_error: DescribeError) -> None:
    scope.failed_at = _perf()
    try:
        scope.failed_status, scope.failed_retry_after = describe_error(error)
    except Exception:
        scope.failed_status = scope.failed_retry_after = None
        report_failure("retry")


def sync_attempt(describe_error: DescribeError) -> Wrapper:
    """A wrapper for the SDK's one-HTTP-attempt method that its retry loop calls again after a sleep."""

    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        scope = _scope.get()
        if scope is None:
            return wrapped(*args, **kwargs)
        if scope.failed_at is not None:
            _note_backoff(scope)
        try:
            response = wrapped(*args, **kwargs)
        except BaseException as error:
            _note_failure(scope, error, describe_error)
            raise
        scope.response = response
        return response

    return wrapper


def async_attempt(describe_error: DescribeError) -> Wrapper:
    """The async twin of :func:`sync_attempt`."""

    async def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        scope = _scope.get()
        if scope is None:
            return await wrapped(*args, **kwargs)
        if scope.failed_at is not None:
            _note_backoff(scope)
        try:
            response = await wrapped(*args, **kwargs)
        except BaseException as error:
            _note_failure(scope, error, describe_error)
            raise
        scope.response = response
        return response

    return wrapper


# ----------------------------------------------------------------------------- one instance only
def bind(instance: Any, name: str, wrapper: Wrapper) -> None:
    """Shadow ``instance.name`` with ``wrapper`` on this instance only (for ``tokenmetry.wrap``)."""
    original = getattr(instance, name)
    if inspect.iscoroutinefunction(original):
        async def patched_async(*args: Any, **kwargs: Any) -> Any:
            return await wrapper(original, instance, args, kwargs)

        instance.__dict__[name] = patched_async
    else:
        def patched(*args: Any, **kwargs: Any) -> Any:
            return wrapper(original, instance, args, kwargs)

        instance.__dict__[name] = patched
