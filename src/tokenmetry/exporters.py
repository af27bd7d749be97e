"""Where tokenmetry's data goes besides the process: the usage ledger, and one-line exporter setup.

``instrument()`` calls :func:`setup_from_options` last. It starts (or stops) the usage ledger
(:mod:`tokenmetry.ledger`) and, when asked, builds an OpenTelemetry pipeline for a user who has none.

Exporter decisions (``TOKENMETRY_EXPORTER`` / ``instrument(exporter=...)``):

* ``none`` (the default): nothing is created. tokenmetry records through the providers the
  application configured (the global ones, or ``instrument(tracer_provider=..., meter_provider=...)``).
* ``otlp`` (protocol from ``OTEL_EXPORTER_OTLP_PROTOCOL`` and its per-signal variants, default
  ``http/protobuf``), ``otlp-http``, ``otlp-grpc``, ``console``: an SDK ``TracerProvider`` with a
  ``BatchSpanProcessor`` and a ``MeterProvider`` with a ``PeriodicExportingMetricReader``.
  ``prometheus``: a ``MeterProvider`` with a ``PrometheusMetricReader`` and a scrape endpoint on
  ``prometheus_host:prometheus_port`` (default ``127.0.0.1:9464``); no traces.
  The exporters read the standard variables themselves (``OTEL_EXPORTER_OTLP_ENDPOINT``,
  ``..._HEADERS``, ``..._TIMEOUT``, ``..._COMPRESSION``, certificates, ``OTEL_METRIC_EXPORT_INTERVAL``,
  ``OTEL_BSP_*``); the resource comes from ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``.
  ``OTEL_TRACES_EXPORTER=none`` / ``OTEL_METRICS_EXPORTER=none`` turn one signal off and
  ``OTEL_SDK_DISABLED=true`` both.
* The providers are built once per process (later ``instrument()`` calls reuse them; asking for a
  different exporter afterwards logs a warning and keeps the first, since global providers can be
  set only once). tokenmetry always records through them, and they also become the global providers
  when the application has set none, so the application's own spans and other instrumentations
  share the pipeline. When the application already set global providers they are left alone (a
  warning says so) and only tokenmetry's data goes through the exporter.
* Providers passed explicitly to ``instrument()`` win: the exporter option is then ignored (warning).
* A missing exporter package raises :class:`~tokenmetry.errors.ConfigError` naming the package to
  install. A Prometheus port already in use logs a warning (several worker processes of one server
  commonly share a configuration) and leaves the metrics without a scrape endpoint.
* The SDK providers flush at exit on their own (``shutdown_on_exit``); :func:`shutdown` flushes now.

Besides ``telemetry.py``, this is the only module that imports OpenTelemetry, and only the SDK
pieces needed to build a pipeline; recording stays in ``telemetry.py``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from .errors import ConfigError

__all__ = ["PACKAGES", "ExporterPlan", "active", "plan", "setup_from_options", "shutdown"]

#: import name -> pip package, for the error message and diagnostics
PACKAGES: dict[str, str] = {
    "opentelemetry.sdk": "opentelemetry-sdk",
    "opentelemetry.exporter.otlp.proto.http": "opentelemetry-exporter-otlp-proto-http",
    "opentelemetry.exporter.otlp.proto.grpc": "opentelemetry-exporter-otlp-proto-grpc",
    "opentelemetry.exporter.prometheus": "opentelemetry-exporter-prometheus",
    "prometheus_client": "prometheus-client",
}
_PROTOCOLS = ("http/protobuf", "grpc")


@dataclass(frozen=True)
class ExporterPlan:
    """What an exporter setting means in this environment (also shown by ``tokenmetry diagnostics``)."""

    exporter: str  #: otlp-http | otlp-grpc | console | prometheus (``otlp`` resolved to one of the first two)
    requested: str  #: the option as given
    traces: bool
    metrics: bool
    traces_endpoint: str | None
    metrics_endpoint: str | None
    prometheus_host: str | None
    prometheus_port: int | None
    modules: tuple[str, ...]  #: import names the pipeline needs (keys of :data:`PACKAGES`)
    service_name: str | None

    def missing_packages(self) -> list[str]:
        """pip names of the needed packages that are not installed (nothing is imported)."""
        missing = []
        for module in self.modules:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                missing.append(PACKAGES[module])
        return missing

    def to_dict(self) -> dict[str, Any]:
        return {
            "exporter": self.exporter, "requested": self.requested, "traces": self.traces,
            "metrics": self.metrics, "traces_endpoint": self.traces_endpoint,
            "metrics_endpoint": self.metrics_endpoint, "prometheus_host": self.prometheus_host,
            "prometheus_port": self.prometheus_port, "packages": [PACKAGES[m] for m in self.modules],
            "missing_packages": self.missing_packages(), "service_name": self.service_name,
        }


def _env_flag_off(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() == "none"


def _protocol(env: Mapping[str, str], signal: str) -> str:
    for name in (f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = env.get(name, "").strip().lower()
        if value:
            if value not in _PROTOCOLS:
                raise ConfigError(f"environment {name}", name, value,
                                  "grpc or http/protobuf (http/json is not supported by the Python exporters)")
            return value
    return "http/protobuf"


def _otlp_endpoint(env: Mapping[str, str], signal: str, protocol: str) -> str:
    specific = env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", "").strip()
    if specific:
        return specific
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if protocol == "grpc":
        return base or "http://localhost:4317"
    base = base or "http://localhost:4318"
    return base.rstrip("/") + f"/v1/{signal}"


def plan(options: Any, env: Mapping[str, str] | None = None) -> ExporterPlan | None:
    """The pipeline ``options.exporter`` asks for here, or None (``none``, or ``OTEL_SDK_DISABLED``)."""
    env = os.environ if env is None else env
    requested = options.exporter
    if requested == "none" or env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    traces = not _env_flag_off(env, "OTEL_TRACES_EXPORTER")
    metrics = not _env_flag_off(env, "OTEL_METRICS_EXPORTER")
    service = env.get("OTEL_SERVICE_NAME") or None
    modules: list[str] = ["opentelemetry.sdk"]
    if requested == "prometheus":
        return ExporterPlan("prometheus", requested, False, metrics, None, None, options.prometheus_host,
                            options.prometheus_port,
                            (*modules, "opentelemetry.exporter.prometheus", "prometheus_client"), service)
    if requested == "console":
        return ExporterPlan("console", requested, traces, metrics, "stdout", "stdout", None, None,
                            tuple(modules), service)
    if requested == "otlp":
        # one package per protocol: per-signal protocols may differ, but one kind is what users run
        trace_protocol = _protocol(env, "TRACES")
        metric_protocol = _protocol(env, "METRICS")
        protocol = trace_protocol if traces else metric_protocol
    else:
        protocol = "grpc" if requested == "otlp-grpc" else "http/protobuf"
        trace_protocol = metric_protocol = protocol
    kinds = {trace_protocol} if traces else set()
    if metrics:
        kinds.add(metric_protocol)
    for kind in sorted(kinds):
        modules.append("opentelemetry.exporter.otlp.proto.grpc" if kind == "grpc"
                       else "opentelemetry.exporter.otlp.proto.http")
    name = "otlp-grpc" if protocol == "grpc" else "otlp-http"
    return ExporterPlan(
        name, requested, traces, metrics,
        _otlp_endpoint(env, "traces", trace_protocol) if traces else None,
        _otlp_endpoint(env, "metrics", metric_protocol) if metrics else None,
        None, None, tuple(modules), service)


@dataclass
class _Pipeline:
    plan: ExporterPlan
    tracer_provider: Any
    meter_provider: Any
    http_server: Any = None
    global_tracer: bool = False
    global_meter: bool = False


_lock = threading.RLock()
_active: _Pipeline | None = None


def active() -> _Pipeline | None:
    """The pipeline this process built, if any (for diagnostics and tests)."""
    return _active


def _import(module: str, plan_: ExporterPlan) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        top = next((m for m in PACKAGES if module == m or module.startswith(m + ".")), module)
        package = PACKAGES.get(top, top)
        raise ConfigError("exporter setup", "exporter", plan_.requested,
                          f"an exporter whose package is installed: `pip install {package}` "
                          "(or `pip install 'tokenmetry[otel]'`)") from None


def _span_exporter(plan_: ExporterPlan, protocol: str) -> Any:
    if plan_.exporter == "console":
        return _import("opentelemetry.sdk.trace.export", plan_).ConsoleSpanExporter()
    if protocol == "grpc":
        return _import("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", plan_).OTLPSpanExporter()
    return _import("opentelemetry.exporter.otlp.proto.http.trace_exporter", plan_).OTLPSpanExporter()


def _metric_exporter(plan_: ExporterPlan, protocol: str) -> Any:
    if plan_.exporter == "console":
        return _import("opentelemetry.sdk.metrics.export", plan_).ConsoleMetricExporter()
    if protocol == "grpc":
        return _import("opentelemetry.exporter.otlp.proto.grpc.metric_exporter", plan_).OTLPMetricExporter()
    return _import("opentelemetry.exporter.otlp.proto.http.metric_exporter", plan_).OTLPMetricExporter()


def _build(plan_: ExporterPlan) -> _Pipeline:
    from .call import logger

    for module in plan_.modules:  # every package first: a clear error before anything starts
        _import(module, plan_)
    resources = _import("opentelemetry.sdk.resources", plan_)
    resource = resources.Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    env = os.environ
    trace_protocol = metric_protocol = "grpc" if plan_.exporter == "otlp-grpc" else "http/protobuf"
    if plan_.requested == "otlp":
        trace_protocol, metric_protocol = _protocol(env, "TRACES"), _protocol(env, "METRICS")
    tracer_provider = meter_provider = http_server = None
    if plan_.traces:
        sdk_trace = _import("opentelemetry.sdk.trace", plan_)
        trace_export = _import("opentelemetry.sdk.trace.export", plan_)
        tracer_provider = sdk_trace.TracerProvider(resource=resource)
        tracer_provider.add_span_processor(trace_export.BatchSpanProcessor(_span_exporter(plan_, trace_protocol)))
    if plan_.metrics:
        sdk_metrics = _import("opentelemetry.sdk.metrics", plan_)
        if plan_.exporter == "prometheus":
            reader = _import("opentelemetry.exporter.prometheus", plan_).PrometheusMetricReader()
            try:
                http_server, _ = _import("prometheus_client", plan_).start_http_server(
                    plan_.prometheus_port, addr=plan_.prometheus_host)
            except OSError as error:
                logger.warning("tokenmetry: cannot serve Prometheus metrics on %s:%s (%s); metrics are kept "
                               "but nothing can scrape them", plan_.prometheus_host, plan_.prometheus_port, error)
        else:
            metric_export = _import("opentelemetry.sdk.metrics.export", plan_)
            reader = metric_export.PeriodicExportingMetricReader(_metric_exporter(plan_, metric_protocol))
        meter_provider = sdk_metrics.MeterProvider(resource=resource, metric_readers=[reader])
    pipeline = _Pipeline(plan_, tracer_provider, meter_provider, http_server)
    _install_globals(pipeline)
    return pipeline


def _install_globals(pipeline: _Pipeline) -> None:
    """Make the pipeline global where the application set nothing; never replace the app's own."""
    from opentelemetry import metrics, trace

    from .call import warn_once
    from .telemetry import _is_noop_meter_provider, _is_noop_tracer_provider

    kept = []
    if pipeline.tracer_provider is not None:
        if _is_noop_tracer_provider(trace.get_tracer_provider()):
            trace.set_tracer_provider(pipeline.tracer_provider)
            pipeline.global_tracer = True
        else:
            kept.append("tracer")
    if pipeline.meter_provider is not None:
        if _is_noop_meter_provider(metrics.get_meter_provider()):
            metrics.set_meter_provider(pipeline.meter_provider)
            pipeline.global_meter = True
        else:
            kept.append("meter")
    if kept:
        warn_once("exporter-globals", "tokenmetry: the application already set a global OpenTelemetry %s "
                  "provider; it is left alone and only tokenmetry's own data goes to exporter=%s",
                  " and ".join(kept), pipeline.plan.requested)


