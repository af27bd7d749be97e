"""The only module that talks to OpenTelemetry: spans, metric instruments, attribute names.

Nothing is created until an OpenTelemetry SDK is configured (globally, or passed to
``instrument(tracer_provider=..., meter_provider=...)``); until then every call costs two cheap
checks (one for spans, one for metrics). ``OTEL_PYTHON_TRACER_PROVIDER`` /
``OTEL_PYTHON_METER_PROVIDER`` are looked up when :func:`tokenmetry.instrument` runs, not on every
call (the API's own lookup raises and catches a ``KeyError`` each time, about a microsecond).
Names follow the GenAI semantic conventions; what they do not cover lives under ``tokenmetry.``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.metrics import _internal as _metrics_state  # where the API keeps the global provider
from opentelemetry.trace import SpanKind, Status, StatusCode

from .pending import apply_pending

if TYPE_CHECKING:
    from .call import Call, Recorder
    from .config import Options

__all__ = ["Telemetry", "TOKEN_BUCKETS", "DURATION_BUCKETS"]

logger = logging.getLogger("tokenmetry")

SCOPE = "tokenmetry"
SCHEMA_URL = "https://opentelemetry.io/schemas/1.37.0"
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)

# attribute names
OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_ID = "gen_ai.response.id"
FINISH_REASONS = "gen_ai.response.finish_reasons"
REQUEST_STREAM = "gen_ai.request.stream"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
CACHE_READ = "gen_ai.usage.cache_read.input_tokens"
CACHE_WRITE = "gen_ai.usage.cache_write.input_tokens"
REASONING = "gen_ai.usage.reasoning.output_tokens"
CONVERSATION = "gen_ai.conversation.id"
TOKEN_TYPE = "gen_ai.token.type"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
ERROR_TYPE = "error.type"
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
TM_USAGE_SOURCE = "tokenmetry.usage.source"
TM_TOOL_TOKENS = "tokenmetry.usage.tool_tokens"
TM_COST = "tokenmetry.cost.amount"
TM_CURRENCY = "tokenmetry.cost.currency"
TM_RETRIES = "tokenmetry.retries"
TM_THROTTLE_WAIT = "tokenmetry.throttle_wait_s"
TM_RETRY_WAIT = "tokenmetry.retry_wait_s"
TM_TTFC = "tokenmetry.time_to_first_chunk_s"
TM_RETRY_CAUSE = "tokenmetry.retry.cause"
TM_TOKEN_KIND = "tokenmetry.token.kind"

_MAX_ATTRIBUTE_SETS = 4096  # bound on cached metric attribute dicts (cardinality guard)


_TRACER_PROVIDER_ENV = "OTEL_PYTHON_TRACER_PROVIDER"
_METER_PROVIDER_ENV = "OTEL_PYTHON_METER_PROVIDER"
_UNKNOWN = object()
# where this OpenTelemetry API keeps its global providers (a private name: checked once, here)
_GLOBALS_KNOWN = hasattr(trace, "_TRACER_PROVIDER") and hasattr(_metrics_state, "_METER_PROVIDER")


def _is_noop_tracer_provider(provider: Any) -> bool:
    return provider is None or isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def _is_noop_meter_provider(provider: Any) -> bool:
    return provider is None or isinstance(provider, metrics.NoOpMeterProvider) or \
        type(provider).__name__ == "_ProxyMeterProvider"


def _global_tracer_provider(from_environment: bool) -> Any:
    """The global tracer provider, or None while none is set.

    Reads the API's module global (set by ``trace.set_tracer_provider``) instead of calling
    ``trace.get_tracer_provider()``, whose environment lookup costs more than everything else
    tokenmetry does when no SDK is configured; falls back to the API call when the provider is
    named by ``OTEL_PYTHON_TRACER_PROVIDER`` or the global is not where this API version keeps it.
    """
    if not from_environment:
        provider = getattr(trace, "_TRACER_PROVIDER", _UNKNOWN)
        if provider is not _UNKNOWN:
            return provider
    return trace.get_tracer_provider()


def _global_meter_provider(from_environment: bool) -> Any:
    """The global meter provider, or None while none is set (see :func:`_global_tracer_provider`)."""
    if not from_environment:
        provider = getattr(_metrics_state, "_METER_PROVIDER", _UNKNOWN)
        if provider is not _UNKNOWN:
            return provider
    return metrics.get_meter_provider()


class _AttributeSets:
    """The metric attribute dicts of one (provider, operation, models, server, error) combination,
    built once: the OpenTelemetry SDK copies what it keeps, so one dict serves every call."""

    __slots__ = ("key", "input", "output", "duration", "_extended")

    def __init__(self, key: tuple[Any, ...], base: dict[str, Any], error_type: str | None) -> None:
        self.key = key  # what identifies the set (running totals of observable counters use it)
        self.input = {**base, TOKEN_TYPE: "input"}
        self.output = {**base, TOKEN_TYPE: "output"}
        duration = dict(base)
        if error_type is not None:
            duration[ERROR_TYPE] = error_type
        self.duration = duration
        self._extended: dict[tuple[str, str], dict[str, Any]] = {}

    def extended(self, key: str, value: str) -> dict[str, Any]:
        """The duration attributes plus ``key=value`` (token kind, currency): few values, cached."""
        found = self._extended.get((key, value))
        if found is None:
            found = self._extended[(key, value)] = {**self.duration, key: value}
        return found


class _RunningTotals:
    """Amounts per attribute set behind one observable counter; observing it first applies the
    calls still pending (their metric points are recorded in batches, see ``Recorder.finish``).

    ``add`` appends to a deque, without a lock: it may run anywhere, a stream's finaliser included
    (one that runs while this thread is inside :meth:`observe` must not wait for it). The amounts
    are summed when the SDK collects, or once many are waiting and nobody else is summing.
    """

    __slots__ = ("_added", "_totals", "_lock")

    def __init__(self) -> None:
        self._added: deque[tuple[tuple[Any, ...], dict[str, Any], float]] = deque()
        self._totals: dict[tuple[Any, ...], list[Any]] = {}
        self._lock = threading.Lock()

    def add(self, key: tuple[Any, ...], attributes: dict[str, Any], amount: float) -> None:
        added = self._added
        added.append((key, attributes, amount))
        if len(added) >= _MAX_ATTRIBUTE_SETS and self._lock.acquire(blocking=False):
            try:
                self._sum()
            finally:
                self._lock.release()

    def _sum(self) -> None:
        added, totals = self._added, self._totals
        while True:
            try:
                key, attributes, amount = added.popleft()
            except IndexError:
                return
            entry = totals.get(key)
            if entry is not None:
                entry[1] += amount
            elif len(totals) < _MAX_ATTRIBUTE_SETS:
                totals[key] = [attributes, amount]
            else:  # cardinality guard, as the SDK's own counters do
                overflow = totals.get(_OVERFLOW_KEY)
                if overflow is None:
                    totals[_OVERFLOW_KEY] = [{"otel.metric.overflow": True}, amount]
                else:
                    overflow[1] += amount

    def observe(self, _: CallbackOptions) -> list[Observation]:
        # every collection runs the observable callbacks before it reads any instrument: applying
        # the pending calls here records their histogram and counter points in time for it
        apply_pending()
        with self._lock:
            self._sum()
            return [Observation(amount, attributes) for attributes, amount in self._totals.values()]


_OVERFLOW_KEY = ("otel.metric.overflow",)


class _Instruments:
    """Every metric instrument tokenmetry records, from a real meter (made again when tokenmetry is
    configured again; the SDK then hands back the instruments it already has)."""

    def __init__(self, meter: metrics.Meter, recorder: Recorder,
                 totals: tuple[_RunningTotals, _RunningTotals]) -> None:
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=list(TOKEN_BUCKETS))
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS))
        self.time_to_first_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk", unit="s",
            description="Time to receive the first chunk of a streamed response.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS))
        self.time_per_output_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_per_output_chunk", unit="s",
            description="Mean time between output chunks after the first, one point per stream.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS))
        # token kinds and cost: running totals observed when the SDK collects (its per-point path
        # costs tens of microseconds a call), one pair per meter provider (see Telemetry._totals_for)
        self.token_totals, self.cost_totals = totals
        self.unpriced = meter.create_counter(
            "tokenmetry.unpriced", unit="{call}", description="Calls whose model has no known price.")
        self.throttle_wait = meter.create_histogram(
            "tokenmetry.throttle.wait", unit="s",
            description="Time slept before retrying a call, by cause (throttle = HTTP 429).",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS))
        self.retries = meter.create_counter(
            "tokenmetry.retries", unit="{retry}", description="Retries by cause.")

    @staticmethod
    def register_totals(meter: metrics.Meter, currency: str) -> tuple[_RunningTotals, _RunningTotals]:
        """The observable token-kind and cost counters of one meter provider, registered once: the
        SDK keeps the first callbacks of an instrument and drops those of a later duplicate."""
        tokens, cost = _RunningTotals(), _RunningTotals()
        meter.create_observable_counter(
            "tokenmetry.tokens", callbacks=[tokens.observe], unit="{token}",
            description="Tokens by kind: cache_read, cache_write, reasoning, tool.")
        meter.create_observable_counter(
            "tokenmetry.cost", callbacks=[cost.observe], unit=currency, description="Cost of the calls.")
        return tokens, cost

    @staticmethod
    def register_gauges(meter: metrics.Meter, recorder: Recorder) -> None:
        """The observable gauges, registered once per meter provider (they read the statistics)."""
        stats = recorder.stats_ref

        def tokens_per_minute(_: CallbackOptions) -> list[Observation]:
            return [Observation(tpm, {PROVIDER: provider, REQUEST_MODEL: model or "unknown"})
                    for provider, model, tpm in stats().tokens_per_minute()]

        def rate_limit_remaining(_: CallbackOptions) -> list[Observation]:
            points = []
            for key, values in stats().rate_limits().items():
                provider, _slash, model = key.partition("/")
                for kind in ("requests", "tokens", "input_tokens", "output_tokens"):
                    value = values.get(f"remaining_{kind}")
                    if value is not None:
                        points.append(Observation(value, {PROVIDER: provider, REQUEST_MODEL: model,
                                                          "tokenmetry.rate_limit.kind": kind}))
            return points

        def throttle_wait_total(_: CallbackOptions) -> list[Observation]:
            snapshot = stats().snapshot()
            return [Observation(tally.throttle_wait_s, {PROVIDER: name})
                    for name, tally in snapshot.by_provider.items()]

        meter.create_observable_gauge(
            "tokenmetry.tokens_per_minute", callbacks=[tokens_per_minute], unit="{token}/min",
            description="Input+output tokens of calls completed in the rolling window, per minute.")
        meter.create_observable_gauge(
            "tokenmetry.rate_limit.remaining", callbacks=[rate_limit_remaining], unit="1",
            description="Latest remaining requests/tokens reported by the vendor's rate-limit headers.")
        meter.create_observable_gauge(
            "tokenmetry.throttle.wait_total", callbacks=[throttle_wait_total], unit="s",
            description="Total time slept on HTTP 429 since start, per provider.")


class Telemetry:
    """Turns a Call into one CLIENT span and its metric points."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder
        self._lock = threading.Lock()
        self._tracer: trace.Tracer | None = None
        self._instruments: _Instruments | None = None
        self._metric_attrs: dict[tuple[Any, ...], _AttributeSets] = {}
        # per meter provider: its observable counters' totals (registered once, see _totals_for)
        self._observed: weakref.WeakKeyDictionary[Any, tuple[_RunningTotals, _RunningTotals]] = \
            weakref.WeakKeyDictionary()
        self._tracer_provider: Any = None
        self._meter_provider: Any = None
        self._capture = False
        self._note_where_to_look()

    def _note_where_to_look(self) -> None:
        self._tracer_from_env = _TRACER_PROVIDER_ENV in os.environ
        self._meter_from_env = _METER_PROVIDER_ENV in os.environ
        # True: a provider is configured (or named by the environment, or this API keeps its global
        # provider elsewhere): find it; False: only the API's global provider, once set, can be one
        self._seek_tracer = self._tracer_provider is not None or self._tracer_from_env or not _GLOBALS_KNOWN
        self._seek_meter = self._meter_provider is not None or self._meter_from_env or not _GLOBALS_KNOWN

    def configure(self, options: Options) -> None:
        with self._lock:
            self._tracer_provider = options.tracer_provider
            self._meter_provider = options.meter_provider
            self._capture = options.capture_on_spans
            self._tracer = None
            self._instruments = None
            self._metric_attrs = {}
            self._note_where_to_look()

    # ----------------------------------------------------------------- is an SDK there?
    @property
    def tracing(self) -> bool:
        return self.tracer() is not None

    @property
    def metering(self) -> bool:
        return self.instruments() is not None

    def configured(self) -> bool:
        """Whether an OpenTelemetry SDK records tokenmetry's spans or metrics: the one check a call
        makes when there is none (the common case of a process without OpenTelemetry)."""
        if self._tracer is not None or self._instruments is not None:
            return True
        if (self._seek_tracer or trace._TRACER_PROVIDER is not None) and self._find_tracer() is not None:
            return True
        return (self._seek_meter or _metrics_state._METER_PROVIDER is not None) and \
            self._find_instruments() is not None

    def begin_call(self, call: Call) -> None:
        """A call begins with an SDK configured: its span starts, and its metric instruments are
        noted on it (its points are recorded once it has finished, see ``Recorder.finish``)."""
        tracer = self.tracer()
        if tracer is not None:
            self.start_span(call, tracer)
        call.metrics = self.instruments()

    def tracer(self) -> trace.Tracer | None:
        """The tracer of tokenmetry's spans, or None when no OpenTelemetry SDK is configured."""
        tracer = self._tracer
        if tracer is None and (self._seek_tracer or trace._TRACER_PROVIDER is not None):
            return self._find_tracer()
        return tracer  # None: no SDK anywhere, the common case of a process without OpenTelemetry

    def instruments(self) -> _Instruments | None:
        """tokenmetry's metric instruments, or None when no OpenTelemetry SDK is configured."""
        instruments = self._instruments
        if instruments is None and (self._seek_meter or _metrics_state._METER_PROVIDER is not None):
            return self._find_instruments()
        return instruments

    def _find_tracer(self) -> trace.Tracer | None:
        provider = self._tracer_provider or _global_tracer_provider(self._tracer_from_env)
        if _is_noop_tracer_provider(provider):
            return None
        with self._lock:
            if self._tracer is None:
                from . import __version__

                self._tracer = provider.get_tracer(SCOPE, __version__, schema_url=SCHEMA_URL)
            return self._tracer

    def _find_instruments(self) -> _Instruments | None:
        provider = self._meter_provider or _global_meter_provider(self._meter_from_env)
        if _is_noop_meter_provider(provider):
            return None
        with self._lock:
            if self._instruments is None:
                from . import __version__

                meter = provider.get_meter(SCOPE, __version__, schema_url=SCHEMA_URL)
                self._instruments = _Instruments(meter, self._recorder, self._totals_for(provider, meter))
            return self._instruments

    def _totals_for(self, provider: Any, meter: metrics.Meter) -> tuple[_RunningTotals, _RunningTotals]:
        try:
            found = self._observed.get(provider)
        except TypeError:  # a provider that cannot be weakly referenced: registered each time
            found = None
        if found is not None:
            return found
        totals = _Instruments.register_totals(meter, self._recorder.options.currency)
        _Instruments.register_gauges(meter, self._recorder)
        try:
            self._observed[provider] = totals
        except TypeError:
            pass
        return totals

    # ----------------------------------------------------------------- spans
    def start_span(self, call: Call, tracer: trace.Tracer | None = None) -> None:
        """Start the call's CLIENT span (``tracer``: what :meth:`tracer` returned, saves a lookup)."""
        if tracer is None:
            tracer = self.tracer()
            if tracer is None:
                return
        attributes: dict[str, Any] = {
            OPERATION: call.operation,
            PROVIDER: call.provider,
            REQUEST_STREAM: call.stream,
            CONVERSATION: call.session.id,
        }
        if call.request_model:
            attributes[REQUEST_MODEL] = call.request_model
        if call.server_address:
            attributes[SERVER_ADDRESS] = call.server_address
            if call.server_port:
                attributes[SERVER_PORT] = call.server_port
        name = f"{call.operation} {call.request_model}" if call.request_model else call.operation
        call.span = tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)

    @staticmethod
    def activate(call: Call) -> object | None:
        """Make the call's span current while the SDK sends (HTTP spans nest under it)."""
        span = call.span
        if span is None:
            return None
        return otel_context.attach(trace.set_span_in_context(span))

    @staticmethod
    def deactivate(token: object | None) -> None:
        if token is not None:
            otel_context.detach(token)  # type: ignore[arg-type]

    @staticmethod
    def retry_event(call: Call, event: dict[str, Any]) -> None:
        span = call.span
        if span is None:
            return
        attributes = {
            "tokenmetry.retry.attempt": event["attempt"],
            "tokenmetry.retry.slept_s": event["slept_s"],
            TM_RETRY_CAUSE: event["cause"],
        }
        if event["status"] is not None:
            attributes["http.response.status_code"] = event["status"]
        if event["retry_after_s"] is not None:
            attributes["tokenmetry.retry.retry_after_s"] = event["retry_after_s"]
        span.add_event("tokenmetry.retry", attributes)

    def loop_retry(self, provider: str, model: str | None, event: dict[str, Any]) -> None:
        """A retry-loop wait between whole calls: metrics, and an event on the span current here."""
        attributes: dict[str, Any] = {PROVIDER: provider, TM_RETRY_CAUSE: event["cause"]}
        if model:
            attributes[REQUEST_MODEL] = model
        instruments = self._instruments or self._find_instruments()
        if instruments is not None:
            instruments.retries.add(1, attributes)
            instruments.throttle_wait.record(event["slept_s"], attributes)
        span = trace.get_current_span()
        if span.is_recording():
            event_attributes = {
                "tokenmetry.retry.attempt": event["attempt"],
                "tokenmetry.retry.slept_s": event["slept_s"],
                TM_RETRY_CAUSE: event["cause"],
                PROVIDER: provider,
            }
            if event["status"] is not None:
                event_attributes["http.response.status_code"] = event["status"]
            if event["retry_after_s"] is not None:
                event_attributes["tokenmetry.retry.retry_after_s"] = event["retry_after_s"]
            span.add_event("tokenmetry.retry", event_attributes)

    # ----------------------------------------------------------------- end of a call
    @staticmethod
    def current_context() -> Any:
        """The OpenTelemetry context current here: a finished call's metric points are recorded
        with it later (the SDK's exemplars then link to the span the application had open)."""
        return otel_context.get_current()

    def end_span(self, call: Call, span: Any) -> None:
        """Set the call's final attributes on its span and end it (the call finishing now)."""
        attributes: dict[str, Any] = {
            TM_USAGE_SOURCE: call.usage_source,
            TM_RETRIES: call.retries,
            TM_THROTTLE_WAIT: call.throttle_wait_s,
        }
        if call.usage_source != "missing":
            attributes[INPUT_TOKENS] = call.input_tokens
            attributes[OUTPUT_TOKENS] = call.output_tokens
        if call.response_model:
            attributes[RESPONSE_MODEL] = call.response_model
        if call.response_id:
            attributes[RESPONSE_ID] = call.response_id
        if call.finish_reasons:
            attributes[FINISH_REASONS] = tuple(call.finish_reasons)
        if call.cache_read_tokens is not None:
            attributes[CACHE_READ] = call.cache_read_tokens
        if call.cache_write_tokens is not None:
            attributes[CACHE_WRITE] = call.cache_write_tokens
        if call.reasoning_tokens is not None:
            attributes[REASONING] = call.reasoning_tokens
        if call.tool_tokens is not None:
            attributes[TM_TOOL_TOKENS] = call.tool_tokens
        if call.retry_wait_s:
            attributes[TM_RETRY_WAIT] = call.retry_wait_s
        if call.time_to_first_chunk_s is not None:
            attributes[TM_TTFC] = call.time_to_first_chunk_s
        cost = call.cost
        if cost is not None:
            attributes[TM_COST] = float(cost.amount)
            attributes[TM_CURRENCY] = cost.currency
        if call.attributes:
            attributes.update(call.attributes)
        if self._capture:
            self._capture_content(call, attributes)
        if call.error_type is not None:
            attributes[ERROR_TYPE] = call.error_type
            span.set_status(Status(StatusCode.ERROR, call.error_type))
        span.set_attributes(attributes)
        span.end()

    @staticmethod
    def _capture_content(call: Call, attributes: dict[str, Any]) -> None:
        body = call.request_body
        if isinstance(body, dict):
            messages = body.get("messages") or body.get("input") or body.get("contents") or body.get("prompt")
            if messages is not None:
                try:
                    attributes[INPUT_MESSAGES] = json.dumps(messages, default=str)
                except (TypeError, ValueError):
                    pass
        if call.text_parts:
            attributes[OUTPUT_MESSAGES] = json.dumps(
                [{"role": "assistant", "parts": [{"type": "text", "content": "".join(call.text_parts)}]}])

    def _attribute_sets(self, call: Call) -> _AttributeSets:
        key = (call.provider, call.operation, call.request_model, call.response_model,
               call.server_address, call.server_port, call.error_type)
        found = self._metric_attrs.get(key)
        if found is not None:
            return found
        base: dict[str, Any] = {OPERATION: call.operation, PROVIDER: call.provider}
        if call.request_model:
            base[REQUEST_MODEL] = call.request_model
        if call.response_model:
            base[RESPONSE_MODEL] = call.response_model
        if call.server_address:
            base[SERVER_ADDRESS] = call.server_address
            if call.server_port:
                base[SERVER_PORT] = call.server_port
        found = _AttributeSets(key, base, call.error_type)
        if len(self._metric_attrs) < _MAX_ATTRIBUTE_SETS:
            self._metric_attrs[key] = found
        return found

    def record_metrics(self, call: Call, instruments: _Instruments, context: Any = None) -> None:
        """Record a finished call's metric points (when it is applied: see ``Recorder.finish``) in
        ``context``, the one current when it finished (None: the one current here)."""
        sets = self._attribute_sets(call)
        duration_attrs = sets.duration
        instruments.duration.record(call.duration_s, duration_attrs, context)
        if call.usage_source != "missing":
            token_usage = instruments.token_usage
            token_usage.record(call.input_tokens, sets.input, context)
            token_usage.record(call.output_tokens, sets.output, context)
        if call.stream and call.time_to_first_chunk_s is not None:
            instruments.time_to_first_chunk.record(call.time_to_first_chunk_s, duration_attrs, context)
            if call.chunks > 1:
                instruments.time_per_output_chunk.record(
                    (call.duration_s - call.time_to_first_chunk_s) / (call.chunks - 1), duration_attrs, context)
        # token kinds and cost: running totals read by observable counters (only non-zero kinds)
        key = sets.key
        if call.cache_read_tokens:
            instruments.token_totals.add((key, "cache_read"), sets.extended(TM_TOKEN_KIND, "cache_read"),
                                         call.cache_read_tokens)
        if call.cache_write_tokens:
            instruments.token_totals.add((key, "cache_write"), sets.extended(TM_TOKEN_KIND, "cache_write"),
                                         call.cache_write_tokens)
        if call.reasoning_tokens:
            instruments.token_totals.add((key, "reasoning"), sets.extended(TM_TOKEN_KIND, "reasoning"),
                                         call.reasoning_tokens)
        if call.tool_tokens:
            instruments.token_totals.add((key, "tool"), sets.extended(TM_TOKEN_KIND, "tool"),
                                         call.tool_tokens)
        cost = call.cost
        if cost is not None:
            instruments.cost_totals.add((key, cost.currency), sets.extended(TM_CURRENCY, cost.currency),
                                        float(cost.amount))
        elif call.input_tokens or call.output_tokens:
            instruments.unpriced.add(1, duration_attrs, context)
        events = call.retry_events
        if events:
            for event in events:
                cause_attrs = {PROVIDER: call.provider, TM_RETRY_CAUSE: event["cause"]}
                if call.request_model:
                    cause_attrs[REQUEST_MODEL] = call.request_model
                instruments.retries.add(1, cause_attrs, context)
                instruments.throttle_wait.record(event["slept_s"], cause_attrs, context)


