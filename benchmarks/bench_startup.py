"""Start-up cost of tokenmetry: what ``import tokenmetry; tokenmetry.instrument()`` adds to a process
that imports a vendor SDK, and proof that ``instrument()`` does no network I/O.

Two measurements, each over many fresh ``python`` subprocesses, interleaved (so a slow phase of a
shared machine hits every variant alike):

* in-process (the headline figure): a subprocess imports the SDK, then times
  ``import tokenmetry; tokenmetry.instrument()`` with ``perf_counter`` and ``process_time``. That is
  exactly what tokenmetry adds beyond the SDK's own import (modules the SDK already loaded are not
  loaded again), without subtracting two noisy one-second figures;
* whole process: the wall time of ``python -c "import SDK"`` and of ``python -c "import SDK;
  import tokenmetry; tokenmetry.instrument()"`` (``perf_counter`` around the subprocess, child CPU
  from ``getrusage(RUSAGE_CHILDREN)``), and the median of their paired differences. It includes
  interpreter exit, and on this machine it is several times noisier than the figure it estimates.

Bytecode: an installed package has its ``.pyc`` files (pip compiles them at install), but a source
checkout run with ``PYTHONDONTWRITEBYTECODE=1`` (as in some sandboxes) recompiles tokenmetry's
modules at every start. The subprocesses therefore get ``PYTHONDONTWRITEBYTECODE`` unset and a
private ``PYTHONPYCACHEPREFIX`` (a temporary directory, removed at the end; the warm-up runs fill
it), so what is measured is an installed package's start-up; ``--no-bytecode`` measures the
recompiling case instead.

The network check runs ``instrument()`` (and one instrumented call set-up) in a subprocess where
every socket entry point is replaced by a function that raises, and an audit hook
(``sys.addaudithook``) records any ``socket.*`` event a C extension might raise; it must print
``ok`` with no socket event.

Usage::

    python benchmarks/bench_startup.py                 # 15 runs of each variant
    python benchmarks/bench_startup.py --runs 30 --json startup.json
    python benchmarks/bench_startup.py --importtime    # what tokenmetry's import spends, by module
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

# the environment of every measured subprocess (see "Bytecode" above); set up in main()
CHILD_ENV: dict[str, str] = dict(os.environ)

# (name, SDK import statement) — the SDK alone, then the SDK with tokenmetry imported and instrumented
SDKS = {
    "openai": "import openai",
    "anthropic": "import anthropic",
    "google-genai": "from google import genai",
}
WITH_TOKENMETRY = "; import tokenmetry; tokenmetry.instrument()"
# the SDK first, then tokenmetry's import and instrument() timed inside the process
IN_PROCESS = """
import json, time
{sdk}
wall, cpu = time.perf_counter(), time.process_time()
import tokenmetry
imported_wall, imported_cpu = time.perf_counter(), time.process_time()
tokenmetry.instrument()
done_wall, done_cpu = time.perf_counter(), time.process_time()
print(json.dumps({{"import_ms": (imported_wall - wall) * 1000, "instrument_ms": (done_wall - imported_wall) * 1000,
                  "total_ms": (done_wall - wall) * 1000, "total_cpu_ms": (done_cpu - cpu) * 1000}}))