def setup_from_options(options: Any) -> None:
    """Start what ``options`` ask for: the ledger (``options.ledger``) and the exporter (``options.exporter``).

    Called by ``instrument()`` after the recorder is configured; idempotent.
    """
    import sys

    # the ledger module (sqlite3) loads only for a process that uses a ledger
    if options.ledger is not None or "tokenmetry.ledger" in sys.modules:
        from . import ledger

        ledger.configure(options.ledger)
    _setup_exporter(options)


def _setup_exporter(options: Any) -> None:
    global _active
    from .call import recorder, warn_once

    if options.exporter == "none":
        return
    if options.tracer_provider is not None or options.meter_provider is not None:
        warn_once("exporter-explicit", "tokenmetry: exporter=%s is ignored because instrument() was given "
                  "tracer_provider/meter_provider", options.exporter)
        return
    wanted = plan(options)
    if wanted is None:
        return
    with _lock:
        if _active is None:
            _active = _build(wanted)
        elif _active.plan != wanted:
            warn_once("exporter-change", "tokenmetry: already exporting with exporter=%s; exporter=%s needs a new "
                      "process (OpenTelemetry's global providers are set once)", _active.plan.requested,
                      wanted.requested)
        pipeline = _active
    # tokenmetry records through its own providers whether or not they became the global ones
    recorder.telemetry.configure(replace(
        options,
        tracer_provider=pipeline.tracer_provider or options.tracer_provider,
        meter_provider=pipeline.meter_provider or options.meter_provider,
    ))


def shutdown(timeout_s: float = 10.0) -> None:
    """Flush and stop the exporter pipeline and close the ledger (both also happen at exit)."""
    global _active
    from . import ledger

    ledger.close()
    with _lock:
        pipeline, _active = _active, None
    if pipeline is None:
        return
    millis = int(timeout_s * 1000)
    if pipeline.tracer_provider is not None:
        pipeline.tracer_provider.force_flush(millis)
        pipeline.tracer_provider.shutdown()
    if pipeline.meter_provider is not None:
        pipeline.meter_provider.force_flush(millis)
        pipeline.meter_provider.shutdown()
    if pipeline.http_server is not None:
        pipeline.http_server.shutdown()
        pipeline.http_server.server_close()
