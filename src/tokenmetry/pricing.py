"""Prices: genai-prices' bundled data, resolved once per model, with the arithmetic done here in Decimal.

``genai_prices.calc_price`` costs 250-300 µs a call and its import ~0.4 s, so this module imports it on
first use, resolves each ``(model, provider)`` once into per-token ``Decimal`` prices (an unknown
model is cached too), and then prices a usage in a few microseconds. genai-prices' updater is never
started here: prices come from the data installed with the package (if the application itself runs
``genai_prices.UpdatePrices``, models resolved after its update see the new data).

Billing rules (the vendors' own, as genai-prices models them):

* ``usage.input_tokens`` holds every prompt token; ``cache_read_tokens`` and ``cache_write_tokens``
  are parts of it. Uncached input = input - cache_read - cache_write, at the input price.
* Cache writes: Anthropic bills 1-hour cache writes above 5-minute ones. ``Usage`` has one
  ``cache_write_tokens`` field (Anthropic's ``cache_creation_input_tokens``, both TTLs), so the 1-hour
  part is passed as ``cache_write_1h_tokens=`` (Anthropic's ``cache_creation.ephemeral_1h_input_tokens``);
  the rest of the cache writes take the 5-minute price.
* Reasoning tokens are part of ``output_tokens`` and billed at the output price by OpenAI, Anthropic
  and Google; a model with its own reasoning price in the data (Perplexity's deep research) gets it.
* A price missing from the data falls back as genai-prices does: cache reads and writes at the input
  price, 1-hour writes at the cache-write price, reasoning at the output price.
* Prompt-length tiers are cliffs: when the whole prompt (``input_tokens``) is over a tier's start,
  every token of the call, output included, takes that tier's price (Gemini 2.5 Pro over 200k).
* Date-dependent prices (price changes, DeepSeek's off-peak hours) are picked at call time.

Overrides (``Options.price_overrides``: ``{model: {input, output, cache_read, cache_write,
cache_write_1h, reasoning}}`` per million tokens) are in ``Options.currency`` — USD unless configured
otherwise — and replace genai-prices' price key by key; ``Cost.source`` is then ``"override"``.
genai-prices' USD prices are converted with ``Options.currency_rates`` (units of currency per USD).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from datetime import time as day_time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .errors import TokenmetryError
from .usage import Cost, Usage

if TYPE_CHECKING:
    from .config import Options

__all__ = [
    "PricingError",
    "Quote",
    "clear_cache",
    "on_unpriced",
    "price",
    "price_info",
    "price_usage_of_call",
    "pricing_data_version",
    "quote_and_constancy",
    "quote_call",
    "unpriced_count",
    "unpriced_models",
]

logger = logging.getLogger("tokenmetry")


class PricingError(TokenmetryError, ValueError):
    """Bad arguments to :func:`price` (also a ``ValueError``)."""


_ZERO = Decimal(0)

# Slots of a price sheet, in this order everywhere below.
_INPUT, _OUTPUT, _CACHE_READ, _CACHE_WRITE, _CACHE_WRITE_1H, _REASONING, _REQUEST = range(7)
# genai-prices' price keys for the slots, and the power of ten that turns each into a per-unit price
_GENAI_KEYS = ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok", "cache_write_1h_mtok",
               "output_reasoning_mtok", "requests_kcount")
_GENAI_EXPONENTS = (-6, -6, -6, -6, -6, -6, -3)
# Options.price_overrides keys for the same slots (per million tokens); no per-request override
_OVERRIDE_KEYS = ("input", "output", "cache_read", "cache_write", "cache_write_1h", "reasoning")

# tokenmetry provider names (gen_ai.provider.name values) -> genai-prices provider ids
_PROVIDER_IDS = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gcp.gemini": "google",
    "gcp.vertex_ai": "google",
    "gcp.gen_ai": "google",
    "google": "google",
    "gemini": "google",
    "vertex_ai": "google",
    "azure.ai.openai": "azure",
    "azure.ai.inference": "azure",
    "azure": "azure",
    "aws.bedrock": "aws",
    "bedrock": "aws",
    "aws": "aws",
    "deepseek": "deepseek",
    "groq": "groq",
    "mistral_ai": "mistral",
    "mistral": "mistral",
    "x_ai": "x-ai",
    "xai": "x-ai",
    "x-ai": "x-ai",
    "perplexity": "perplexity",
    "cohere": "cohere",
    "together_ai": "together",
    "together": "together",
    "fireworks": "fireworks",
    "fireworks_ai": "fireworks",
    "openrouter": "openrouter",
    "cerebras": "cerebras",
    "moonshot": "moonshotai",
    "moonshotai": "moonshotai",
}
# Where to look for a model when its provider is unknown and genai-prices' own detection fails
# (e.g. "text-embedding-3-small", which no provider's model pattern claims)
_FALLBACK_PROVIDERS = ("openai", "anthropic", "google")


# --------------------------------------------------------------------------------------------------
# Compiled prices
# --------------------------------------------------------------------------------------------------

class _Tiered:
    """A price that depends on the prompt length: ``tiers`` are ``(start, price)``, highest first."""

    __slots__ = ("base", "tiers")

    def __init__(self, base: Decimal, tiers: tuple[tuple[int, Decimal], ...]) -> None:
        self.base = base
        self.tiers = tiers

    def at(self, input_tokens: int) -> Decimal:
        for start, tier_price in self.tiers:
            if input_tokens > start:  # a cliff: past the start, every token takes the tier price
                return tier_price
        return self.base

    def scaled(self, factor: Decimal) -> _Tiered:
        return _Tiered(self.base * factor, tuple((start, p * factor) for start, p in self.tiers))

    def __repr__(self) -> str:
        return f"_Tiered({self.base}, {self.tiers})"


_Price = Decimal | _Tiered | None
_Raw = tuple[_Price, ...]  # 7 slots, per unit (token or request), None where no price is given


class _Sheet:
    """Seven filled slots (only ``_REQUEST`` may be None), per token, in one currency.

    Tiered slots are flattened once, here: ``levels`` holds, for each tier start (highest first), the
    seven flat prices in force above it, so pricing a call is one comparison per tier, not a pass
    over the slots.
    """

    __slots__ = ("levels", "prices", "tiered")

    def __init__(self, prices: _Raw) -> None:
        self.prices = prices
        starts = sorted({start for p in prices if type(p) is _Tiered for start, _ in p.tiers}, reverse=True)
        self.tiered = bool(starts)
        # prices are a step function of the prompt length: constant above each start up to the next
        self.levels = (*((start, self._flat(start + 1)) for start in starts), (-1, self._flat(0)))

    def _flat(self, input_tokens: int) -> tuple[Decimal | None, ...]:
        return tuple(p.at(input_tokens) if type(p) is _Tiered else p for p in self.prices)  # type: ignore[misc]

    def at(self, input_tokens: int) -> tuple[Decimal | None, ...]:
        for start, flat in self.levels:
            if input_tokens > start:
                return flat
        return self.levels[-1][1]  # a negative token count: base prices


def _per_unit(value: Any, exponent: int) -> _Price:
    if value is None:
        return None
    if isinstance(value, Decimal):
        return value.scaleb(exponent)  # exact: only the exponent moves
    tiers = getattr(value, "tiers", None)
    if tiers is not None:  # genai_prices.types.TieredPrices
        return _Tiered(value.base.scaleb(exponent),
                       tuple(sorted(((t.start, t.price.scaleb(exponent)) for t in tiers), reverse=True)))
    return Decimal(str(value)).scaleb(exponent)


def _raw_from_genai(model_price: Any) -> _Raw:
    values = model_price.__dict__
    return tuple(_per_unit(values.get(key), exponent)
                 for key, exponent in zip(_GENAI_KEYS, _GENAI_EXPONENTS, strict=True))


def _raw_from_override(override: Mapping[str, Any]) -> _Raw:
    return (*(_per_unit(None if override.get(key) is None else Decimal(str(override[key])), -6)
              for key in _OVERRIDE_KEYS), None)


def _scaled(raw: _Raw, factor: Decimal) -> _Raw:
    return tuple(None if p is None else (p.scaled(factor) if type(p) is _Tiered else p * factor)  # type: ignore[operator]
                 for p in raw)


def _filled(raw: _Raw) -> _Sheet:
    input_price, output_price, cache_read, cache_write, cache_write_1h, reasoning, request = raw
    # genai-prices' fallbacks: an unpriced part is billed inside its parent unit
    input_price = _ZERO if input_price is None else input_price
    output_price = _ZERO if output_price is None else output_price
    cache_read = input_price if cache_read is None else cache_read
    cache_write = input_price if cache_write is None else cache_write
    cache_write_1h = cache_write if cache_write_1h is None else cache_write_1h
    reasoning = output_price if reasoning is None else reasoning
    return _Sheet((input_price, output_price, cache_read, cache_write, cache_write_1h, reasoning, request))


# A constraint compiled to plain numbers: ("date", start_epoch) | ("tod", start_s, end_s) | ("obj", c)
_Selector = tuple[Any, ...] | None
_DAY = 86400


def _seconds_of_day_utc(value: day_time) -> int:
    if value.tzinfo is not None:  # naive times are UTC, as in genai-prices
        value = datetime.combine(date(1970, 1, 1), value).astimezone(UTC).time()
    return value.hour * 3600 + value.minute * 60 + value.second


def _selector(constraint: Any) -> _Selector:
    if constraint is None:
        return None
    start_date = getattr(constraint, "start_date", None)
    if isinstance(start_date, date):
        return ("date", datetime.combine(start_date, day_time(0), tzinfo=UTC).timestamp())
    start_time = getattr(constraint, "start_time", None)
    end_time = getattr(constraint, "end_time", None)
    if isinstance(start_time, day_time) and isinstance(end_time, day_time):
        return ("tod", _seconds_of_day_utc(start_time), _seconds_of_day_utc(end_time))
    return ("obj", constraint)  # a constraint kind this module does not know: ask it


def _active(selector: tuple[Any, ...], now: float) -> bool:
    kind = selector[0]
    if kind == "date":
        return now >= selector[1]
    if kind == "tod":
        second = now % _DAY
        start, end = selector[1], selector[2]
        return (second >= start or second < end) if end < start else start <= second < end
    return bool(selector[1].active(datetime.fromtimestamp(now, UTC)))


class _Entry:
    """One ``(model, provider)`` resolved against genai-prices, or known to be unknown."""

    __slots__ = ("known", "model", "model_id", "provider_id", "ref", "selectors", "sheets", "standard", "usd",
                 "variants")

    def __init__(self, model: str, ref: str) -> None:
        self.model = model
        self.ref = ref
        self.model_id: str | None = None
        self.provider_id: str | None = None
        self.known = False
        self.standard: tuple[_Raw, ...] = ()
        self.selectors: tuple[_Selector, ...] | None = None  # None: one price, always in force
        self.usd: tuple[_Sheet, ...] = ()  # standard prices, filled, in USD: the fast path
        self.variants: tuple[tuple[tuple[tuple[str, str], ...], _Selector, _Raw], ...] = ()
        self.sheets: dict[tuple[Any, ...], tuple[Any, _Sheet, str]] = {}

    def select(self, now: float) -> int:
        """Index of the standard price in force at ``now``: the last whose constraint holds."""
        selectors = self.selectors
        if selectors is None:
            return 0
        for index in range(len(selectors) - 1, -1, -1):
            selector = selectors[index]
            if selector is None:
                return index
            if selector[0] == "date":  # the usual kind, checked inline
                if now >= selector[1]:
                    return index
            elif _active(selector, now):
                return index
        return 0

    def stable_until(self, now: float) -> float:
        """Until when the standard price in force at ``now`` stays in force: the next date a price
        changes on (``inf``: never), or ``now`` itself when a price depends on the time of day or on
        a constraint this module does not know (then every call asks)."""
        selectors = self.selectors
        if selectors is None:
            return math.inf
        until = math.inf
        for selector in selectors:
            if selector is None:
                continue
            if selector[0] != "date":
                return now
            if now < selector[1] < until:
                until = selector[1]
        return until

    def variant_indexes(self, context: Mapping[str, str], now: float) -> tuple[int, ...]:
        matched: list[int] = []
        for index, (when, selector, _) in enumerate(self.variants):
            for key, value in when:  # the cheap test first
                if context.get(key) != value:
                    break
            else:
                if selector is None or _active(selector, now):
                    matched.append(index)
        return tuple(matched)


# --------------------------------------------------------------------------------------------------
# Resolution (slow path, once per model)
# --------------------------------------------------------------------------------------------------

_entries: dict[tuple[str, str | None], _Entry] = {}
_ENTRIES_MAX = 4096
_SHEETS_PER_ENTRY_MAX = 64
_resolve_lock = threading.RLock()


def _snapshot() -> Any:
    from genai_prices import data_snapshot  # ~0.4 s: only on the first price of the process

    return data_snapshot.get_snapshot()


_warming: threading.Thread | None = None


def warm_up() -> None:
    """Load the price data off the calling thread (once), so that the first priced call of the
    process does not wait for it: the lifecycle calls this when the first call begins, and the data
    is there by the time that call's response has come back."""
    global _warming
    with _resolve_lock:
        if _warming is not None:
            return
        _warming = threading.Thread(target=_warm, name="tokenmetry-price-data", daemon=True)
    _warming.start()


