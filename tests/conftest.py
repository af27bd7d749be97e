"""Shared fixtures: a clean tokenmetry per test, in-memory OpenTelemetry, the local vendor server."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import tokenmetry
from tokenmetry.call import recorder
from tokenmetry.config import Options
from tokenmetry.providers.openai import _counted as counted_responses


@pytest.fixture(autouse=True)
def clean_tokenmetry() -> Iterator[None]:
    """Every test starts uninstrumented with empty sessions and statistics, and leaves it so."""
    tokenmetry.uninstrument()
    recorder.configure(Options())
    recorder.stats.reset()
    tokenmetry.sessions.clear()
    counted_responses.clear()  # the local servers of different tests reuse response ids
    yield
    tokenmetry.uninstrument()
    recorder.configure(Options())
    recorder.stats.reset()
    tokenmetry.sessions.clear()


@dataclass
class OTel:
    """In-memory OpenTelemetry SDK providers handed to ``instrument()``."""

    tracer_provider: TracerProvider
    spans: InMemorySpanExporter
    meter_provider: MeterProvider
    metrics: InMemoryMetricReader

    def finished_spans(self) -> list[Any]:
        return list(self.spans.get_finished_spans())

    def metric_points(self, name: str) -> list[Any]:
        """Every data point of metric ``name`` (all scopes), as collected now."""
        data = self.metrics.get_metrics_data()
        points: list[Any] = []
        if data is None:
            return points
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name == name:
                        points.extend(metric.data.data_points)
        return points

    def kwargs(self) -> dict[str, Any]:
        return {"tracer_provider": self.tracer_provider, "meter_provider": self.meter_provider}


@pytest.fixture
def otel() -> Iterator[OTel]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield OTel(tracer_provider, spans, meter_provider, reader)
    tracer_provider.shutdown()
    meter_provider.shutdown()
