"""tokenmetry's spans and metrics through the OpenTelemetry SDK, printed to the console.

    python examples/opentelemetry_console.py

In production you configure your own tracer and meter providers (an OTLP exporter to a collector, a
Prometheus reader...) and tokenmetry uses them; here the SDK's console exporters show what is sent.
Runs offline against the local OpenAI-compatible endpoint.
"""

from __future__ import annotations

import openai
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

import tokenmetry
from tokenmetry.testing import LocalAPIServer


def main() -> None:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(tracer_provider)
    reader = PeriodicExportingMetricReader(ConsoleMetricExporter(), export_interval_millis=60_000)
    meter_provider = MeterProvider(metric_readers=[reader])
    metrics.set_meter_provider(meter_provider)

    tokenmetry.instrument()  # picks up the global providers set above
    with LocalAPIServer() as server, openai.OpenAI(api_key="offline", base_url=f"{server.url}/v1") as client:
        with tokenmetry.session("support-ticket-981"):  # the session id becomes gen_ai.conversation.id
            client.chat.completions.create(model="gpt-4o-mini",
                                           messages=[{"role": "user", "content": "Summarise my ticket."}])
    # one CLIENT span per call was printed as it ended; the metric points print on this flush
    meter_provider.force_flush()
    meter_provider.shutdown()
    tracer_provider.shutdown()


if __name__ == "__main__":
    main()
