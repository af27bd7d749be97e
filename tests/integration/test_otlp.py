"""TOKENMETRY_EXPORTER=otlp / otlp-http / otlp-grpc to a local OTLP receiver this test runs: it decodes the
protobuf ``ExportTraceServiceRequest`` / ``ExportMetricsServiceRequest`` (``opentelemetry-proto``) and the
spans and metric points are checked exactly against what the server sent."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

import tokenmetry
from tokenmetry.testing import LocalAPIServer, Reply
from tokenmetry.usage import Usage

APP = textwrap.dedent("""
    import sys
    import openai, tokenmetry
    tokenmetry.instrument(providers=["openai"])  # exporter from TOKENMETRY_EXPORTER, endpoint from OTEL_*
    client = openai.OpenAI(api_key="test", base_url=sys.argv[1])
    for i in range(4):
        with tokenmetry.session(f"otlp-session-{i % 2}"):
            words = " ".join(["word"] * (i + 2))
            if i % 2:
                for _ in client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                                        messages=[{"role": "user", "content": words}]):
                    pass
            else:
                client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": words}])
    # no flush: the SDK providers export what is left when the process exits
""")


@dataclass
class Received:
    spans: list[tuple[dict[str, Any], Any, Any]] = field(default_factory=list)  # (resource attrs, scope, span)
    metrics: list[tuple[dict[str, Any], Any]] = field(default_factory=list)  # (resource attrs, metric)
    paths: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_traces(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        with self.lock:
            for resource_spans in request.resource_spans:
                resource = attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append((resource, scope_spans.scope, span))

    def add_metrics(self, request: metrics_service_pb2.ExportMetricsServiceRequest) -> None:
        with self.lock:
            for resource_metrics in request.resource_metrics:
                resource = attributes(resource_metrics.resource.attributes)
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        self.metrics.append((resource, metric))


def value(any_value: AnyValue) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return tuple(value(v) for v in any_value.array_value.values)
    return getattr(any_value, kind) if kind else None


def attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: value(pair.value) for pair in pairs}


def http_receiver(received: Received) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            assert self.headers["content-type"] == "application/x-protobuf"
            received.paths.append(self.path)
            if self.path == "/v1/traces":
                received.add_traces(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            elif self.path == "/v1/metrics":
                received.add_metrics(metrics_service_pb2.ExportMetricsServiceRequest.FromString(body))
                reply = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
            else:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    return receiver


def grpc_receiver(received: Received) -> tuple[Any, int]:
    import grpc

    class Traces(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            received.paths.append("grpc:traces")
            received.add_traces(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            received.paths.append("grpc:metrics")
            received.add_metrics(request)
            return metrics_service_pb2.ExportMetricsServiceResponse()

    receiver = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), receiver)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), receiver)
    port = receiver.add_insecure_port("127.0.0.1:0")
    receiver.start()
    return receiver, port


@pytest.fixture
def server() -> Iterator[LocalAPIServer]:
    with LocalAPIServer() as srv:
        yield srv


@pytest.mark.parametrize(("exporter", "protocol"), [
    ("otlp", None),  # the default protocol: http/protobuf
    ("otlp-http", None),
    ("otlp", "grpc"),
    ("otlp-grpc", None),
])
def test_otlp_spans_and_metrics_are_exact(exporter: str, protocol: str | None, server: LocalAPIServer) -> None:
    server.enqueue("openai.chat", Reply(usage={"prompt_tokens_details": {"cached_tokens": 3}}))
    received = Received()
    grpc_mode = exporter == "otlp-grpc" or protocol == "grpc"
    if grpc_mode:
        receiver, port = grpc_receiver(received)
    else:
        receiver = http_receiver(received)
        port = receiver.server_address[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENMETRY_", "OTEL_"))}
    env.update(TOKENMETRY_EXPORTER=exporter, OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
               OTEL_SERVICE_NAME="tokenmetry-otlp-check", OTEL_METRIC_EXPORT_INTERVAL="600000")
    if protocol:
        env["OTEL_EXPORTER_OTLP_PROTOCOL"] = protocol
    try:
        result = subprocess.run([sys.executable, "-c", APP, server.url + "/v1"], check=False, capture_output=True, text=True,
                                env=env, timeout=120)
    finally:
        if grpc_mode:
            receiver.stop(grace=None)
        else:
            receiver.shutdown()
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Failed to export" not in result.stderr, result.stderr
    if grpc_mode:
        assert set(received.paths) == {"grpc:traces", "grpc:metrics"}
    else:
        assert set(received.paths) == {"/v1/traces", "/v1/metrics"}

    # the truth, per response id
    sent = {r.response.response_id: r.response.usage for r in server.requests}  # type: ignore[union-attr]
    assert len(sent) == 4

    # spans: one CLIENT span per call, from the tokenmetry scope, with the server's numbers
    assert len(received.spans) == 4
    for index, (resource, scope, span) in enumerate(sorted(received.spans, key=lambda s: s[2].start_time_unix_nano)):
        assert resource["service.name"] == "tokenmetry-otlp-check"
        assert scope.name == "tokenmetry"
        assert span.kind == Span.SPAN_KIND_CLIENT and span.name == "chat gpt-4o-mini"
        attrs = attributes(span.attributes)
        usage = sent[attrs["gen_ai.response.id"]]
        assert attrs["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
        assert attrs["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
        assert attrs["gen_ai.usage.cache_read.input_tokens"] == usage["prompt_tokens_details"]["cached_tokens"]
        assert attrs["gen_ai.usage.reasoning.output_tokens"] == \
            usage["completion_tokens_details"]["reasoning_tokens"]
        assert attrs["gen_ai.request.stream"] is bool(index % 2)
        assert attrs["gen_ai.conversation.id"] == f"otlp-session-{index % 2}"
        assert attrs["gen_ai.provider.name"] == "openai" and attrs["gen_ai.operation.name"] == "chat"
        cost = tokenmetry.price("gpt-4o-mini", Usage(usage["prompt_tokens"], usage["completion_tokens"],
                                                     usage["prompt_tokens_details"]["cached_tokens"]))
        assert cost is not None and attrs["tokenmetry.cost.amount"] == float(cost.amount)

    # metrics: the one export at exit holds the cumulative totals
    totals = sum((Usage(u["prompt_tokens"], u["completion_tokens"], u["prompt_tokens_details"]["cached_tokens"])
                  for u in sent.values()), Usage())
    by_name: dict[str, list[Any]] = {}
    for resource, metric in received.metrics:
        assert resource["service.name"] == "tokenmetry-otlp-check"
        by_name.setdefault(metric.name, []).append(metric)
    (usage_metric,) = by_name["gen_ai.client.token.usage"]
    assert usage_metric.unit == "{token}"
    points = {attributes(p.attributes)["gen_ai.token.type"]: (p.count, p.sum)
              for p in usage_metric.histogram.data_points}
    assert points == {"input": (4, totals.input_tokens), "output": (4, totals.output_tokens)}
    assert list(usage_metric.histogram.data_points[0].explicit_bounds) == [
        1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864]
    (kinds,) = by_name["tokenmetry.tokens"]
    assert {attributes(p.attributes)["tokenmetry.token.kind"]: p.as_int for p in kinds.sum.data_points} == {
        "cache_read": totals.cache_read_tokens}
    (duration,) = by_name["gen_ai.client.operation.duration"]
    assert sum(p.count for p in duration.histogram.data_points) == 4
    (first_chunk,) = by_name["gen_ai.client.operation.time_to_first_chunk"]
    assert sum(p.count for p in first_chunk.histogram.data_points) == 2
    for metric in received.metrics:  # no session id on any metric point (cardinality)
        data = getattr(metric[1], metric[1].WhichOneof("data"))
        for point in data.data_points:
            assert "gen_ai.conversation.id" not in attributes(point.attributes)