def _warm() -> None:
    try:
        _snapshot()
    except Exception:  # a broken install shows up, with its warning, on the first real price instead
        pass


def _normalised_ref(model: str) -> str:
    ref = model.strip().lower()
    if "models/" in ref:  # "models/gemini-2.5-flash", "projects/p/locations/l/publishers/google/models/..."
        ref = ref.rsplit("models/", 1)[1]
    if "/" in ref:  # a Bedrock ARN ".../inference-profile/us.anthropic...", "google/gemini-2.5-pro"
        ref = ref.rsplit("/", 1)[1]
    return ref


def _candidate_refs(model: str) -> list[str]:
    """The model as given first, then normalised forms genai-prices' matchers may know."""
    given = model.strip()
    ref = _normalised_ref(given)
    candidates = [given, ref]
    if "@" in ref:  # Vertex "gemini-2.0-flash@001"; Vertex Claude ids are tried whole first
        candidates.append(ref.split("@", 1)[0])
    stem = candidates[-1]
    if len(stem) > 4 and stem[-4] == "-" and stem[-3:].isdigit() and stem[-3] == "0":
        candidates.append(stem[:-4])  # Vertex stable versions: "gemini-1.5-pro-002"
    seen: set[str] = set()
    return [c for c in candidates if c and not (c in seen or seen.add(c))]  # type: ignore[func-returns-value]


