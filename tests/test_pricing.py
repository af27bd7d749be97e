"""tokenmetry.pricing against hand-computed figures.

Every expected amount below is worked out by hand from the per-million-token prices written next to
it, which are those in genai-prices' bundled data (``genai_prices/data.py``) for that model. A last
test checks a sample of models and usages against ``genai_prices.calc_price`` itself.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tokenmetry import pricing
from tokenmetry.config import resolve
from tokenmetry.errors import TokenmetryError
from tokenmetry.pricing import PricingError, on_unpriced, price, unpriced_count, unpriced_models
from tokenmetry.usage import Cost, Usage

D = Decimal
# Prices of some models change on dates in the data: pin "now" where it matters.
NOV_2026 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def fresh_pricing() -> None:
    pricing.clear_cache()


def parts(cost: Cost | None) -> tuple[Decimal, ...]:
    assert cost is not None
    return cost.amount, cost.input, cost.output, cost.cache_read, cost.cache_write  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------- OpenAI

def test_openai_cached_input() -> None:
    # gpt-4o: input $2.50/M, cached input $1.25/M, output $10/M
    usage = Usage(input_tokens=10_000, output_tokens=2_000, cache_read_tokens=4_000)
    cost = price("gpt-4o", usage, provider="openai")
    # uncached 6,000 x 2.50/M = 0.015; cached 4,000 x 1.25/M = 0.005; output 2,000 x 10/M = 0.02
    assert parts(cost) == (D("0.04"), D("0.015"), D("0.02"), D("0.005"), D("0"))
    assert cost is not None and cost.currency == "USD" and cost.source == "genai-prices"


def test_dated_openai_id_takes_the_base_price() -> None:
    usage = Usage(input_tokens=10_000, output_tokens=2_000, cache_read_tokens=4_000)
    assert parts(price("gpt-4o-2024-11-20", usage)) == parts(price("gpt-4o", usage))
    assert parts(price("gpt-4o-2024-11-20", usage, provider="openai"))[0] == D("0.04")
    assert pricing.price_info("gpt-4o-2024-11-20", "openai")["model_id"] == "gpt-4o"  # type: ignore[index]


def test_openai_reasoning_is_billed_as_output() -> None:
    # o4-mini: input $1.10/M, output $4.40/M; reasoning tokens are output tokens at the output price
    usage = Usage(input_tokens=2_000, output_tokens=5_000, reasoning_tokens=4_000)
    cost = price("o4-mini", usage, provider="openai")
    # input 2,000 x 1.10/M = 0.0022; output 5,000 x 4.40/M = 0.022 (4,000 of them reasoning)
    assert parts(cost) == (D("0.0242"), D("0.0022"), D("0.022"), D("0"), D("0"))
    assert parts(price("o4-mini", Usage(2_000, 5_000), provider="openai")) == parts(cost)


def test_a_separate_reasoning_price_is_used_where_the_data_has_one() -> None:
    # perplexity sonar-deep-research: input $2/M, output $8/M, reasoning $3/M (the only such model)
    usage = Usage(input_tokens=1_000, output_tokens=3_000, reasoning_tokens=2_000)
    cost = price("sonar-deep-research", usage, provider="perplexity")
    # input 1,000 x 2/M = 0.002; output (3,000 - 2,000) x 8/M = 0.008 + reasoning 2,000 x 3/M = 0.006
    assert parts(cost) == (D("0.016"), D("0.002"), D("0.014"), D("0"), D("0"))


def test_prices_that_change_on_a_date() -> None:
    # o3: $10/M in, $40/M out until 2025-06-10, then $2/M and $8/M
    usage = Usage(input_tokens=1_000, output_tokens=1_000)
    assert parts(price("o3", usage, at=datetime(2025, 1, 1, tzinfo=UTC)))[0] == D("0.05")  # 0.01 + 0.04
    assert parts(price("o3", usage, at=NOV_2026))[0] == D("0.010")  # 0.002 + 0.008
    # a service-tier variant: flex o3 is $1/M in, $4/M out from 2026-10-12
    flex = price("o3", usage, price_context={"service_tier": "flex"}, at=NOV_2026)
    assert parts(flex)[0] == D("0.005")


def test_time_of_day_prices() -> None:
    # deepseek-chat: $0.27/M in, $1.10/M out from 00:30 to 16:30 UTC; $0.135/M and $0.55/M otherwise
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    noon, evening = datetime(2026, 11, 23, 12, 0, tzinfo=UTC), datetime(2026, 11, 23, 20, 0, tzinfo=UTC)
    peak = price("deepseek-chat", usage, provider="deepseek", at=noon)
    off_peak = price("deepseek-chat", usage, provider="deepseek", at=evening)
    assert parts(peak)[0] == D("1.37") and parts(off_peak)[0] == D("0.685")


# ------------------------------------------------------------------------------------------- Anthropic

def test_anthropic_five_minute_and_one_hour_cache_writes() -> None:
    # claude-sonnet-4-5 (prompt <= 200k): input $3/M, output $15/M, cache read $0.30/M,
    # 5-minute cache write $3.75/M, 1-hour cache write $6/M
    usage = Usage(input_tokens=50_000, output_tokens=1_000, cache_read_tokens=20_000,
                  cache_write_tokens=10_000)
    cost = price("claude-sonnet-4-5-20250929", usage, provider="anthropic", cache_write_1h_tokens=4_000)
    # uncached 50,000 - 20,000 - 10,000 = 20,000 x 3/M = 0.06; reads 20,000 x 0.30/M = 0.006;
    # writes 6,000 x 3.75/M = 0.0225 + 4,000 x 6/M = 0.024 -> 0.0465; output 1,000 x 15/M = 0.015
    assert parts(cost) == (D("0.1275"), D("0.06"), D("0.015"), D("0.006"), D("0.0465"))
    # all writes at the 5-minute price when no 1-hour part is given: 10,000 x 3.75/M = 0.0375
    assert parts(price("claude-sonnet-4-5", usage, provider="anthropic"))[4] == D("0.0375")


def test_anthropic_long_context_tier() -> None:
    # claude-sonnet-4-5 over 200k prompt tokens: input $6/M, output $22.50/M, cache read $0.60/M
    usage = Usage(input_tokens=250_000, output_tokens=2_000, cache_read_tokens=50_000)
    # uncached 200,000 x 6/M = 1.2; reads 50,000 x 0.60/M = 0.03; output 2,000 x 22.50/M = 0.045
    assert parts(price("claude-sonnet-4-5", usage, provider="anthropic")) == (
        D("1.275"), D("1.2"), D("0.045"), D("0.03"), D("0"))


# ------------------------------------------------------------------------------------------- Gemini

def test_gemini_25_pro_tier_is_a_cliff() -> None:
    # gemini-2.5-pro: prompt <= 200k: input $1.25/M, output $10/M, cache read $0.125/M;
    #                 prompt  > 200k: input $2.50/M, output $15/M, cache read $0.25/M (all tokens)
    below = price("models/gemini-2.5-pro", Usage(input_tokens=200_000, output_tokens=1_000),
                  provider="gcp.gemini")
    # 200,000 x 1.25/M = 0.25; 1,000 x 10/M = 0.01
    assert parts(below) == (D("0.26"), D("0.25"), D("0.01"), D("0"), D("0"))
    above = price("models/gemini-2.5-pro", Usage(input_tokens=200_001, output_tokens=1_000),
                  provider="gcp.gemini")
    # 200,001 x 2.50/M = 0.5000025; 1,000 x 15/M = 0.015
    assert parts(above) == (D("0.5150025"), D("0.5000025"), D("0.015"), D("0"), D("0"))
    cached = price("gemini-2.5-pro",
                   Usage(input_tokens=300_000, output_tokens=2_000, cache_read_tokens=100_000))
    # the tier counts the whole prompt, cache included: 200,000 x 2.50/M = 0.5; 100,000 x 0.25/M = 0.025;
    # 2,000 x 15/M = 0.03
    assert parts(cached) == (D("0.555"), D("0.5"), D("0.03"), D("0.025"), D("0"))


def test_gemini_thoughts_are_output() -> None:
    # gemini-2.5-flash: input $0.30/M, output $2.50/M; thoughts are inside output_tokens (SPEC §3)
    cost = price("gemini-2.5-flash", Usage(input_tokens=10_000, output_tokens=3_000, reasoning_tokens=2_500),
                 provider="gcp.gemini")
    assert parts(cost) == (D("0.0105"), D("0.003"), D("0.0075"), D("0"), D("0"))


# ------------------------------------------------------------------------------------------- ids

@pytest.mark.parametrize("model, provider", [
    ("publishers/google/models/gemini-2.5-flash", "gcp.vertex_ai"),
    ("projects/p/locations/us-central1/publishers/google/models/gemini-2.5-flash", "gcp.vertex_ai"),
    ("models/gemini-2.5-flash", "gcp.gemini"),
    ("gemini-2.5-flash", None),
])
def test_vertex_and_gemini_refs(model: str, provider: str | None) -> None:
    # gemini-2.5-flash: input $0.30/M, output $2.50/M: 10,000 x 0.30/M = 0.003; 1,000 x 2.50/M = 0.0025
    assert parts(price(model, Usage(10_000, 1_000), provider=provider))[0] == D("0.0055")


@pytest.mark.parametrize("model, provider", [
    ("claude-3-5-sonnet-v2@20241022", "gcp.vertex_ai"),  # Claude on Vertex AI
    ("anthropic.claude-3-5-sonnet-20240620-v1:0", "aws.bedrock"),  # Bedrock
    ("us.anthropic.claude-3-5-sonnet-20240620-v1:0", "aws.bedrock"),  # Bedrock cross-region profile
    ("claude-3-5-sonnet-20241022", "anthropic"),
])
def test_cloud_claude_ids(model: str, provider: str) -> None:
    # Claude 3.5 Sonnet on each: $3/M in, $15/M out: 1,000 x 3/M + 1,000 x 15/M = 0.018
    assert parts(price(model, Usage(1_000, 1_000), provider=provider))[0] == D("0.018")


@pytest.mark.parametrize("provider, model, provider_id", [
    ("openai", "gpt-4o", "openai"), ("anthropic", "claude-sonnet-4-5", "anthropic"),
    ("gcp.gemini", "gemini-2.5-flash", "google"), ("gcp.vertex_ai", "gemini-2.5-flash", "google"),
    ("azure.ai.openai", "gpt-4o", "azure"), ("azure.ai.openai", "gpt-35-turbo", "azure"),
    ("aws.bedrock", "anthropic.claude-3-5-sonnet-20240620-v1:0", "aws"),
    ("deepseek", "deepseek-chat", "deepseek"),
    ("groq", "llama-3.3-70b-versatile", "groq"), ("mistral_ai", "mistral-large-latest", "mistral"),
    ("x_ai", "grok-4", "x-ai"), ("perplexity", "sonar", "perplexity"),
    # an OpenAI-compatible endpoint reported as "openai": the model id finds its real vendor
    ("openai", "deepseek-chat", "deepseek"),
    # no provider, no vendor pattern claims the id: the big three are searched
    (None, "text-embedding-3-small", "openai"),
])
def test_provider_names(provider: str | None, model: str, provider_id: str) -> None:
    info = pricing.price_info(model, provider)
    assert info is not None and info["provider_id"] == provider_id
    assert price(model, Usage(1_000, 1_000), provider=provider) is not None


# ------------------------------------------------------------------------------------------- unknown

def test_unknown_model(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[tuple[str, str | None]] = []
    unsubscribe = on_unpriced(lambda model, provider: seen.append((model, provider)))
    before = unpriced_count()
    before_model = unpriced_models().get("my-own-model-1", 0)
    try:
        with caplog.at_level(logging.WARNING, logger="tokenmetry"):
            assert price("my-own-model-1", Usage(1_000, 1_000), provider="openai") is None
            assert price("my-own-model-1", Usage(5, 5), provider="openai") is None
    finally:
        unsubscribe()
    assert unpriced_count() == before + 2
    assert unpriced_models()["my-own-model-1"] == before_model + 2
    assert seen == [("my-own-model-1", "openai")] * 2
    warnings = [r for r in caplog.records if "my-own-model-1" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


def test_a_quote_does_not_count_as_unpriced(caplog: pytest.LogCaptureFixture) -> None:
    before = unpriced_count()
    with caplog.at_level(logging.WARNING, logger="tokenmetry"):
        assert price("my-own-model-4", Usage(1, 1), record_unpriced=False) is None
    assert unpriced_count() == before and "my-own-model-4" not in caplog.text


def test_unknown_model_is_resolved_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = pricing._build_entry

    def counting_build(model: str, provider: str | None) -> Any:
        calls.append(model)
        return real(model, provider)

    monkeypatch.setattr(pricing, "_build_entry", counting_build)
    for _ in range(5):
        price("my-own-model-2", Usage(1, 1))
        price("gpt-4o", Usage(1, 1))
    assert calls == ["my-own-model-2", "gpt-4o"]


def test_a_failing_hook_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def broken(model: str, provider: str | None) -> None:
        raise RuntimeError("hook bug")

    unsubscribe = on_unpriced(broken)
    try:
        with caplog.at_level(logging.ERROR, logger="tokenmetry"):
            assert price("my-own-model-3", Usage(1, 1)) is None
    finally:
        unsubscribe()
    assert "hook bug" in caplog.text


# ------------------------------------------------------------------------------------------- overrides

def test_override_for_an_unknown_model() -> None:
    options = resolve({"price_overrides": {"my-finetune": {"input": "1", "output": "2"}}})
    cost = price("my-finetune", Usage(1_000_000, 500_000, cache_read_tokens=200_000), options=options)
    # uncached 800,000 x 1/M = 0.8; cache reads default to the input price: 200,000 x 1/M = 0.2;
    # output 500,000 x 2/M = 1.0
    assert parts(cost) == (D("2.0"), D("0.8"), D("1.0"), D("0.2"), D("0"))
    assert cost is not None and cost.source == "override" and cost.currency == "USD"


def test_override_replaces_genai_prices_key_by_key() -> None:
    # gpt-4o with only cache_read overridden to $0.50/M: input $2.50/M and output $10/M stay
    options = resolve({"price_overrides": {"gpt-4o": {"cache_read": "0.5"}}})
    usage = Usage(input_tokens=10_000, output_tokens=2_000, cache_read_tokens=4_000)
    cost = price("gpt-4o-2024-11-20", usage, options=options)  # the override follows dated ids
    # 6,000 x 2.50/M = 0.015; 4,000 x 0.50/M = 0.002; 2,000 x 10/M = 0.02
    assert parts(cost) == (D("0.037"), D("0.015"), D("0.02"), D("0.002"), D("0"))
    assert cost is not None and cost.source == "override"
    assert price("gpt-4o-mini", usage, options=options).source == "genai-prices"  # type: ignore[union-attr]


def test_currency_rate() -> None:
    # gpt-4o as in test_openai_cached_input: $0.04, at 0.92 EUR per USD = 0.0368 EUR
    options = resolve({"currency": "EUR", "currency_rates": {"EUR": "0.92"}})
    cost = price("gpt-4o", Usage(10_000, 2_000, cache_read_tokens=4_000), options=options)
    # parts: 0.015 x 0.92 = 0.0138; 0.02 x 0.92 = 0.0184; 0.005 x 0.92 = 0.0046
    assert parts(cost) == (D("0.0368"), D("0.0138"), D("0.0184"), D("0.0046"), D("0"))
    assert cost is not None and cost.currency == "EUR"


def test_overrides_are_in_the_configured_currency() -> None:
    options = resolve({"currency": "EUR", "currency_rates": {"EUR": "0.92"},
                       "price_overrides": {"my-finetune": {"input": "1", "output": "2"}}})
    cost = price("my-finetune", Usage(1_000_000, 500_000), options=options)
    assert parts(cost)[0] == D("2.0") and cost is not None and cost.currency == "EUR"  # not converted


def test_a_missing_rate_is_unpriced_not_wrong(caplog: pytest.LogCaptureFixture) -> None:
    before = unpriced_count()
    options = resolve({"currency": "GBP"})
    with caplog.at_level(logging.WARNING, logger="tokenmetry"):
        assert price("gpt-4o", Usage(1_000, 1_000), options=options) is None
    assert unpriced_count() == before + 1
    assert "GBP" in caplog.text


# ------------------------------------------------------------------------------------------- misc

def test_bad_arguments() -> None:
    with pytest.raises(PricingError, match="usage must be a tokenmetry.Usage") as caught:
        price("gpt-4o", {"input_tokens": 1})  # type: ignore[arg-type]
    assert isinstance(caught.value, TokenmetryError) and isinstance(caught.value, ValueError)
    with pytest.raises(PricingError, match="model must be a str"):
        price(None, Usage(1, 1))  # type: ignore[arg-type]


def test_inconsistent_counts_never_bill_negative_input() -> None:
    # cache reads larger than the prompt (bad vendor data): uncached input is 0, not negative
    cost = price("gpt-4o", Usage(input_tokens=100, output_tokens=0, cache_read_tokens=400))
    assert parts(cost) == (D("0.0005"), D("0"), D("0"), D("0.0005"), D("0"))  # 400 x 1.25/M


def call_like(usage: Usage, **facts: Any) -> SimpleNamespace:
    """What price_usage_of_call reads of the lifecycle's Call: its facts and token fields."""
    return SimpleNamespace(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                           cache_read_tokens=usage.cache_read_tokens, cache_write_tokens=usage.cache_write_tokens,
                           reasoning_tokens=usage.reasoning_tokens, **facts)


