"""Instructions and cache misses tokenmetry adds per SDK call, counted by valgrind's cachegrind.

The timing benchmark (``bench_overhead.py``) measures CPU time on a shared machine, where the same
mode differs by tens of microseconds between runs. This one counts instead: each process runs a
warm-up, then ``N`` calls of one client, under cachegrind (instructions, first-level and
last-level cache misses, with a 512 KiB last level standing in for a core's L2), and the added
figure per call is the difference between a long and a short run, instrumented minus bare. Counts
are repeatable to a few thousand instructions; a change to the hot path shows here when the timing
benchmark cannot resolve it. ``model µs`` weighs the counts into a rough time (instructions at 1.5
per cycle, 12 cycles a first-level miss, 60 a last-level one, 3 GHz), which tracked the timing
benchmark within about 10 µs for the OpenAI chat call.

Needs valgrind (Debian: ``apt-get install valgrind``). About three minutes per mode::

    python benchmarks/bench_cachegrind.py --provider openai --modes tokenmetry-nosdk,tokenmetry
    python benchmarks/bench_cachegrind.py --modes tokenmetry,yardstick,yardstick-full   # OpenAI only for -full
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
EVENTS = ("Ir", "I1mr", "ILmr", "Dr", "D1mr", "DLmr", "Dw", "D1mw", "DLmw")
SHORT, LONG, WARMUP = 32, 160, 64
MODES = ("bare", "tokenmetry-nosdk", "tokenmetry", "yardstick", "yardstick-full")


def child(provider: str, mode: str, calls: int) -> None:
    """Inside cachegrind: warm up, then ``calls`` calls."""
    sys.path.insert(0, str(HERE))
    import bench_overhead as bench

    scenario = bench.SCENARIOS[(provider, "chat")]
    client = scenario.make_client()
    if mode.startswith("yardstick"):  # the hand-written wrappers of bench_overhead.py
        kind = bench.YardstickFull if mode == "yardstick-full" else bench.Yardstick
        bench.YardstickMode(provider, bench.OTelSDK("batch"), kind).attach(client)
    elif mode != "bare":
        import tokenmetry

        kwargs = {}
        if mode == "tokenmetry":
            sdk = bench.OTelSDK("batch")
            kwargs = {"tracer_provider": sdk.tracer_provider, "meter_provider": sdk.meter_provider}
        tokenmetry.instrument(providers=[], **kwargs)
        tokenmetry.wrap(client)
    for _ in range(WARMUP):
        scenario.call(client)
    bench._join_background_loaders()
    for _ in range(calls):
        scenario.call(client)


def counts(provider: str, mode: str, calls: int, workdir: str) -> list[int]:
    out = os.path.join(workdir, f"{provider}.{mode}.{calls}.out")
    subprocess.run(
        ["valgrind", "--tool=cachegrind", "--cache-sim=yes", "--LL=524288,8,64", f"--cachegrind-out-file={out}",
         sys.executable, __file__, "--child", provider, mode, str(calls)],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONHASHSEED": "0"})
    with open(out) as handle:
        for line in handle:
            if line.startswith("summary:"):
                return [int(value) for value in line.split()[1:]]
    raise SystemExit(f"no summary in {out}")


def per_call(provider: str, mode: str, workdir: str, pool: ThreadPoolExecutor) -> list[float]:
    short, long = pool.map(lambda n: counts(provider, mode, n, workdir), (SHORT, LONG))
    return [(b - a) / (LONG - SHORT) for a, b in zip(short, long)]


def model_us(figures: dict[str, float]) -> float:
    cycles = figures["Ir"] / 1.5 + 12 * (figures["I1mr"] + figures["D1mr"] + figures["D1mw"]) + \
        60 * (figures["ILmr"] + figures["DLmr"] + figures["DLmw"])
    return cycles / 3000


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--provider", choices=("openai", "anthropic", "gemini"), default="openai")
    parser.add_argument("--modes", default="tokenmetry-nosdk")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"--modes: unknown {', '.join(unknown)} (known: {', '.join(MODES)})")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as workdir, ThreadPoolExecutor(2) as pool:
        bare = dict(zip(EVENTS, per_call(args.provider, "bare", workdir, pool)))
        print(f"{args.provider} chat, bare: {bare['Ir']:.0f} instructions per call, model {model_us(bare):.0f} µs")
        print(f"{'mode':18} " + " ".join(f"{e:>8}" for e in EVENTS) + "  model µs  (added per call)")
        for mode in modes:
            mine = dict(zip(EVENTS, per_call(args.provider, mode, workdir, pool)))
            added = {e: mine[e] - bare[e] for e in EVENTS}
            print(f"{mode:18} " + " ".join(f"{added[e]:8.0f}" for e in EVENTS) +
                  f"  {model_us(added):8.1f}  ({model_us(added) / model_us(bare):.1%} of bare)")


if __name__ == "__main__":
    main()