def _provider_id(provider: str | None, snapshot: Any) -> str | None:
    if not provider:
        return None
    name = provider.strip().lower()
    mapped = _PROVIDER_IDS.get(name)
    if mapped is not None:
        return mapped
    from genai_prices.data_snapshot import find_provider_by_id

    found = find_provider_by_id(snapshot.providers, name)
    return None if found is None else found.id


def _find(snapshot: Any, ref: str, provider_id: str | None) -> tuple[Any, Any] | None:
    try:
        return snapshot.find_provider_model(ref, None, provider_id, None)  # type: ignore[no-any-return]
    except LookupError:
        return None


def _build_entry(model: str, provider: str | None) -> _Entry:
    entry = _Entry(model, _normalised_ref(model))
    if not model.strip():
        return entry
    snapshot = _snapshot()
    refs = _candidate_refs(model)
    provider_id = _provider_id(provider, snapshot)
    found = None
    # the named provider first (genai-prices follows its fallbacks, e.g. azure -> openai); then, for
    # proxies and OpenAI-compatible endpoints, the provider the model id itself points to
    for pid in ((provider_id, None) if provider_id is not None else (None,)):
        for ref in refs:
            found = _find(snapshot, ref, pid)
            if found is not None:
                break
        if found is not None:
            break
    if found is None:
        for pid in _FALLBACK_PROVIDERS:
            for ref in refs:
                found = _find(snapshot, ref, pid)
                if found is not None:
                    break
            if found is not None:
                break
    if found is None:
        return entry
    provider_info, model_info = found
    entry.known = True
    entry.model_id = model_info.id
    entry.provider_id = provider_info.id
    prices = model_info.prices
    if isinstance(prices, list):  # ConditionalPrice list: the last active one applies
        entry.standard = tuple(_raw_from_genai(conditional.prices) for conditional in prices)
        selectors = tuple(_selector(conditional.constraint) for conditional in prices)
        entry.selectors = None if len(selectors) == 1 and selectors[0] is None else selectors
    else:
        entry.standard = (_raw_from_genai(prices),)
    entry.usd = tuple(_filled(raw) for raw in entry.standard)
    # genai-prices applies request-context variants only to a provider's own models, not fallbacks
    if model_info.price_variants and any(m is model_info for m in provider_info.models):
        entry.variants = tuple(
            (tuple(variant.when.items()), _selector(variant.constraint), _raw_from_genai(variant.prices))
            for variant in model_info.price_variants)
    return entry


