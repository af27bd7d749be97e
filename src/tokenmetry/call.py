"""The lifecycle of one API call: begin, retry sleeps, response or stream, finish.

Provider adapters describe a call (provider, operation, model) and read facts from responses into
the :class:`Call`; this module turns a finished call into one :class:`~tokenmetry.usage.CallRecord`
and hands it to the sinks: the session, the process statistics, OpenTelemetry and the
``on_record`` subscribers. A sink never calls back into the lifecycle.
"""

from __future__ import annotations

import atexit
import contextvars
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .config import Options
from .pending import FOLD_BATCH, set_applier
from .history import shared
from .rate import CallSums, ProcessStats, add_wait, newest_limits
from .session import Session, current_session, sessions
from .session import _current as _current_session
from .usage import CallRecord, Cost, Usage

__all__ = ["Call", "Recorder", "recorder", "current_call", "warn_once", "report_failure"]

logger = logging.getLogger("tokenmetry")
_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_once(kind: str, message: str, *args: Any) -> None:
    """Log an instrumentation problem at WARNING, once per kind for the process."""
    with _warned_lock:
        if kind in _warned:
            return
        _warned.add(kind)
    logger.warning(message, *args)


def report_failure(kind: str, what: str = "") -> None:
    """An instrumentation step failed (call it from the ``except`` block): the traceback at DEBUG,
    one WARNING per kind for the process. The user's call goes on unchanged; this never raises."""
    logger.debug("tokenmetry: instrumentation step %r failed", kind, exc_info=True)
    warn_once(kind, "tokenmetry: instrumentation step %r failed%s; the call goes on unchanged (further "
              "failures of this kind are logged at DEBUG)", kind, f" ({what})" if what else "")


_perf = time.perf_counter
_wall = time.time
_new_call = object.__new__

# the call whose HTTP attempts are running here: retry-sleep hooks attribute their waits to it
current_call: contextvars.ContextVar[Call | None] = contextvars.ContextVar("tokenmetry_call", default=None)
# the last call that failed here: a retry loop around whole SDK calls files its waits under its model
last_failed_call: contextvars.ContextVar[Call | None] = contextvars.ContextVar("tokenmetry_failed", default=None)