# ----------------------------------------------------------------------------- SDKs' own spans
# An SDK that traces itself (anthropic) must not add a second span, or a second count of the tokens,
# for a call tokenmetry records: its adapter hands the SDK one of these instead of its own span.
_USAGE_PREFIX = "gen_ai.usage."


def stand_in_span(span: Any) -> trace.Span:
    """A non-recording span carrying ``span``'s context: the SDK skips all its span work, and the
    trace-context headers it sends point at the span that is exported."""
    return trace.NonRecordingSpan(span.get_span_context())


class _UsageWithheld(trace.Span):
    """An SDK's own span kept under tokenmetry's, without ``gen_ai.usage.*`` (tokenmetry's span
    carries them, so the trace counts tokens once). A real ``Span``: propagators ignore others."""

    __slots__ = ("_span",)

    def __init__(self, span: Any) -> None:
        self._span = span

    def get_span_context(self) -> Any:
        return self._span.get_span_context()

    def is_recording(self) -> bool:
        return bool(self._span.is_recording())

    def set_attribute(self, key: str, value: Any) -> None:
        if not key.startswith(_USAGE_PREFIX):
            self._span.set_attribute(key, value)

    def set_attributes(self, attributes: Any) -> None:
        self._span.set_attributes(
            {key: value for key, value in attributes.items() if not key.startswith(_USAGE_PREFIX)})

    def add_event(self, name: str, attributes: Any = None, timestamp: Any = None) -> None:
        self._span.add_event(name, attributes, timestamp)

    def add_link(self, context: Any, attributes: Any = None) -> None:
        self._span.add_link(context, attributes)

    def update_name(self, name: str) -> None:
        self._span.update_name(name)

    def set_status(self, status: Any, description: Any = None) -> None:
        self._span.set_status(status, description)

    def record_exception(self, exception: BaseException, attributes: Any = None, timestamp: Any = None,
                         escaped: bool = False) -> None:
        self._span.record_exception(exception, attributes, timestamp, escaped)

    def end(self, end_time: Any = None) -> None:
        self._span.end(end_time)


def without_usage(span: Any) -> Any:
    """``span`` with its ``gen_ai.usage.*`` attributes dropped (idempotent; None stays None)."""
    if span is None or isinstance(span, _UsageWithheld):
        return span
    return _UsageWithheld(span)