def test_price_usage_of_call_prefers_the_response_model() -> None:
    call = call_like(Usage(10_000, 2_000, 4_000), provider="azure.ai.openai", request_model="my-deployment",
                     response_model="gpt-4o-2024-11-20", cache_write_1h_tokens=None)
    assert parts(pricing.price_usage_of_call(call, resolve({})))[0] == D("0.04")
    anthropic_call = call_like(Usage(50_000, 1_000, 20_000, 10_000), provider="anthropic",
                               request_model="claude-sonnet-4-5", response_model=None, cache_write_1h_tokens=4_000)
    assert parts(pricing.price_usage_of_call(anthropic_call, resolve({})))[0] == D("0.1275")
    before = unpriced_count()
    unknown = call_like(Usage(1, 1), provider="openai", request_model="mystery", response_model="mystery-0001",
                        cache_write_1h_tokens=None)
    assert pricing.price_usage_of_call(unknown, resolve({})) is None
    assert unpriced_count() == before + 1  # one call, one count


def test_pricing_data_version() -> None:
    version = pricing.pricing_data_version()
    assert version is not None and version.startswith("genai-prices ")


def test_import_is_lazy_and_the_updater_stays_off() -> None:
    code = ("import sys, tokenmetry.pricing as p; assert 'genai_prices' not in sys.modules; "
            "from tokenmetry.usage import Usage; p.price('gpt-4o', Usage(1, 1)); "
            "import genai_prices.update_prices as u; assert u._shared_updater.ref_count == 0; "
            "import threading; assert not [t for t in threading.enumerate() if 'price' in t.name.lower()]")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(pricing.__file__).parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_agrees_with_genai_prices_calc_price() -> None:
    """A sample of models (flat, tiered, conditional, per-request, reasoning-priced) and random usages."""
    import genai_prices

    rng = random.Random(7)
    models = [("openai", "gpt-4o"), ("openai", "o3"), ("openai", "gpt-5"), ("openai", "gpt-4.1-mini"),
              ("anthropic", "claude-sonnet-4-5"), ("anthropic", "claude-opus-4-1"),
              ("anthropic", "claude-3-5-haiku"), ("google", "gemini-2.5-pro"), ("google", "gemini-2.5-flash"),
              ("aws", "anthropic.claude-3-haiku-20240307-v1:0"), ("deepseek", "deepseek-chat"),
              ("perplexity", "sonar"), ("perplexity", "sonar-deep-research"), ("x-ai", "grok-4"),
              ("mistral", "mistral-large-latest")]
    checked = 0
    for provider_id, model in models:
        for _ in range(20):
            input_tokens = rng.choice([0, 900, 199_999, 200_000, 200_001, 272_001, 400_000])
            cache_read = rng.randint(0, input_tokens // 3)
            cache_write = rng.randint(0, input_tokens // 3)
            cache_write_1h = rng.randint(0, cache_write)
            output_tokens = rng.randint(0, 4_000)
            reasoning = rng.randint(0, output_tokens)
            expected = genai_prices.calc_price(
                genai_prices.Usage(input_tokens=input_tokens, output_tokens=output_tokens,
                                   cache_read_tokens=cache_read, cache_write_tokens=cache_write,
                                   cache_write_1h_tokens=cache_write_1h, output_reasoning_tokens=reasoning),
                model, provider_id=provider_id, genai_request_timestamp=NOV_2026).total_price
            mine = price(model, Usage(input_tokens, output_tokens, cache_read, cache_write, reasoning),
                         provider=provider_id, cache_write_1h_tokens=cache_write_1h, at=NOV_2026)
            assert mine is not None and mine.amount == expected, (model, input_tokens, output_tokens)
            checked += 1
    assert checked == 20 * len(models)


def test_summed_counts_price_to_the_sum_of_the_calls_costs() -> None:
    """A session prices the counts its calls add up per quote: the same amounts, to the last digit
    and the same exponent, as pricing every call and adding the costs (tiered, cached, 1-hour cache
    writes, reasoning billed apart, per-request fees)."""
    rng = random.Random(11)
    models = [("openai", "gpt-4o"), ("openai", "o3"), ("anthropic", "claude-sonnet-4-5"),
              ("google", "gemini-2.5-pro"), ("perplexity", "sonar-deep-research"), ("deepseek", "deepseek-chat")]
    options = resolve({})
    for provider, model in models:
        calls = []
        for _ in range(25):
            input_tokens = rng.choice([0, 900, 150_000, 200_001, 300_000])
            cache_read = rng.randint(0, input_tokens // 3)
            cache_write = rng.choice([0, rng.randint(0, input_tokens // 3)])
            output_tokens = rng.choice([0, rng.randint(1, 4_000)])
            calls.append(SimpleNamespace(
                provider=provider, response_model=model, request_model=model, price_context=None,
                input_tokens=input_tokens, output_tokens=output_tokens, cache_read_tokens=cache_read,
                cache_write_tokens=cache_write, cache_write_1h_tokens=rng.randint(0, cache_write),
                reasoning_tokens=rng.choice([None, 0, rng.randint(0, output_tokens)])))
        # bad vendor data, cache reads above the prompt: clipped per call, never summed negative
        calls.append(SimpleNamespace(**{**vars(calls[-1]), "input_tokens": 100, "cache_read_tokens": 400}))
        billed: dict[Any, list[list[int] | None]] = {}
        expected = None
        for call in calls:
            quote = pricing.quote_call(call, options)
            assert quote is not None, model
            cost = quote.cost_of_call(call)
            assert cost == pricing.price_usage_of_call(call, options)
            expected = cost if expected is None else expected + cost
            apart = quote.apart(call.reasoning_tokens)
            groups = billed.setdefault(quote, [None, None])
            if groups[apart] is None:
                groups[apart] = [0] * 7
            quote.add_call(groups[apart], apart, call)
        total = None
        for quote, groups in billed.items():
            for apart, counts in enumerate(groups):
                if counts is not None:
                    part = quote.cost(counts, bool(apart))
                    total = part if total is None else total + part
        assert total == expected, model
        assert total is not None and expected is not None
        assert total.to_dict() == expected.to_dict(), model  # the same digits, not only the same value


def test_a_session_bills_runs_of_calls_exactly_as_the_calls_cost() -> None:
    """Calls reach a session in runs summed in one pass (rate.CallSums): the usual calls of the run's
    first quote as plain sums, any other (another quote, 1-hour cache writes, reasoning billed apart,
    cache counts above the prompt) one by one. The session's cost is the sum of the calls' costs, to
    the digit, however the calls are split into runs."""
    from tokenmetry.rate import CallSums
    from tokenmetry.session import Session

    rng = random.Random(5)
    options = resolve({})
    models = [("openai", "gpt-4o"), ("openai", "o3"), ("anthropic", "claude-sonnet-4-5"),
              ("google", "gemini-2.5-pro"), ("perplexity", "sonar-deep-research")]
    calls = []
    for index in range(300):
        provider, model = models[0] if index % 3 else rng.choice(models)  # mostly one quote, as in a run
        input_tokens = rng.choice([900, 1149, 150_000, 250_000])
        cache_read = rng.choice([None, 0, rng.randint(0, input_tokens // 2)])
        cache_write = rng.choice([None, None, rng.randint(0, input_tokens // 3)])
        output_tokens = rng.randint(0, 4_000)
        call = SimpleNamespace(
            provider=provider, response_model=model, request_model=model, price_context=None,
            input_tokens=input_tokens, output_tokens=output_tokens, cache_read_tokens=cache_read,
            cache_write_tokens=cache_write, reasoning_tokens=rng.choice([None, 0, rng.randint(0, output_tokens)]),
            cache_write_1h_tokens=rng.choice([None] * 5 + [rng.randint(0, cache_write or 10)]),
            tool_tokens=None, error_type=None, retries=0, turn=None, duration_s=0.5, started_at=1_000_000.0,
            operation="chat", response_id=f"id-{index}", usage_source="provider", stream=False, finish_reasons=(),
            server_address=None, time_to_first_chunk_s=None, throttle_wait_s=0.0, retry_wait_s=0.0)
        if index % 37 == 0:  # bad vendor data: cache reads above the prompt (billed as no uncached input)
            call.cache_read_tokens, call.cache_write_tokens, call.cache_write_1h_tokens = input_tokens + 1, None, None
        call.quote = pricing.quote_call(call, options)
        assert call.quote is not None, model
        calls.append(call)
    expected = None
    for call in calls:
        cost = call.quote.cost_of_call(call)
        expected = cost if expected is None else expected + cost
    for split in range(3):
        session = Session(f"runs-{split}")
        start = 0
        while start < len(calls):
            end = min(len(calls), start + rng.choice([1, 5, 16, 40]))
            run = calls[start:end]
            session._add_calls(run, CallSums(run))
            start = end
        assert session._unpriced_calls == 0
        total = session._cost()
        assert total is not None and expected is not None
        assert total == expected
        assert total.to_dict() == expected.to_dict()  # the same digits, not only the same value
        records = session.calls  # (each record priced from its usage and quote)
        assert [record.response_id for record in records] == [call.response_id for call in calls]
        assert sum((record.cost.amount for record in records), D(0)) == expected.amount  # type: ignore[union-attr]


def test_a_quote_of_prices_that_change_on_a_date_holds_until_that_date(monkeypatch: pytest.MonkeyPatch) -> None:
    """o3 changed price on 2025-06-10: a call made before that date is quoted at the old price and
    the quote is kept for the next calls until the date comes; then it is resolved again. A price
    that depends on the time of day (deepseek-chat) is resolved for every call."""
    change = datetime(2025, 6, 10, tzinfo=UTC).timestamp()
    clock = [change - 3600.0]
    monkeypatch.setattr(pricing.time, "time", lambda: clock[0])
    usd = resolve({})
    call = SimpleNamespace(provider="openai", response_model="o3", request_model="o3", price_context=None,
                           input_tokens=1_000, output_tokens=10, cache_read_tokens=None, cache_write_tokens=None,
                           reasoning_tokens=None, cache_write_1h_tokens=None)
    before, constant = pricing.quote_and_constancy(call, usd)
    assert before is not None and constant and before.prices[0] == D("0.00001")  # $10 per million
    resolved = []
    original = pricing._resolve_quote
    monkeypatch.setattr(pricing, "_resolve_quote", lambda *args: resolved.append(args) or original(*args))
    clock[0] = change - 1.0
    assert pricing.quote_and_constancy(call, usd) == (before, True) and resolved == []  # kept
    clock[0] = change + 1.0
    after, constant = pricing.quote_and_constancy(call, usd)
    assert after is not None and constant and after.prices[0] == D("0.000002") and len(resolved) == 1
    deepseek = SimpleNamespace(**{**vars(call), "provider": "deepseek", "response_model": "deepseek-chat",
                                  "request_model": "deepseek-chat"})
    assert pricing.quote_and_constancy(deepseek, usd)[1] is False
    assert pricing.quote_and_constancy(deepseek, usd)[1] is False and len(resolved) == 3


def test_a_quote_is_resolved_once_per_model_pair_and_options() -> None:
    usage_call = SimpleNamespace(provider="openai", response_model="gpt-4o-2024-11-20", request_model="gpt-4o",
                                 price_context=None, input_tokens=1_000, output_tokens=10, cache_read_tokens=None,
                                 cache_write_tokens=None, reasoning_tokens=None, cache_write_1h_tokens=None)
    usd = resolve({})
    first = pricing.quote_call(usage_call, usd)
    assert first is not None and pricing.quote_call(usage_call, usd) is first
    euro = resolve({"currency": "EUR", "currency_rates": {"EUR": "0.5"}})
    in_euro = pricing.quote_call(usage_call, euro)
    assert in_euro is not None and in_euro.currency == "EUR" and in_euro.prices[0] == first.prices[0] * D("0.5")
    # a prompt-length tier: the quote follows the call's prompt, every time
    tiered = SimpleNamespace(**{**vars(usage_call), "provider": "gcp.gemini", "response_model": "gemini-2.5-pro",
                                "request_model": "gemini-2.5-pro"})
    low = pricing.quote_call(tiered, usd)
    tiered.input_tokens = 250_000
    high = pricing.quote_call(tiered, usd)
    assert low is not None and high is not None and high.prices[0] == 2 * low.prices[0]
    # an unknown model is counted as unpriced on every call, resolved or cached
    unknown = SimpleNamespace(**{**vars(usage_call), "response_model": "mystery-9", "request_model": "mystery"})
    before = unpriced_count()
    assert pricing.quote_call(unknown, usd) is None and pricing.quote_call(unknown, usd) is None
    assert unpriced_count() == before + 2
