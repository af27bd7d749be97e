"""Options: keyword arguments > ``TOKENMETRY_*`` environment > TOML file > defaults.

One typed, immutable :class:`Options` object is resolved by :func:`resolve` and used everywhere.
A bad value raises :class:`~tokenmetry.errors.ConfigError` naming the source, the key, the value
and what is accepted.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["Options", "resolve", "CAPTURE_MODES", "EXPORTERS"]

CAPTURE_MODES = ("NO_CONTENT", "SPAN_ONLY", "EVENT_ONLY", "SPAN_AND_EVENT")
EXPORTERS = ("none", "otlp", "otlp-http", "otlp-grpc", "console", "prometheus")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Options:
    """Every setting tokenmetry reads. Build one with :func:`resolve`."""

    history_limit: int = 1000
    tpm_window_s: int = 60
    capture_content: str = "NO_CONTENT"
    inject_stream_usage: bool = True
    suppress_sdk_spans: bool = True
    exporter: str = "none"
    prometheus_port: int = 9464
    prometheus_host: str = "127.0.0.1"
    ledger: str | None = None
    currency: str = "USD"
    currency_rates: Mapping[str, Decimal] = field(default_factory=dict)
    price_overrides: Mapping[str, Mapping[str, Decimal]] = field(default_factory=dict)
    # objects, keyword arguments only
    tracer_provider: Any = None
    meter_provider: Any = None

    @property
    def capture_on_spans(self) -> bool:
        return self.capture_content in ("SPAN_ONLY", "SPAN_AND_EVENT")


def _int(minimum: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError
        number = int(value)
        if isinstance(value, float) and number != value:
            raise ValueError
        if number < minimum:
            raise ValueError
        return number

    return parse


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError


def _choice(choices: tuple[str, ...], upper: bool = False) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip()
        text = text.upper() if upper else text.lower()
        if text not in choices:
            raise ValueError
        return text

    return parse


def _capture(value: Any) -> str:
    # the GenAI switch also appears as a plain boolean in older instrumentations
    if isinstance(value, bool):
        return "SPAN_ONLY" if value else "NO_CONTENT"
    text = str(value).strip().upper()
    if text in ("TRUE", "1"):
        return "SPAN_ONLY"
    if text in ("FALSE", "0", ""):
        return "NO_CONTENT"
    if text not in CAPTURE_MODES:
        raise ValueError
    return text


def _opt_str(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError
    text = str(value).strip()
    return text or None


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError
    return value.strip()


def _currency(value: Any) -> str:
    text = _str(value).upper()
    if len(text) != 3 or not text.isalpha():
        raise ValueError
    return text


def _decimal(value: Any) -> Decimal:
    if isinstance(value, bool):
        raise ValueError
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise ValueError from None
    if not number.is_finite() or number < 0:
        raise ValueError
    return number


def _rates(value: Any) -> dict[str, Decimal]:
    if isinstance(value, str):  # env form: "EUR=0.92,GBP=0.79"
        pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
        if any(len(pair) != 2 for pair in pairs):
            raise ValueError
        value = {k.strip(): v.strip() for k, v in pairs}
    if not isinstance(value, Mapping):
        raise ValueError
    rates = {}
    for currency, rate in value.items():
        if not isinstance(currency, str) or len(currency.strip()) != 3:
            raise ValueError
        rates[currency.strip().upper()] = _decimal(rate)
    return rates


_PRICE_KEYS = ("input", "output", "cache_read", "cache_write", "cache_write_1h", "reasoning")


def _overrides(value: Any) -> dict[str, dict[str, Decimal]]:
    # {model: {input: USD per 1M tokens, output: ..., cache_read: ..., cache_write: ...}}
    if not isinstance(value, Mapping):
        raise ValueError
    result: dict[str, dict[str, Decimal]] = {}
    for model, prices in value.items():
        if not isinstance(model, str) or not isinstance(prices, Mapping):
            raise ValueError
        entry = {}
        for key, price in prices.items():
            if key not in _PRICE_KEYS:
                raise ValueError
            entry[key] = _decimal(price)
        result[model] = entry
    return result


# key -> (parser, what is accepted, environment variable or None when not settable from env)
_SPEC: dict[str, tuple[Callable[[Any], Any], str, str | None]] = {
    "history_limit": (_int(0), "an integer >= 0", "TOKENMETRY_HISTORY_LIMIT"),
    "tpm_window_s": (_int(1), "an integer number of seconds >= 1", "TOKENMETRY_TPM_WINDOW_S"),
    "capture_content": (_capture, "one of " + ", ".join(CAPTURE_MODES) + " (or true/false)",
                        "TOKENMETRY_CAPTURE_CONTENT"),
    "inject_stream_usage": (_bool, "true or false", "TOKENMETRY_INJECT_STREAM_USAGE"),
    "suppress_sdk_spans": (_bool, "true or false", "TOKENMETRY_SUPPRESS_SDK_SPANS"),
    "exporter": (_choice(EXPORTERS), "one of " + ", ".join(EXPORTERS), "TOKENMETRY_EXPORTER"),
    "prometheus_port": (_int(0), "a TCP port number", "TOKENMETRY_PROMETHEUS_PORT"),
    "prometheus_host": (_str, "a host name or address", "TOKENMETRY_PROMETHEUS_HOST"),
    "ledger": (_opt_str, "a file path", "TOKENMETRY_LEDGER"),
    "currency": (_currency, "a three-letter currency code", "TOKENMETRY_CURRENCY"),
    "currency_rates": (_rates, "a table of CURRENCY = rate per USD (env: EUR=0.92,GBP=0.79)",
                       "TOKENMETRY_CURRENCY_RATES"),
    "price_overrides": (_overrides, "a table of model -> {input, output, cache_read, cache_write, "
                        "cache_write_1h, reasoning} in currency units per million tokens", None),
    "tracer_provider": (lambda v: v, "an OpenTelemetry TracerProvider", None),
    "meter_provider": (lambda v: v, "an OpenTelemetry MeterProvider", None),
}


def _parse(source: str, key: str, value: Any) -> Any:
    parser, accepted, _ = _SPEC[key]
    try:
        return parser(value)
    except (ValueError, TypeError):
        raise ConfigError(source, key, value, accepted) from None


def _toml_path(env: Mapping[str, str]) -> Path | None:
    explicit = env.get("TOKENMETRY_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError("environment", "TOKENMETRY_CONFIG", explicit, "the path of a readable TOML file")
        return path
    local = Path("tokenmetry.toml")
    return local if local.is_file() else None


def _from_toml(path: Path) -> dict[str, Any]:
    source = f"TOML file {path}"
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "<file>", str(exc), "valid TOML") from None
    table = data.get("tokenmetry", data)  # a [tokenmetry] table, or top-level keys
    values = {}
    for key, value in table.items():
        if key in ("tracer_provider", "meter_provider") or key not in _SPEC:
            raise ConfigError(source, key, value, "one of " + ", ".join(
                k for k in _SPEC if k not in ("tracer_provider", "meter_provider")))
        values[key] = _parse(source, key, value)
    return values


def _otel_env(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    capture = env.get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT")
    if capture is not None:
        values["capture_content"] = _parse(
            "environment OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "capture_content", capture)
    return values


def resolve(overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> Options:
    """Resolve the options in force: ``overrides`` (keyword arguments) > environment > TOML > defaults."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    path = _toml_path(env)
    if path is not None:
        values.update(_from_toml(path))
    values.update(_otel_env(env))
    for key, (_, _, variable) in _SPEC.items():
        if variable is not None and variable in env:
            values[key] = _parse(f"environment {variable}", key, env[variable])
    for key, value in (overrides or {}).items():
        if key not in _SPEC:
            raise ConfigError("keyword arguments", key, value, "one of " + ", ".join(_SPEC))
        values[key] = _parse("keyword arguments", key, value)
    return replace(Options(), **values) if values else Options()


def option_names() -> list[str]:
    return [f.name for f in fields(Options)]