def _resolve(model: str, provider: str | None) -> _Entry:
    key = (model, provider)
    with _resolve_lock:
        entry = _entries.get(key)
        if entry is None:
            try:
                entry = _build_entry(model, provider)
            except ImportError:
                _warn_once(("import",), "tokenmetry: genai-prices is not installed; costs are unknown "
                           "(pip install 'tokenmetry[prices]')")
                entry = _Entry(model, _normalised_ref(model))
            if len(_entries) >= _ENTRIES_MAX:
                del _entries[next(iter(_entries))]  # oldest first; model ids are few in practice
            _entries[key] = entry
    return entry


# --------------------------------------------------------------------------------------------------
# Unpriced models: counted, warned once, reported to hooks
# --------------------------------------------------------------------------------------------------

_unpriced_lock = threading.Lock()
_unpriced_total = 0
_unpriced_by_model: dict[str, int] = {}
_UNPRICED_MODELS_MAX = 1000
_warned: set[tuple[Any, ...]] = set()
_unpriced_hooks: tuple[Callable[[str, str | None], Any], ...] = ()


def _warn_once(key: tuple[Any, ...], message: str, *args: Any) -> None:
    with _unpriced_lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning(message, *args)


def _note_unpriced(model: str, provider: str | None, reason: str) -> None:
    global _unpriced_total
    with _unpriced_lock:
        _unpriced_total += 1
        name = model if (model in _unpriced_by_model or len(_unpriced_by_model) < _UNPRICED_MODELS_MAX) \
            else "<other>"
        _unpriced_by_model[name] = _unpriced_by_model.get(name, 0) + 1
        hooks = _unpriced_hooks
    if reason == "unknown-model":
        _warn_once(("model", model), "tokenmetry: no price known for model %r (provider %r); its cost is "
                   "reported as unknown (None). Add it to price_overrides to price it.", model, provider)
    for hook in hooks:
        try:
            hook(model, provider)
        except Exception:  # a hook's bug must never reach the priced call
            logger.exception("tokenmetry: on_unpriced hook %r failed", hook)


def unpriced_count() -> int:
    """How many calls could not be priced (unknown model, or no rate for the configured currency)
    since the process started.

    >>> isinstance(unpriced_count(), int)
    True
    """
    from .pending import apply_pending

    apply_pending()  # calls not priced yet (see tokenmetry.pending) are counted first
    return _unpriced_total


def unpriced_models() -> dict[str, int]:
    """Unpriced calls per model name (at most 1,000 names; the rest are under ``"<other>"``)."""
    from .pending import apply_pending

    apply_pending()  # calls not priced yet (see tokenmetry.pending) are counted first
    with _unpriced_lock:
        return dict(_unpriced_by_model)