class Call:
    """Mutable state of one call while it runs; frozen into a CallRecord once finished.

    A call is made by :meth:`Recorder.begin`, which gives every field in ``__slots__`` its first
    value. The fields below them, as class attributes, are the ones most calls never set (retries,
    streams, errors, budgets, adapter extras): they read as these defaults until set, and setting one
    stores it in the instance's ``__dict__``. Beginning a call stays a few dozen stores, not fifty.
    """

    __slots__ = (
        "provider", "operation", "request_model", "response_model", "response_id", "stream",
        "server_address", "server_port", "session", "turn", "started_at", "t0", "duration_s",
        "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
        "usage_source", "finish_reasons", "error_type", "cost", "priced", "span", "request_body", "done",
        "rate_raw", "quote", "metrics", "__dict__",
    )
    # What the slots hold, besides the usage and the CallRecord's fields:
    #   t0            perf_counter() when the call began (duration_s = its end - t0)
    #   priced        the cost is settled (None included: an unknown model, or no tokens)
    #   quote         the prices the call is billed at (a pricing.Quote; None: unpriced). A call nothing
    #                 needed priced at once gets only its quote: its session prices the sums
    #   span          its OpenTelemetry span while it runs, if an SDK is configured
    #   request_body  kept only until it finishes, for estimates and content capture
    #   rate_raw      (rows, header entries) of the successful response's rate-limit headers, parsed
    #                 when the call is applied (see providers.base.RateLimitHeaders.response_hook,
    #                 rate.newest_limits)
    #   metrics       the metric instruments when an SDK is configured; once finished, (instruments,
    #                 the OpenTelemetry context current then): its points are recorded when the call is
    #                 applied, and exemplars link to that context

    # ---- set by few calls (class-level defaults; see above)
    time_to_first_chunk_s: float | None = None
    chunks = 0
    cache_write_1h_tokens: int | None = None
    tool_tokens: int | None = None
    retries = 0
    throttle_events = 0
    throttle_wait_s = 0.0
    retry_wait_s = 0.0
    retry_events: list[dict[str, Any]] | None = None
    text_parts: list[str] | None = None
    withhold_usage_chunk = False
    reservation: Any = None
    # rate-limit figures read at once: a failed attempt's, or a response whose headers were not laid
    # out as the vendor's usual ones (see providers.base.RateLimitHeaders)
    rate_limits: dict[str, Any] | None = None
    # adapter-specific facts for the span, under ``tokenmetry.*`` names (e.g. a counted figure)
    attributes: dict[str, Any] | None = None
    # the output count so far is a placeholder until the stream's final usage (Anthropic)
    output_pending = False
    error_id: int | None = None
    _record: CallRecord | None = None
    # what selects a price variant, as the response reports it (e.g. {"service_tier": "flex"})
    price_context: dict[str, str] | None = None
    # a stream's running usage that a chunk reader left to read once, when the call finishes
    # (every Gemini chunk repeats the totals so far: only the last one counts), and that reader
    late_usage: Any = None
    late_usage_reader: Callable[[Call, Any], None] | None = None

    # typed here for the checker: Recorder.begin sets them all
    provider: str
    operation: str
    request_model: str | None
    response_model: str | None
    response_id: str | None
    stream: bool
    server_address: str | None
    server_port: int | None
    session: Session
    turn: int | None
    started_at: float
    t0: float
    duration_s: float
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int | None
    cache_write_tokens: int | None
    reasoning_tokens: int | None
    usage_source: str
    finish_reasons: tuple[str, ...]
    error_type: str | None
    cost: Cost | None
    priced: bool
    span: Any
    request_body: Any
    done: bool
    rate_raw: tuple[Any, list[Any]] | None
    quote: Any
    metrics: Any

    def add_finish_reason(self, reason: str) -> None:
        self.finish_reasons += (reason,)

    def set_usage(self, input_tokens: int, output_tokens: int, cache_read: int | None = None,
                  cache_write: int | None = None, reasoning: int | None = None,
                  tool: int | None = None) -> None:
        """Assign (never add) the provider-reported usage."""
        self.input_tokens = input_tokens or 0
        self.output_tokens = output_tokens or 0
        self.cache_read_tokens = cache_read
        self.cache_write_tokens = cache_write
        self.reasoning_tokens = reasoning
        if tool is not None or self.tool_tokens is not None:  # (a class default until set)
            self.tool_tokens = tool
        self.usage_source = "provider"

    def add_text(self, text: str) -> None:
        """Keep generated text seen on a stream, for an estimate if the usage never arrives."""
        parts = self.text_parts
        if parts is None:
            self.text_parts = [text]
        else:
            parts.append(text)

    def note_retry(self, *, attempt: int, status: int | None, retry_after_s: float | None,
                   slept_s: float, cause: str) -> None:
        """One backoff sleep that really happened before attempt ``attempt`` (1-based retry)."""
        add_wait(self, slept_s, cause)
        if self.retry_events is None:
            self.retry_events = []
        self.retry_events.append({
            "attempt": attempt, "status": status, "retry_after_s": retry_after_s,
            "slept_s": slept_s, "cause": cause,
        })

    @property
    def usage(self) -> Usage:
        return Usage(self.input_tokens, self.output_tokens, self.cache_read_tokens,
                     self.cache_write_tokens, self.reasoning_tokens, self.tool_tokens)

    def record(self) -> CallRecord:
        """The immutable record (built once, on first request: the hot path never needs it)."""
        record = self._record
        if record is None:
            cost = self.cost
            if cost is None and self.quote is not None:
                cost = self.quote.cost_of_call(self)
            record = self._record = CallRecord(
                self.provider, self.operation, self.request_model, self.response_model,
                self.response_id, self.usage, self.usage_source, cost, self.stream,
                self.started_at, self.duration_s, self.time_to_first_chunk_s, self.retries,
                self.throttle_wait_s, self.error_type, self.session.id, self.finish_reasons,
                self.server_address, self.turn, self.retry_wait_s,
            )
        return record