"""

NETWORK_GUARD = r'''
import socket, sys
events = []
def audit(event, args):
    if event.startswith("socket.") and event not in ("socket.__new__",):
        events.append(event)
sys.addaudithook(audit)
def refuse(*args, **kwargs):
    raise OSError("network I/O attempted")
for name in ("connect", "connect_ex", "send", "sendall", "sendto", "sendmsg", "bind"):
    setattr(socket.socket, name, refuse)
socket.create_connection = refuse
socket.getaddrinfo = refuse
socket.gethostbyname = refuse

import openai, tokenmetry
active = tokenmetry.instrument()
client = tokenmetry.wrap(openai.OpenAI(api_key="sk-test", base_url="https://api.openai.com/v1"))
try:  # the guard itself works: a connection attempt raises
    socket.create_connection(("api.openai.com", 443), timeout=1)
    guard = "not active"
except OSError:
    guard = "active"
print(json.dumps({"instrumented": active, "socket_events": events, "guard": guard}))
'''


def _run(code: str) -> tuple[float, float]:
    """(wall seconds, child CPU seconds) of ``python -c code``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, env=CHILD_ENV)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"python -c {code!r} failed:\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _in_process(sdk: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", IN_PROCESS.format(sdk=sdk)], capture_output=True, text=True, check=False, env=CHILD_ENV)
    if done.returncode != 0:
        raise SystemExit(f"in-process timing after {sdk!r} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _installed(statement: str) -> bool:
    return subprocess.run([sys.executable, "-c", statement], capture_output=True, check=False, env=CHILD_ENV).returncode == 0


def measure(runs: int, sdks: list[str]) -> dict[str, Any]:
    variants: dict[str, str] = {"python": "pass"}
    for name in sdks:
        variants[name] = SDKS[name]
        variants[f"{name} + tokenmetry"] = SDKS[name] + WITH_TOKENMETRY
    variants["tokenmetry alone"] = "import tokenmetry; tokenmetry.instrument()"
    names = list(variants)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    inside: dict[str, list[dict[str, float]]] = {name: [] for name in sdks}
    for _ in range(2):  # warm the OS file cache (and .pyc files) first
        for code in variants.values():
            _run(code)
    for run in range(runs):
        order = names[run % len(names):] + names[:run % len(names)]
        for name in order:
            samples[name].append(_run(variants[name]))
        for name in sdks:
            inside[name].append(_in_process(SDKS[name]))
        print(f"  run {run + 1}/{runs}", file=sys.stderr, flush=True)
    results: dict[str, Any] = {}
    for name in names:
        walls = [wall for wall, _ in samples[name]]
        cpus = [cpu for _, cpu in samples[name]]
        results[name] = {"code": variants[name], "wall_ms": statistics.median(walls) * 1000,
                         "wall_ms_p25_p75": [_q(walls, 0.25) * 1000, _q(walls, 0.75) * 1000],
                         "cpu_ms": statistics.median(cpus) * 1000}
    in_process = {}
    for name in sdks:
        in_process[name] = {key: statistics.median([sample[key] for sample in inside[name]])
                            for key in ("import_ms", "instrument_ms", "total_ms", "total_cpu_ms")}
        totals = [sample["total_ms"] for sample in inside[name]]
        in_process[name]["total_ms_p25_p75"] = [_q(totals, 0.25), _q(totals, 0.75)]
    added = {}
    for name in sdks:
        pairs = list(zip(samples[name], samples[f"{name} + tokenmetry"]))
        wall_diffs = [(b[0] - a[0]) * 1000 for a, b in pairs]
        cpu_diffs = [(b[1] - a[1]) * 1000 for a, b in pairs]
        added[name] = {"wall_ms": statistics.median(wall_diffs),
                       "wall_ms_p25_p75": [_q(wall_diffs, 0.25), _q(wall_diffs, 0.75)],
                       "cpu_ms": statistics.median(cpu_diffs)}
    return {"variants": results, "in_process": in_process, "tokenmetry_adds": added}


def _q(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def network_check() -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", "import json\n" + NETWORK_GUARD], capture_output=True, text=True, check=False, env=CHILD_ENV)
    if done.returncode != 0:
        return {"ok": False, "error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    found = json.loads(done.stdout.strip().splitlines()[-1])
    found["ok"] = not found["socket_events"] and found["guard"] == "active"
    return found


def importtime(top: int) -> list[tuple[str, float, float]]:
    """Modules that ``import openai, tokenmetry; tokenmetry.instrument()`` imports beyond
    ``import openai``, by self time (``python -X importtime``; its own overhead inflates the figures)."""
    def load(code: str) -> dict[str, tuple[float, float]]:
        done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=False, env=CHILD_ENV)
        modules = {}
        for line in done.stderr.splitlines():
            if not line.startswith("import time:") or "self [us]" in line:
                continue
            own, cumulative, name = line[len("import time:"):].split("|")
            modules[name.strip()] = (int(own) / 1000, int(cumulative) / 1000)
        return modules

    load("import openai" + WITH_TOKENMETRY)  # fills the bytecode cache first
    base = load("import openai")
    extra = load("import openai" + WITH_TOKENMETRY)
    rows = [(name, own, cumulative) for name, (own, cumulative) in extra.items() if name not in base]
    rows.sort(key=lambda row: -row[1])
    return rows[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--sdks", default="openai,anthropic,google-genai")
    parser.add_argument("--importtime", action="store_true", help="list the modules tokenmetry's start-up imports")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--no-bytecode", action="store_true",
                        help="keep PYTHONDONTWRITEBYTECODE as it is (tokenmetry recompiled at every start if set)")
    args = parser.parse_args()
    cache_dir = None
    if not args.no_bytecode:
        cache_dir = tempfile.mkdtemp(prefix="tokenmetry-bench-pycache-")
        CHILD_ENV.pop("PYTHONDONTWRITEBYTECODE", None)
        CHILD_ENV["PYTHONPYCACHEPREFIX"] = cache_dir
    try:
        run(args)
    finally:
        if cache_dir is not None:
            shutil.rmtree(cache_dir, ignore_errors=True)


def run(args: argparse.Namespace) -> None:
    if args.importtime:
        rows = importtime(30)
        print(f"{'self ms':>8} {'cum ms':>8}  module (imported beyond `import openai`; -X importtime figures)")
        for name, own, cumulative in rows:
            print(f"{own:8.1f} {cumulative:8.1f}  {name}")
        print(f"{sum(own for _, own, _ in rows):8.1f}  total self time of these modules")
        return
    sdks = [name for name in args.sdks.split(",") if name and _installed(SDKS[name])]
    report = measure(args.runs, sdks)
    report["network_check"] = network_check()
    report["machine"] = {"python": platform.python_version(), "platform": platform.platform(),
                         "cores": os.cpu_count()}
    report["bytecode"] = "recompiled at every start" if args.no_bytecode else "cached (as installed)"
    print(f"\nWhat `import tokenmetry; tokenmetry.instrument()` adds after the SDK's import, timed inside "
          f"the process (median of {args.runs} fresh processes; bytecode {report['bytecode']}; target < 100 ms):")
    for name, values in report["in_process"].items():
        low, high = values["total_ms_p25_p75"]
        verdict = "ok" if values["total_ms"] < 100 else "MISSED"
        print(f"  after {name:20} {values['total_ms']:6.0f} ms [p25 {low:.0f}, p75 {high:.0f}] "
              f"(import {values['import_ms']:.0f} + instrument() {values['instrument_ms']:.0f}; "
              f"CPU {values['total_cpu_ms']:.0f} ms)   {verdict}")
    print(f"\nWhole processes, median of {args.runs} each (wall ms; child CPU ms):")
    for name, values in report["variants"].items():
        print(f"  {name:26} {values['wall_ms']:7.0f} ms wall  {values['cpu_ms']:7.0f} ms CPU   "
              f"python -c {values['code']!r}")
    print("with tokenmetry - without, whole processes (median of paired differences; noisy):")
    for name, values in report["tokenmetry_adds"].items():
        print(f"  {name:26} {values['wall_ms']:+7.0f} ms wall [p25 {values['wall_ms_p25_p75'][0]:+.0f}, "
              f"p75 {values['wall_ms_p25_p75'][1]:+.0f}]  {values['cpu_ms']:+7.0f} ms CPU")
    check = report["network_check"]
    print(f"network I/O during instrument(): {'none' if check['ok'] else 'FOUND'} "
          f"(socket guard {check.get('guard')}, audit events {check.get('socket_events')}, "
          f"instrumented {check.get('instrumented')})")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