def on_unpriced(hook: Callable[[str, str | None], Any]) -> Callable[[], None]:
    """Call ``hook(model, provider)`` each time a call cannot be priced (the telemetry module turns
    it into a counter); returns a function that unsubscribes. A hook's exception is logged.

    >>> unsubscribe = on_unpriced(lambda model, provider: None)
    >>> unsubscribe()
    """
    global _unpriced_hooks
    if not callable(hook):
        raise PricingError(f"on_unpriced needs a callable, got {hook!r}")
    with _unpriced_lock:
        _unpriced_hooks = (*_unpriced_hooks, hook)

    def unsubscribe() -> None:
        global _unpriced_hooks
        with _unpriced_lock:
            _unpriced_hooks = tuple(h for h in _unpriced_hooks if h is not hook)

    return unsubscribe


# --------------------------------------------------------------------------------------------------
# Pricing a usage
# --------------------------------------------------------------------------------------------------

def _override_for(entry: _Entry, overrides: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any] | None:
    # the id as called, then normalised, then genai-prices' canonical id: an override for "gpt-4o"
    # also prices "gpt-4o-2024-11-20"
    override = overrides.get(entry.model)
    if override is None:
        override = overrides.get(entry.ref)
        if override is None and entry.model_id is not None:
            override = overrides.get(entry.model_id)
    return override


def _sheet(entry: _Entry, options: Options | None, context: Mapping[str, str] | None,
           at: float | None) -> tuple[_Sheet | None, str, str]:
    """(sheet, currency, source) for one call; sheet None (source = the reason) when unpriced."""
    if options is None:
        currency = "USD"
        override = None
    else:
        currency = options.currency
        overrides = options.price_overrides
        override = _override_for(entry, overrides) if overrides else None
    if not entry.known and override is None:
        return None, currency, "unknown-model"
    if entry.selectors is not None or context:
        now = time.time() if at is None else at
        index = entry.select(now)
    else:
        now = 0.0
        index = 0
    if override is None and currency == "USD" and not context:
        return entry.usd[index], "USD", "genai-prices"  # the common case: no dictionary work at all

    rate = None
    if currency != "USD" and options is not None:
        rate = options.currency_rates.get(currency)
    variants = entry.variant_indexes(context, now) if context and entry.variants else ()
    key = (index, variants, currency, rate, id(override))
    hit = entry.sheets.get(key)
    if hit is not None and hit[0] is override:  # the cached tuple holds override: its id is unique
        return hit[1], currency, hit[2]

    raw: _Raw | None = None
    if entry.known:
        raw = entry.standard[index]
        if variants:  # genai-prices: per price key, the first matching variant wins
            merged = list(raw)
            taken: set[int] = set()
            for variant_index in variants:
                for slot, value in enumerate(entry.variants[variant_index][2]):
                    if value is not None and slot not in taken:
                        merged[slot] = value
                        taken.add(slot)
            raw = tuple(merged)
        if currency != "USD":
            if rate is None:
                _warn_once(("rate", currency), "tokenmetry: no currency_rates entry for %s: costs from "
                           "genai-prices (USD) cannot be converted and are reported as unknown", currency)
                if override is None:
                    return None, currency, "no-currency-rate"
                raw = None  # the override alone, already in the configured currency
            else:
                raw = _scaled(raw, rate)
    source = "genai-prices"
    if override is not None:
        override_raw = _raw_from_override(override)
        raw = override_raw if raw is None else tuple(
            mine if mine is not None else theirs for mine, theirs in zip(override_raw, raw, strict=True))
        source = "override"
    assert raw is not None
    sheet = _filled(raw)
    if len(entry.sheets) >= _SHEETS_PER_ENTRY_MAX:
        entry.sheets.clear()
    entry.sheets[key] = (override, sheet, source)
    return sheet, currency, source


# --------------------------------------------------------------------------------------------------
# Quotes: the prices one call is billed at, and the arithmetic
# --------------------------------------------------------------------------------------------------

# What a cost is computed from, per quote: token (and request) counts, each billed at one price.
UNCACHED, CACHE_READ, CACHE_WRITE_5M, CACHE_WRITE_1H, OUTPUT, REASONING, REQUESTS = range(7)