class Recorder:
    """Owns the sinks every finished call goes to; one per process (``recorder``)."""

    def __init__(self) -> None:
        from .telemetry import Telemetry

        self.options = Options()
        # content capture is on: adapters keep a response's text for the span (not only for estimates)
        self.keeps_output_text = False
        self.stats = ProcessStats(self.options.tpm_window_s)
        self.telemetry = Telemetry(self)
        self._subscribers: tuple[Callable[[CallRecord], Any], ...] = ()
        # internal sinks (the ledger): receive the finished Call itself, must be cheap and never raise
        self._sinks: tuple[Callable[[Call], None], ...] = ()
        self._subscribers_lock = threading.Lock()
        self._notified = False  # any sink or subscriber: finished calls are handed to them at once
        self._quote_call: Callable[[Call, Options], tuple[Any, bool]] | None = None
        self._estimate: Callable[[Call], None] | None = None
        self._warmed = False  # price data loads in the background once the first call begins
        # finished calls not yet added to sessions and statistics (see tokenmetry.pending)
        self._pending: deque[Call] = deque()
        self._fold_lock = threading.Lock()
        self._folding_thread: int | None = None
        set_applier(self.fold)

    def configure(self, options: Options) -> None:
        self.fold()  # calls finished under the old options are applied with them
        self.options = options
        self.keeps_output_text = options.capture_on_spans
        if options.tpm_window_s != self.stats._window_s:
            self.stats = ProcessStats(options.tpm_window_s)
        sessions.configure(options.history_limit, options.tpm_window_s)
        self.telemetry.configure(options)

    # ----------------------------------------------------------------- subscribers
    def subscribe(self, callback: Callable[[CallRecord], Any]) -> Callable[[], None]:
        if not callable(callback):
            from .errors import TokenmetryError

            raise TokenmetryError(f"on_record needs a callable, got {callback!r}")
        with self._subscribers_lock:
            self._subscribers = (*self._subscribers, callback)
            self._notified = True

        def unsubscribe() -> None:
            with self._subscribers_lock:
                self._subscribers = tuple(s for s in self._subscribers if s is not callback)
                self._notified = bool(self._sinks or self._subscribers)

        return unsubscribe

    def add_sink(self, sink: Callable[[Call], None]) -> None:
        with self._subscribers_lock:
            if sink not in self._sinks:
                self._sinks = (*self._sinks, sink)
            self._notified = True

    def remove_sink(self, sink: Callable[[Call], None]) -> None:
        with self._subscribers_lock:
            self._sinks = tuple(s for s in self._sinks if s is not sink)
            self._notified = bool(self._sinks or self._subscribers)

    # ----------------------------------------------------------------- lifecycle
    def begin(self, provider: str, operation: str, request_model: str | None, stream: bool,
              server_address: str | None, server_port: int | None, request_body: Any = None) -> Call:
        """The call starts: in its session (contextvars), reserved against the session's budget
        (which may raise ``BudgetExceeded``: before anything is sent), with its span started when
        an OpenTelemetry SDK is configured."""
        if not self._warmed or len(self._pending) >= FOLD_BATCH:
            self._begin_chores()
        session = _current_session.get() or sessions.default  # current_session(), inlined
        call = _new_call(Call)  # every slot set below (no __init__: one frame less per call)
        call.provider = provider
        call.operation = operation
        call.request_model = request_model
        call.response_model = None
        call.response_id = None
        call.stream = stream
        call.server_address = server_address
        call.server_port = server_port
        call.session = session
        call.turn = session._turn_var.get()
        call.started_at = _wall()
        call.t0 = _perf()
        call.duration_s = 0.0
        call.input_tokens = 0
        call.output_tokens = 0
        call.cache_read_tokens = None
        call.cache_write_tokens = None
        call.reasoning_tokens = None
        call.usage_source = "missing"
        call.finish_reasons = ()
        call.error_type = None
        call.cost = None
        call.priced = False
        call.span = None
        call.request_body = request_body
        call.done = False
        call.rate_raw = None
        call.quote = None
        call.metrics = None
        budget = session.budget
        if budget is not None:
            budget.reserve(call)
        if self.telemetry.configured():  # False without an OpenTelemetry SDK: nothing more to do
            self.telemetry.begin_call(call)
        return call

    def _begin_chores(self) -> None:
        if not self._warmed:
            self._warm_up()
        if len(self._pending) >= FOLD_BATCH:  # left by finalisers, which never apply calls themselves
            self._try_fold()

    def stats_ref(self) -> ProcessStats:
        """The current statistics sink (replaced when the window is reconfigured)."""
        return self.stats

    def note_retry(self, call: Call, *, attempt: int, status: int | None, retry_after_s: float | None,
                   slept_s: float, cause: str) -> None:
        """A backoff sleep that happened inside ``call``: on the call, and as a span event."""
        call.note_retry(attempt=attempt, status=status, retry_after_s=retry_after_s, slept_s=slept_s,
                        cause=cause)
        if call.span is not None and call.retry_events:
            self.telemetry.retry_event(call, call.retry_events[-1])

    def note_loop_retry(self, *, attempt: int, status: int | None, retry_after_s: float | None,
                        slept_s: float, cause: str, error_id: int | None = None) -> None:
        """A backoff sleep of a tenacity loop (see :mod:`tokenmetry.retries`).

        Inside an SDK call it is that call's retry; around whole SDK calls it belongs to the logical
        operation: the session in scope, the process statistics and the span current here.
        """
        call = current_call.get()
        if call is not None:
            self.note_retry(call, attempt=attempt, status=status, retry_after_s=retry_after_s,
                            slept_s=slept_s, cause=cause)
            return
        failed = last_failed_call.get()
        if failed is not None and error_id is not None and failed.error_id != error_id:
            failed = None  # the loop retried something else than the last failed SDK call
        provider = failed.provider if failed is not None else "unknown"
        model = None if failed is None else (failed.response_model or failed.request_model)
        current_session()._add_retry(slept_s, cause)
        self.stats.add_retry(provider, model, slept_s, cause)
        self.telemetry.loop_retry(provider, model, {
            "attempt": attempt, "status": status, "retry_after_s": retry_after_s,
            "slept_s": slept_s, "cause": cause,
        })

    def _warm_up(self) -> None:
        self._warmed = True
        from .accounting import warm_up

        warm_up()
        # calls still pending at exit are applied then: an unpriced model's warning and on_unpriced
        # hooks fire even in a short script that never reads its totals
        atexit.register(self.fold)

    def fail(self, call: Call, error: BaseException) -> None:
        """The call raised ``error`` (which the caller re-raises unchanged)."""
        if call.done:  # e.g. a stream read again after close(): its record is settled
            return
        if call.error_type is None:
            call.error_type = type(error).__qualname__
        call.error_id = id(error)  # an id, not the exception: history must not keep tracebacks alive
        last_failed_call.set(call)
        self.finish(call)

    def finish(self, call: Call, incomplete: bool = False) -> None:
        """Account a call exactly once; never raises.

        What cannot wait happens here: the usage left to read or to estimate, and, when anything
        needs the call's figures at once (a span, a budget, sinks or ``on_record`` callbacks), its
        cost and those. The call then joins the pending calls that :meth:`fold` adds to its session
        and the process statistics (see :mod:`tokenmetry.pending`), pricing the ones nothing needed
        priced yet and recording their metric points: every metric collection applies the pending
        calls first (:class:`~tokenmetry.telemetry.Telemetry`), so what a reader exports is exact.
        """
        if call.done:
            return
        call.done = True
        try:
            call.duration_s = _perf() - call.t0
            if incomplete and call.error_type is None:
                call.error_type = "_OTHER"
            if call.late_usage is not None:
                self._read_late_usage(call)
            if call.usage_source == "missing":
                self._fill_estimate(call)
            elif call.output_pending and call.text_parts:
                # a stream left before its final usage (Anthropic: exact input, placeholder output)
                from .accounting import top_up_output

                top_up_output(call)
            pending = self._pending
            if call.metrics is None and call.span is None and call.session.budget is None and \
                    not self._notified:
                pending.append(call)  # the usual call without an OpenTelemetry SDK: nothing else now
            else:
                self._finish_now(call)
            # a finaliser (incomplete: a stream dropped unfinished) may run inside a fold or a
            # reader holding a session's lock: it only leaves the call pending (begin() applies it)
            if not incomplete and len(pending) >= FOLD_BATCH:
                self._try_fold()
        except Exception:
            report_failure("finish", "recording a call")
        finally:
            call.request_body = None  # kept until now for an estimate and content capture
            if call.text_parts is not None:  # (a class default until a stream sets it)
                call.text_parts = None

    def _finish_now(self, call: Call) -> None:
        """A finished call something needs at once: its metric hand-off, its price (for the span,
        the budget, the sinks and callbacks), its span ended; then it is pending like any other."""
        metrics = call.metrics
        if metrics is not None:  # its points are recorded when the call is applied
            call.metrics = (metrics, self.telemetry.current_context())
        span = call.span
        budget = call.session.budget
        notify = self._notified
        if span is not None or budget is not None or notify:
            try:
                self._price_now(call)  # before the call is pending: a fold elsewhere may apply it
                if budget is not None:
                    budget.settle(call)
                if span is not None:
                    self.telemetry.end_span(call, span)
            finally:
                call.span = None
                self._pending.append(call)
            if notify:
                self._notify(call)  # after the append: a callback reading its session sees this call
        else:
            self._pending.append(call)

    def _price_now(self, call: Call) -> None:
        """Price the call at once (a span, a budget, sinks or callbacks need its cost)."""
        call.priced = True
        if call.input_tokens or call.output_tokens:
            quote = call.quote = self._quote(call)
            if quote is not None:
                try:
                    call.cost = quote.cost_of_call(call)
                except Exception:
                    call.quote = None  # unpriceable: never priced again, by its session or its record
                    report_failure("pricing", "pricing a call")

    def _notify(self, call: Call) -> None:
        """The internal sinks (the ledger) and the ``on_record`` callbacks."""
        for sink in self._sinks:
            sink(call)
        subscribers = self._subscribers
        if subscribers:
            record = call.record()
            for callback in subscribers:
                try:
                    callback(record)
                except Exception:  # a subscriber's bug must not reach the SDK call
                    logger.exception("tokenmetry: on_record callback %r failed", callback)

    # ----------------------------------------------------------------- pending calls
    def fold(self) -> None:
        """Add every pending finished call to its session and the statistics (readers call this
        through :func:`tokenmetry.pending.apply_pending`)."""
        if self._folding_thread == threading.get_ident():
            return  # a reader called from inside a fold (an on_unpriced hook): it sees what is applied
        with self._fold_lock:
            self._fold_held()

    def _try_fold(self) -> None:
        """Fold unless another thread is folding (it takes what is pending too)."""
        if self._fold_lock.acquire(blocking=False):
            try:
                self._fold_held()
            finally:
                self._fold_lock.release()

    def _fold_held(self) -> None:
        self._folding_thread = threading.get_ident()
        try:
            pending = self._pending
            while pending:
                calls: list[Call] = []
                try:
                    while True:
                        calls.append(pending.popleft())
                except IndexError:
                    pass
                self._apply(calls)
        finally:
            self._folding_thread = None

    def _apply(self, calls: list[Call]) -> None:
        """Add finished calls to their sessions and the statistics: each run of consecutive calls of
        one session and one model (usually the whole batch) is priced, summed and added once."""
        stats = self.stats
        for run, session, provider, model in _runs(calls):
            self._prepare(run, model)
            try:
                sums = CallSums(run)
                session._add_calls(run, sums)
                stats.add_sums(provider, model, sums)
            except Exception:
                report_failure("apply", "adding calls to their session and the statistics")
            try:
                figures = newest_limits(run)
                if figures:
                    stats.rate_limits_of(provider, model).update(figures)
            except Exception:
                report_failure("headers", "reading rate-limit headers")

    def _prepare(self, run: list[Call], model: str | None) -> None:
        """What a run's calls need before they join their session: their prices and metric points.
        A call nothing needed priced at once gets only its quote (its session prices the sums); the
        calls of a run (one session, one model) usually share it, and it is resolved once for them."""
        quote_of = self._quote_call or self._bind_quote()
        options = self.options
        telemetry = self.telemetry
        # a session's history keeps the response model's name for a thousand calls: the calls' names
        # are replaced by one shared copy, so the SDK's own strings die with the responses (objects
        # kept alive among the SDK's short-lived ones cost its next calls, see tokenmetry.history)
        shared_model = None if model is None else shared(_shared_models, model, _SHARED_MODELS_MAX)
        last: Call | None = None  # the last call quoted here, while its quote serves the next ones
        for call in run:
            try:
                if call.response_model is not None:  # (then it is the run's model)
                    call.response_model = shared_model
                metrics = call.metrics
                if not call.priced:
                    if metrics is not None:
                        self._price_now(call)  # the cost counter needs the amount
                    else:
                        call.priced = True
                        if call.input_tokens or call.output_tokens:
                            if last is not None and call.price_context is None and \
                                    call.request_model == last.request_model and \
                                    call.response_model == last.response_model:
                                call.quote = last.quote
                            else:
                                call.quote, reusable = quote_of(call, options)
                                last = call if reusable and call.quote is not None else None
                if metrics is not None:
                    call.metrics = None
                    telemetry.record_metrics(call, *metrics)
            except Exception:
                report_failure("apply", "pricing a call and recording its metric points")

    @staticmethod
    def _read_late_usage(call: Call) -> None:
        usage, reader = call.late_usage, call.late_usage_reader
        call.late_usage = None
        try:
            if reader is not None:
                reader(call, usage)
        except Exception:  # the estimate below still fills the usage
            report_failure("late-usage", "reading a stream's usage")

    def _fill_estimate(self, call: Call) -> None:
        estimate = self._estimate
        if estimate is None:
            from .accounting import estimate_call

            estimate = self._estimate = estimate_call
        estimate(call)

    def _quote(self, call: Call) -> Any:
        return (self._quote_call or self._bind_quote())(call, self.options)[0]

    def _bind_quote(self) -> Callable[[Call, Options], tuple[Any, bool]]:
        from .accounting import quote_call

        quote = self._quote_call = quote_call
        return quote


def _runs(calls: list[Call]) -> list[tuple[list[Call], Session, str, str | None]]:
    """(calls, session, provider, model) of each run of consecutive calls of one session, provider
    and model (the response model, else the request model): usually one run, the whole batch."""
    count = len(calls)
    runs = []
    start = 0
    while start < count:
        first = calls[start]
        session, provider = first.session, first.provider
        model = first.response_model or first.request_model
        end = start + 1
        while end < count:
            call = calls[end]
            if call.session is not session or call.provider != provider or \
                    (call.response_model or call.request_model) != model:
                break
            end += 1
        runs.append((calls if end - start == count else calls[start:end], session, provider, model))
        start = end
    return runs


_shared_models: dict[str, str] = {}  # model names shared by the calls kept in histories
_SHARED_MODELS_MAX = 1024


recorder = Recorder()
