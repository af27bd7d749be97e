"""Instructions and cache misses tokenmetry adds per SDK call in steady state, counted by valgrind.

The timing benchmark (``bench_overhead.py``) measures CPU time on a shared machine, where the same
mode differs by tens of microseconds between runs. This one counts instead. Each process runs under
valgrind's callgrind with its cache simulation (instructions, first-level and last-level misses, a
512 KiB last level standing in for a core's L2) but with counting switched off; it warms up with
more calls than a session keeps in its history (so every kept structure is at its steady size),
then waits while this script switches counting on (``callgrind_control``), makes ``--calls`` calls
and exits at once. The added figure per call is the mode's count minus the bare client's, divided by
the calls; ``--repeat`` processes per mode are averaged (one process's layout of memory moves the
counts by about 1-2 thousand instructions). ``model µs`` weighs the counts into a rough time
(instructions at 1.5 per cycle, 12 cycles a first-level miss, 60 a last-level one, 3 GHz).

An earlier version counted a short run and a long run from the start and took the difference: the
session history still growing and a rare full garbage collection in one run but not the other made
two counts of the same tree differ by up to 15 thousand instructions per call.

``--functions`` also prints, for the first process of each mode, the C functions whose own counts
differ most from the bare client's (``callgrind_annotate``): where the added instructions go.

Needs valgrind (Debian: ``apt-get install valgrind``). About a minute per process::

    python benchmarks/bench_cachegrind.py --provider openai --modes tokenmetry-nosdk,tokenmetry
    python benchmarks/bench_cachegrind.py --modes tokenmetry,yardstick,yardstick-full   # OpenAI only for -full
    PYTHONPATH=/other/tree/src python benchmarks/bench_cachegrind.py    # another tree of tokenmetry
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
EVENTS = ("Ir", "Dr", "Dw", "I1mr", "D1mr", "D1mw", "ILmr", "DLmr", "DLmw")  # callgrind's order
MODES = ("bare", "tokenmetry-nosdk", "tokenmetry", "yardstick", "yardstick-full", "floor")


def child(provider: str, mode: str, calls: int, warmup: int, ready: str, go: str) -> None:
    """Inside callgrind: warm up uncounted, signal ``ready``, wait for ``go``, make ``calls`` calls."""
    sys.path.insert(0, str(HERE))
    import bench_overhead as bench

    scenario = bench.SCENARIOS[(provider, "chat")]
    client = scenario.make_client()
    if mode.startswith("yardstick"):  # the hand-written wrappers of bench_overhead.py
        kind = bench.YardstickFull if mode == "yardstick-full" else bench.Yardstick
        bench.YardstickMode(provider, bench.OTelSDK("batch"), kind).attach(client)
    elif mode == "floor":  # bench_overhead.py's least exact per-call account
        bench.Floor(provider).attach(client)
    elif mode != "bare":
        import tokenmetry

        kwargs = {}
        if mode == "tokenmetry":
            sdk = bench.OTelSDK("batch")
            kwargs = {"tracer_provider": sdk.tracer_provider, "meter_provider": sdk.meter_provider}
        tokenmetry.instrument(providers=[], **kwargs)
        tokenmetry.wrap(client)
    for _ in range(warmup):
        scenario.call(client)
    bench._join_background_loaders()
    Path(ready).touch()
    while not os.path.exists(go):
        time.sleep(0.05)
    for _ in range(calls):
        scenario.call(client)
    os._exit(0)  # nothing of the interpreter's shutdown is counted


def run(provider: str, mode: str, calls: int, warmup: int, workdir: str, tag: str) -> tuple[list[int], str]:
    """One process: its totals (EVENTS) and the path of its callgrind profile."""
    out, ready, go = (os.path.join(workdir, f"{tag}.{suffix}") for suffix in ("out", "ready", "go"))
    process = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--cache-sim=yes", "--LL=524288,8,64", "--instr-atstart=no",
         f"--callgrind-out-file={out}", sys.executable, __file__, "--child", provider, mode, str(calls),
         str(warmup), ready, go],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONHASHSEED": "0"})
    while not os.path.exists(ready):
        if process.poll() is not None:
            raise SystemExit(f"{mode}: the process under valgrind ended before its warm-up did")
        time.sleep(0.2)
    subprocess.run(["callgrind_control", "--instr=on", str(process.pid)], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    Path(go).touch()
    process.wait()
    with open(out) as handle:
        for line in handle:
            if line.startswith(("summary:", "totals:")):
                return [int(value) for value in line.split()[1:]], out
    raise SystemExit(f"no totals in {out}")


def functions(profile: str, event: str = "Ir") -> dict[str, int]:
    """Own count of ``event`` per C function of a callgrind profile."""
    text = subprocess.run(["callgrind_annotate", "--threshold=100", f"--show={event}", f"--sort={event}", profile],
                          capture_output=True, text=True, check=True).stdout
    found: dict[str, int] = {}
    for line in text.splitlines():
        match = re.match(r"\s*([\d,]+) \([^)]*\)\s+(.*?)(?: \[.*\])?$", line)
        if match and "PROGRAM TOTALS" not in line:
            name = re.sub(r"'\d+$", "", re.sub(r"^.*?/Python-[\d.]+/", "", match.group(2)))
            found[name] = found.get(name, 0) + int(match.group(1).replace(",", ""))
    return found


def model_us(figures: dict[str, float]) -> float:
    cycles = figures["Ir"] / 1.5 + 12 * (figures["I1mr"] + figures["D1mr"] + figures["D1mw"]) + \
        60 * (figures["ILmr"] + figures["DLmr"] + figures["DLmw"])
    return cycles / 3000


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        provider, mode, calls, warmup, ready, go = sys.argv[2:8]
        child(provider, mode, int(calls), int(warmup), ready, go)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--provider", choices=("openai", "anthropic", "gemini"), default="openai")
    parser.add_argument("--modes", default="tokenmetry-nosdk")
    parser.add_argument("--calls", type=int, default=128, help="counted calls per process")
    parser.add_argument("--warmup", type=int, default=1100,
                        help="uncounted calls first (more than a session's history keeps: 1000)")
    parser.add_argument("--repeat", type=int, default=2, help="processes per mode, averaged")
    parser.add_argument("--functions", type=int, default=0, metavar="N",
                        help="print the N C functions whose counts differ most from the bare client's")
    parser.add_argument("--keep", metavar="DIR", help="keep the callgrind profiles in DIR (for callgrind_annotate)")
    parser.add_argument("--event", choices=EVENTS, default="Ir",
                        help="the count --functions compares (DLmw: last-level write misses, ...)")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m and m != "bare"]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"--modes: unknown {', '.join(unknown)} (known: {', '.join(MODES)})")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    jobs = [(mode, index) for mode in ["bare", *modes] for index in range(args.repeat)]
    with tempfile.TemporaryDirectory() as scratch, ThreadPoolExecutor(2) as pool:
        workdir = args.keep or scratch
        os.makedirs(workdir, exist_ok=True)
        results = list(pool.map(lambda job: run(args.provider, job[0], args.calls, args.warmup, workdir,
                                                f"{job[0]}.{job[1]}"), jobs))
        per_call: dict[str, dict[str, float]] = {}
        profiles: dict[str, str] = {}
        spread: dict[str, list[float]] = {}
        for (mode, _), (totals, profile) in zip(jobs, results):
            profiles.setdefault(mode, profile)
            spread.setdefault(mode, []).append(totals[0] / args.calls)
            sums = per_call.setdefault(mode, dict.fromkeys(EVENTS, 0.0))
            for event, value in zip(EVENTS, totals):
                sums[event] += value / args.calls / args.repeat
        bare = per_call["bare"]
        print(f"{args.provider} chat, bare: {bare['Ir']:.0f} instructions per call, model {model_us(bare):.0f} µs; "
              f"{args.repeat} process(es) per mode of {args.calls} counted calls after {args.warmup}")
        print(f"{'mode':18} " + " ".join(f"{e:>8}" for e in EVENTS) + "  model µs  (added per call; Ir of each process)")
        for mode in modes:
            added = {e: per_call[mode][e] - bare[e] for e in EVENTS}
            each = ", ".join(f"{value - bare['Ir']:.0f}" for value in spread[mode])
            print(f"{mode:18} " + " ".join(f"{added[e]:8.0f}" for e in EVENTS) +
                  f"  {model_us(added):8.1f}  ({model_us(added) / model_us(bare):.1%} of bare; {each})")
        if args.functions:
            base = functions(profiles["bare"], args.event)
            for mode in modes:
                mine = functions(profiles[mode], args.event)
                diff = {name: (mine.get(name, 0) - base.get(name, 0)) / args.calls for name in set(base) | set(mine)}
                print(f"\n{mode}: C functions by added {args.event} per call (first process against bare's)")
                for name, value in sorted(diff.items(), key=lambda item: -abs(item[1]))[:args.functions]:
                    print(f"{value:9.0f}  {name}")


if __name__ == "__main__":
    main()