class Quote:
    """The flat per-token prices a call is billed at (its tier picked), in one currency, with the
    source of the prices. Quotes are shared: every call billed at the same prices gets the same one,
    so a session can add up its calls' counts per quote and price the sums when it is read (the
    arithmetic is linear and exact in Decimal: the same amounts as pricing each call and adding).
    """

    __slots__ = ("prices", "currency", "source", "bills_reasoning")

    def __init__(self, prices: tuple[Any, ...], currency: str, source: str) -> None:
        self.prices = prices
        self.currency = currency
        self.source = source
        p_output, p_reasoning = prices[1], prices[5]
        # reasoning billed apart from the rest of the output (its own price in the data)
        self.bills_reasoning = p_reasoning is not p_output and p_reasoning != p_output

    def apart(self, reasoning_tokens: int | None) -> bool:
        """Whether a call with this many reasoning tokens has them billed apart from its output."""
        return bool(reasoning_tokens) and self.bills_reasoning

    def add_call(self, counts: list[int], apart: bool, call: Any, requests: int = 1) -> None:
        """Add one call's billed counts to ``counts`` (see :meth:`apart` for ``apart``). ``call`` has
        the token fields of the lifecycle's ``Call`` (``cache_write_1h_tokens`` may be absent)."""
        input_tokens = call.input_tokens
        output_tokens = call.output_tokens
        cache_read = call.cache_read_tokens or 0
        cache_write = call.cache_write_tokens or 0
        cache_write_1h = getattr(call, "cache_write_1h_tokens", None) or 0
        # the 1-hour part given without (or above) the total: it is the total
        if cache_write_1h > cache_write:
            cache_write = cache_write_1h
        # inconsistent counts from a vendor (cache above the prompt): never bill negative input
        uncached = input_tokens - cache_read - cache_write
        if uncached > 0:
            counts[UNCACHED] += uncached
        counts[CACHE_READ] += cache_read
        counts[CACHE_WRITE_5M] += cache_write - cache_write_1h
        counts[CACHE_WRITE_1H] += cache_write_1h
        if apart:
            reasoning = min(call.reasoning_tokens or 0, output_tokens)
            counts[OUTPUT] += output_tokens - reasoning
            counts[REASONING] += reasoning
        else:
            counts[OUTPUT] += output_tokens
        counts[REQUESTS] += requests

    @staticmethod
    def plain_counts(uncached: int, cache_read: int, cache_write: int, output: int, requests: int) -> list[int]:
        """The billed counts of calls summed without :meth:`add_call`: calls whose cache counts fit in
        their prompt, with no 1-hour cache write and no reasoning billed apart (then every count is
        billed as given, so the sums of their counts are what :meth:`add_call` would have added)."""
        return [uncached, cache_read, cache_write, 0, output, 0, requests]

    def cost(self, counts: list[int], apart: bool) -> Cost:
        """The cost of ``counts`` (one call's, or the sums of calls with the same ``apart``)."""
        prices: tuple[Any, ...] = self.prices  # filled: every slot but the per-request one is a Decimal
        p_input, p_output, p_cache_read, p_cache_write, p_cache_write_1h, p_reasoning, p_request = prices
        uncached, cache_read, cache_write_5m, cache_write_1h, output, reasoning, requests = counts
        input_cost: Decimal = p_input * uncached if uncached else _ZERO
        cache_read_cost: Decimal = p_cache_read * cache_read if cache_read else _ZERO
        cache_write_cost: Decimal = _ZERO
        if cache_write_5m or cache_write_1h:
            cache_write_cost = p_cache_write * cache_write_5m
            if cache_write_1h:
                cache_write_cost += p_cache_write_1h * cache_write_1h
        output_cost: Decimal
        if apart:
            output_cost = p_output * output + p_reasoning * reasoning
        else:
            output_cost = p_output * output if output else _ZERO
        amount = input_cost + cache_read_cost + cache_write_cost + output_cost
        if p_request is not None and requests:
            amount += p_request * requests  # per-request fees (Perplexity) are in amount only
        return Cost(amount, self.currency, input_cost, output_cost, cache_read_cost, cache_write_cost,
                    self.source)

    def cost_of_usage(self, usage: Usage, cache_write_1h_tokens: int | None = None) -> Cost:
        """The cost of one call's ``usage`` (and the 1-hour part of its cache writes)."""
        return self.cost_of_call(_Counted(usage, cache_write_1h_tokens))

    def cost_of_call(self, call: Any, requests: int = 1) -> Cost:
        """The cost of one call (the lifecycle's ``Call``, or any object with its token fields)."""
        apart = self.apart(call.reasoning_tokens)
        read = call.cache_read_tokens or 0
        written = call.cache_write_tokens or 0
        uncached = call.input_tokens - read - written
        if not apart and uncached >= 0 and not getattr(call, "cache_write_1h_tokens", None):
            # the usual call: every count billed as given (what add_call would count)
            return self.cost(self.plain_counts(uncached, read, written, call.output_tokens, requests), False)
        counts = [0, 0, 0, 0, 0, 0, 0]
        self.add_call(counts, apart, call, requests)
        return self.cost(counts, apart)

    def __repr__(self) -> str:
        return f"Quote({self.prices}, {self.currency!r}, {self.source!r})"


_quotes: dict[tuple[int, str, str], Quote] = {}
_QUOTES_MAX = 4096


def _quote(sheet: _Sheet, input_tokens: int, currency: str, source: str) -> Quote:
    """The shared quote of ``sheet``'s prices at this prompt length."""
    prices = sheet.at(input_tokens) if sheet.tiered else sheet.prices
    key = (id(prices), currency, source)  # the quote holds ``prices``: its id cannot be reused meanwhile
    quote = _quotes.get(key)
    if quote is None:
        if len(_quotes) >= _QUOTES_MAX:
            _quotes.clear()
        quote = _quotes[key] = Quote(prices, currency, source)
    return quote


