"""Python bytecode instructions tokenmetry executes per SDK call, per function: a deterministic count.

The timed benchmark (``bench_overhead.py``) is noisy on a shared machine, and the valgrind count
(``bench_cachegrind.py``) moves by thousands of instructions with the layout of memory. This one
counts what tokenmetry itself runs: after a warm-up, ``sys.settrace`` with opcode events is switched
on for frames of tokenmetry's modules only, and every bytecode instruction they execute in ``--calls``
calls is counted per function (the batch that applies finished calls every 16 included, as a share
per call). The count is the same on every run of the same tree.

On the machine of docs/performance.md, a bytecode instruction of tokenmetry's per-call path costs
about 20-25 ns of the instrumented call (the SDK's own work between two calls evicts what it touches;
the same code in a warm loop runs at about 5 ns), so this count tracks the timed overhead without
its noise. ::

    python benchmarks/bench_opcodes.py                       # OpenAI chat, no OpenTelemetry SDK
    python benchmarks/bench_opcodes.py --provider anthropic --sdk --top 30
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--provider", choices=("openai", "anthropic", "gemini"), default="openai")
    parser.add_argument("--kind", choices=("chat", "stream"), default="chat")
    parser.add_argument("--sdk", action="store_true", help="with the OpenTelemetry SDK (in-memory exporters)")
    parser.add_argument("--calls", type=int, default=64, help="counted calls (a multiple of 16: whole batches)")
    parser.add_argument("--warmup", type=int, default=1100, help="uncounted calls first")
    parser.add_argument("--top", type=int, default=20, help="functions listed")
    args = parser.parse_args()

    sys.path.insert(0, str(HERE))
    import bench_overhead as bench

    import tokenmetry

    scenario = bench.SCENARIOS[(args.provider, args.kind)]
    kwargs: dict[str, Any] = {}
    if args.sdk:
        sdk = bench.OTelSDK("simple")  # no worker thread: every instruction runs in the calling thread
        kwargs = {"tracer_provider": sdk.tracer_provider, "meter_provider": sdk.meter_provider}
    tokenmetry.instrument(providers=[], **kwargs)
    client = scenario.make_client()
    tokenmetry.wrap(client)
    for _ in range(args.warmup):
        scenario.call(client)
    bench._join_background_loaders()

    package = os.path.dirname(tokenmetry.__file__)
    counts: collections.Counter[tuple[str, str]] = collections.Counter()

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        code = frame.f_code
        if not code.co_filename.startswith(package):
            return None
        frame.f_trace_opcodes = True
        key = (os.path.relpath(code.co_filename, package), code.co_qualname)

        def local(frame: Any, event: str, arg: Any) -> Any:
            if event == "opcode":
                counts[key] += 1
            return local

        return local

    sys.settrace(tracer)
    try:
        for _ in range(args.calls):
            scenario.call(client)
    finally:
        sys.settrace(None)
    total = sum(counts.values())
    print(f"{args.provider} {args.kind}, {'with' if args.sdk else 'no'} OpenTelemetry SDK: "
          f"{total / args.calls:.0f} bytecode instructions of tokenmetry per call ({args.calls} calls)")
    for (module, name), count in counts.most_common(args.top):
        print(f"{count / args.calls:8.1f}  {module}:{name}")


if __name__ == "__main__":
    main()
