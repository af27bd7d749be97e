"""Cost of pricing a call and of counting a chat's tokens, against the libraries underneath.

Run: ``python benchmarks/bench_pricing_counting.py [--quick]`` (from the repository root, with the
dev dependencies installed; ``src/`` is put on the path).

Pricing: ``tokenmetry.price`` per call once a model has been priced (its price resolved and cached),
for a flat-priced model, a tiered one, one with date-dependent prices, with options (currency
conversion, an override, a price-context variant), next to ``genai_prices.calc_price`` for the same
usage. Target: under 5 µs.

Counting: ``tokenmetry.count_tokens`` of a ~1,000-token chat (system prompt + 8 turns) against raw
tiktoken ``encode_ordinary`` of the same texts, with *cold* texts (every chat is new, so every
text misses the cache and is really encoded) and *warm* ones (the same chat again: cache hits).
Target: cold within a few percent of raw tiktoken, i.e. the cache is not what makes it fast.

Timings are CPU time of this process (``time.process_time``), so other processes competing for the
cores do not inflate them, given as the minimum over repeats (the least-disturbed run) and the median.
One-off timings (first price, tokenizer load) are wall-clock.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

# English prose with some accents, CJK, an emoji, code and numbers: a realistic mix for the BPE
WORDS = ["the", "model", "returned", "a", "structured", "answer", "with", "citations", "while", "the",
         "cache", "kept", "the", "system", "prompt", "warm", "so", "latency", "dropped", "and", "throughput",
         "rose;", "tokens", "per", "minute", "stayed", "under", "the", "limit", "although", "retries",
         "after", "429", "responses", "added", "backoff:", "données,", "Übergröße,", "東京,", "emoji", "🚀,",
         "code", "`x", "=", "f(y)`,", "numbers", "3.14159", "2026-11-23", "42"]


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def make_chat(seed: int) -> list[dict[str, str]]:
    """A system prompt and 8 turns, about 1,000 o200k tokens in all; ``seed`` makes every chat unique."""
    rng = random.Random(seed)
    messages = [{"role": "system", "content": _text(rng, 260)}]
    for turn in range(8):
        messages.append({"role": "user" if turn % 2 == 0 else "assistant", "content": _text(rng, 60)})
    return messages


CPU = time.process_time


def per_call(fn: Callable[[], Any], number: int, repeat: int) -> tuple[float, float]:
    """(min, median) CPU seconds per call."""
    fn()
    runs = [t / number for t in timeit.repeat(fn, number=number, repeat=repeat, timer=CPU)]
    return min(runs), statistics.median(runs)


def bench_pricing(quick: bool) -> list[tuple[str, float, float]]:
    from decimal import Decimal

    from tokenmetry import pricing
    from tokenmetry.config import resolve
    from tokenmetry.usage import Usage

    rows: list[tuple[str, float, float]] = []
    started = time.perf_counter()
    pricing.price("gpt-4o", Usage(1, 1))  # imports genai-prices and resolves the model
    rows.append(("first price() of the process (genai-prices import + resolve)",
                 time.perf_counter() - started, float("nan")))
    started = time.perf_counter()
    pricing.price("claude-sonnet-4-5", Usage(1, 1), provider="anthropic")
    rows.append(("first price() of another model (resolve once)", time.perf_counter() - started,
                 float("nan")))

    usage = Usage(input_tokens=12_000, output_tokens=800, cache_read_tokens=6_000, cache_write_tokens=2_000,
                  reasoning_tokens=300)
    usd = resolve({})
    eur = resolve({"currency": "EUR", "currency_rates": {"EUR": Decimal("0.92")}})
    override = resolve({"price_overrides": {"gpt-4o": {"cache_read": "0.5"}}})
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("price() gpt-4o (flat), no options", lambda: pricing.price("gpt-4o", usage)),
        ("price() gpt-4o, default Options", lambda: pricing.price("gpt-4o", usage, options=usd)),
        ("price() claude-sonnet-4-5 (tiered, 1h cache)", lambda: pricing.price(
            "claude-sonnet-4-5", usage, provider="anthropic", options=usd, cache_write_1h_tokens=500)),
        ("price() o3 (date-dependent prices)", lambda: pricing.price("o3", usage, options=usd)),
        ("price() gpt-4o in EUR", lambda: pricing.price("gpt-4o", usage, options=eur)),
        ("price() gpt-4o with an override", lambda: pricing.price("gpt-4o", usage, options=override)),
        ("price() o3 service_tier=flex", lambda: pricing.price(
            "o3", usage, price_context={"service_tier": "flex"})),
    ]
    number, repeat = (2_000, 30) if quick else (10_000, 100)
    for label, fn in cases:
        rows.append((label, *per_call(fn, number, repeat)))

    import genai_prices

    genai_usage = genai_prices.Usage(input_tokens=12_000, output_tokens=800, cache_read_tokens=6_000,
                                     cache_write_tokens=2_000)
    rows.append(("genai_prices.calc_price() gpt-4o (for comparison)",
                 *per_call(lambda: genai_prices.calc_price(genai_usage, "gpt-4o", provider_id="openai"),
                           200 if quick else 1_000, 10 if quick else 20)))
    return rows


def bench_counting(quick: bool) -> tuple[list[tuple[str, float, float]], int]:
    from tokenmetry import counting

    rows: list[tuple[str, float, float]] = []
    started = time.perf_counter()
    encoder = counting._get_encoder("o200k_base")
    rows.append(("load o200k_base from the local file (once)", time.perf_counter() - started, float("nan")))
    assert encoder is not None
    encode = encoder.encode  # tiktoken.Encoding.encode_ordinary: the native baseline

    chats = 200 if quick else 600
    passes = 3 if quick else 7
    pool = [make_chat(seed) for seed in range(chats * passes)]  # never reused: every text is cold
    tokens = counting.count_tokens("gpt-4o", pool[0]).tokens

    def raw(chat: list[dict[str, str]]) -> int:
        total = 3
        for message in chat:
            total += 3 + len(encode(message["role"])) + len(encode(message["content"]))
        return total

    # cold: each pass takes fresh chats, alternating raw and tokenmetry so drift hits both alike
    raw_times: list[float] = []
    cold_times: list[float] = []
    for index in range(passes):
        batch = pool[index * chats:(index + 1) * chats]
        counting.clear_cache()
        started = CPU()
        expected = [raw(chat) for chat in batch]
        raw_times.append((CPU() - started) / chats)
        started = CPU()
        got = [counting.count_tokens("gpt-4o", chat).tokens for chat in batch]
        cold_times.append((CPU() - started) / chats)
        assert got == expected, "count_tokens disagrees with raw tiktoken"
    misses = counting.cache_info()["misses"]
    rows.append((f"raw tiktoken encode_ordinary, ~{tokens}-token chat", min(raw_times),
                 statistics.median(raw_times)))
    rows.append((f"count_tokens, ~{tokens}-token chat, cold texts", min(cold_times),
                 statistics.median(cold_times)))
    assert misses > 0 and counting.cache_info()["hits"] == 0, "cold run must not hit the cache"

    warm = pool[0]
    counting.count_tokens("gpt-4o", warm)
    rows.append(("count_tokens, same chat again (cache hits)",
                 *per_call(lambda: counting.count_tokens("gpt-4o", warm), 200 if quick else 1_000,
                           10 if quick else 30)))
    rows.append((f"count_tokens claude estimate, ~{tokens}-token chat",
                 *per_call(lambda: counting.count_tokens("claude-sonnet-4-5", warm), 200 if quick else 1_000,
                           10 if quick else 30)))

    # one long text, cold every time (a new text per trial), raw and tokenmetry alternating
    raw_long: list[float] = []
    ours_long: list[float] = []
    size_mb = 0.0
    for trial in range(3 if quick else 7):
        long_text = " ".join(chat[0]["content"] for chat in pool[trial * 60:(trial + 1) * 60])  # ~100 kB
        size_mb = len(long_text.encode()) / 1e6
        started = CPU()
        encode(long_text)
        raw_long.append(CPU() - started)
        counting.clear_cache()
        started = CPU()
        counting.count_tokens("gpt-4o", text=long_text)
        ours_long.append(CPU() - started)
    kilobytes = size_mb * 1000
    rows.append((f"raw encode_ordinary, one {kilobytes:.0f} kB text ({size_mb / min(raw_long):.1f} MB/s)",
                 min(raw_long), statistics.median(raw_long)))
    rows.append((f"count_tokens(text=...), same text, cold ({size_mb / min(ours_long):.1f} MB/s)",
                 min(ours_long), statistics.median(ours_long)))
    return rows, tokens


def show(title: str, rows: list[tuple[str, float, float]]) -> None:
    print(f"\n{title}")
    print(f"{'':64} {'min':>12} {'median':>12}")
    for label, best, median in rows:
        def fmt(seconds: float) -> str:
            if math.isnan(seconds):  # a single measurement
                return ""
            if seconds >= 0.01:
                return f"{seconds * 1e3:9.1f} ms"
            return f"{seconds * 1e6:9.2f} µs"

        print(f"{label:64} {fmt(best):>12} {fmt(median):>12}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    args = parser.parse_args()
    print(f"Python {sys.version.split()[0]}")
    pricing_rows = bench_pricing(args.quick)
    show("Pricing (per call)", pricing_rows)
    counting_rows, _ = bench_counting(args.quick)
    show("Counting (per chat / per text)", counting_rows)
    raw_cold = next(r for r in counting_rows if r[0].startswith("raw tiktoken"))
    cold = next(r for r in counting_rows if "cold texts" in r[0])
    warm_price = next(r for r in pricing_rows if r[0].startswith("price() claude"))
    print(f"\ncount_tokens cold / raw tiktoken: {cold[1] / raw_cold[1]:.2f}x (min), "
          f"{cold[2] / raw_cold[2]:.2f}x (median)")
    print(f"price() tiered model: {warm_price[1] * 1e6:.2f} µs min (target < 5 µs)")


if __name__ == "__main__":
    main()