def _check(model: Any, usage: Any) -> None:
    if not isinstance(usage, Usage):  # subclasses pass
        raise PricingError(f"usage must be a tokenmetry.Usage, not {type(usage).__name__}")
    if not isinstance(model, str):  # str subclasses pass
        raise PricingError(f"model must be a str, not {type(model).__name__}")


def _timestamp(at: float | datetime | None) -> float | None:
    if at is None or isinstance(at, float):
        return at
    if isinstance(at, datetime):
        return (at if at.tzinfo is not None else at.replace(tzinfo=UTC)).timestamp()
    if isinstance(at, int):
        return float(at)
    raise PricingError(f"at must be epoch seconds or a datetime, not {type(at).__name__}")


class _Counted:
    """A ``Usage`` and its 1-hour cache-write part, read as :meth:`Quote.add_call` reads a call."""

    __slots__ = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                 "reasoning_tokens", "cache_write_1h_tokens")

    def __init__(self, usage: Usage, cache_write_1h_tokens: int | None) -> None:
        self.input_tokens = usage.input_tokens
        self.output_tokens = usage.output_tokens
        self.cache_read_tokens = usage.cache_read_tokens
        self.cache_write_tokens = usage.cache_write_tokens
        self.reasoning_tokens = usage.reasoning_tokens
        self.cache_write_1h_tokens = cache_write_1h_tokens


def price(model: str, usage: Usage, *, provider: str | None = None, options: Options | None = None,
          cache_write_1h_tokens: int | None = None, price_context: Mapping[str, str] | None = None,
          requests: int = 1, at: float | datetime | None = None, record_unpriced: bool = True) -> Cost | None:
    """The cost of ``usage`` on ``model``, or ``None`` when no price is known (never a silent 0).

    ``provider`` is a tokenmetry provider name (``"openai"``, ``"anthropic"``, ``"gcp.gemini"``,
    ``"gcp.vertex_ai"``, ``"azure.ai.openai"``, ``"aws.bedrock"``, ``"deepseek"``, ...) or a
    genai-prices provider id; without it the provider is inferred from the model id. Dated ids
    (``gpt-4o-2024-11-20``), ``models/``/``publishers/google/models/`` refs, Vertex (``@``) and
    Bedrock (``anthropic.claude-...-v1:0``) ids are matched. ``options`` supplies the currency, rates and
    overrides (defaults: USD, none). ``cache_write_1h_tokens`` is the 1-hour-TTL part of
    ``usage.cache_write_tokens``; ``price_context`` selects genai-prices' price variants (e.g.
    ``{"service_tier": "flex"}``, ``{"processing": "batch"}``); ``requests`` counts per-request fees;
    ``at`` prices as of another time (epoch seconds or datetime) for date-dependent prices.
    ``record_unpriced=False`` is for quotes that are not calls (a budget's pre-call estimate): an
    unknown model then returns ``None`` without counting, hooks or warning.

    Parts: ``input`` is the uncached input, ``cache_read``/``cache_write`` the cached parts (both TTLs),
    ``output`` includes reasoning. An unpriced call is counted (:func:`unpriced_count`), reported to
    :func:`on_unpriced` hooks and logged once per model at WARNING.

    >>> cost = price("gpt-4o-2024-11-20", Usage(input_tokens=1_000, output_tokens=100))
    >>> cost.amount, cost.source
    (Decimal('0.0035000'), 'genai-prices')
    >>> price("no-such-model", Usage(10, 10)) is None
    True
    """
    if type(usage) is not Usage or type(model) is not str:
        _check(model, usage)
    entry = _entries.get((model, provider))
    if entry is None:
        entry = _resolve(model, provider)
    if (entry.known and not price_context and at is None
            and (options is None or (options.currency == "USD" and not options.price_overrides))):
        # the common case, inlined: USD list prices, nothing to merge
        usd_sheet = entry.usd[0] if entry.selectors is None else entry.usd[entry.select(time.time())]
        return _quote(usd_sheet, usage.input_tokens, "USD", "genai-prices").cost_of_call(
            _Counted(usage, cache_write_1h_tokens), requests)
    sheet, currency, source = _sheet(entry, options, price_context,
                                     None if at is None else _timestamp(at))
    if sheet is None:
        if record_unpriced:
            _note_unpriced(model, provider, source)
        return None
    return _quote(sheet, usage.input_tokens, currency, source).cost_of_call(
        _Counted(usage, cache_write_1h_tokens), requests)


_Unpriced = tuple[str, str | None, str]  # _note_unpriced's arguments
# (provider, response model, request model) -> (the options it was resolved with, its quote, the
# unpriced note): calls whose quote depends on nothing else (no service tier, prompt-length tier or
# date-dependent price) are resolved once per model pair, not once per call
_constant_quotes: dict[tuple[str, str | None, str | None],
                       tuple[Any, Quote | None, _Unpriced | None, float]] = {}


def quote_call(call: Any, options: Options | None = None) -> Quote | None:
    """The quote a finished call (the lifecycle's ``Call``) is billed at: its response model first
    (dated, and the real model behind an Azure deployment name), then its request model, at the
    service tier the response reports (``price_context``). ``None``, counted as one unpriced call,
    when neither model is known."""
    return quote_and_constancy(call, options)[0]


def quote_and_constancy(call: Any, options: Options | None = None) -> tuple[Quote | None, bool]:
    """:func:`quote_call`, and whether its answer holds for every call of the same provider and
    models with no ``price_context`` under these options made now (no prompt-length tier, no price
    that depends on the time of day): a batch of such calls is quoted once. Prices that change on a
    date are resolved again once that date has come."""
    if options is None:
        from .call import recorder

        options = recorder.options
    provider = call.provider
    response_model = call.response_model
    request_model = call.request_model
    context = getattr(call, "price_context", None)
    key = (provider, response_model, request_model)
    if context is None:
        hit = _constant_quotes.get(key)
        if hit is not None and hit[0] is options and (hit[3] == math.inf or time.time() < hit[3]):
            if hit[2] is not None:
                _note_unpriced(*hit[2])
            return hit[1], True
    quote, unpriced, until = _resolve_quote(call.input_tokens, options, provider, response_model,
                                            request_model, context)
    if unpriced is not None:
        _note_unpriced(*unpriced)
    constant = context is None and until > time.time()
    if constant:
        if len(_constant_quotes) >= _QUOTES_MAX:
            _constant_quotes.clear()
        _constant_quotes[key] = (options, quote, unpriced, until)
    return quote, constant


def _resolve_quote(input_tokens: int, options: Options, provider: str, response_model: str | None,
                   request_model: str | None, context: Mapping[str, str] | None,
                   ) -> tuple[Quote | None, _Unpriced | None, float]:
    """(quote, unpriced note, until when the answer holds for every call of these models: ``inf``
    always, a date's timestamp until a price changes, 0.0 for this call only)."""
    for model in (response_model, request_model if request_model != response_model else None):
        if not model:
            continue
        entry = _entries.get((model, provider)) or _resolve(model, provider)
        sheet, currency, source = _sheet(entry, options, context, None)
        if sheet is not None:
            until = 0.0 if sheet.tiered else entry.stable_until(time.time())
            return _quote(sheet, input_tokens, currency, source), None, until
        if source != "unknown-model":
            return None, (model, provider, source), math.inf
    return None, (response_model or request_model or "", provider, "unknown-model"), math.inf


def price_usage_of_call(call: Any, options: Options | None = None) -> Cost | None:
    """Price a finished call (see :func:`quote_call`), or None when its models have no known price."""
    quote = quote_call(call, options)
    return None if quote is None else quote.cost_of_call(call)


def price_info(model: str, provider: str | None = None) -> dict[str, Any] | None:
    """What :func:`price` resolves ``model`` to, for diagnostics and the CLI: genai-prices' provider and
    model ids and the USD prices per million tokens now in force (tiers as ``[base, {start: price}]``).

    >>> price_info("gpt-4o-2024-11-20")["model_id"]
    'gpt-4o'
    """
    entry = _entries.get((model, provider)) or _resolve(model, provider)
    if not entry.known:
        return None
    sheet = entry.usd[entry.select(time.time())]

    def per_unit_to_listed(value: Any, exponent: int) -> Any:
        # back from per token (per request) to per million tokens (per thousand requests)
        if type(value) is _Tiered:
            return [str(value.base.scaleb(-exponent)),
                    {start: str(p.scaleb(-exponent)) for start, p in sorted(value.tiers)}]
        return None if value is None else str(value.scaleb(-exponent))

    names = ("input", "output", "cache_read", "cache_write", "cache_write_1h", "reasoning",
             "per_1k_requests")
    return {
        "provider_id": entry.provider_id,
        "model_id": entry.model_id,
        "prices_per_million": {name: per_unit_to_listed(value, exp) for name, value, exp in
                               zip(names, sheet.prices, _GENAI_EXPONENTS, strict=True)},
        "conditional": entry.selectors is not None,
        "variants": [dict(when) for when, _, _ in entry.variants],
    }


def pricing_data_version() -> str | None:
    """The genai-prices release whose bundled data prices calls (``None`` when not installed). Does
    not import genai-prices.

    >>> pricing_data_version().startswith("genai-prices ")
    True
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("genai-prices")
    except PackageNotFoundError:
        return None
    import sys

    snapshot_module = sys.modules.get("genai_prices.data_snapshot")
    custom = getattr(snapshot_module, "_custom_snapshot", None) if snapshot_module else None
    if custom is not None:
        return f"genai-prices {release} (prices updated {custom.timestamp:%Y-%m-%d %H:%M})"
    return f"genai-prices {release} (bundled data)"


def clear_cache() -> None:
    """Forget every resolved model and the once-per-model warnings (tests; after updating prices).
    :func:`unpriced_count` keeps counting: it is a process total, like a metric."""
    with _resolve_lock:
        _entries.clear()
        _quotes.clear()
        _constant_quotes.clear()
    with _unpriced_lock:
        _warned.clear()
