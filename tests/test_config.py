"""Options resolution: precedence, and a ConfigError naming source, key, value and what is accepted."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

import tokenmetry
from tokenmetry.config import Options, resolve
from tokenmetry.errors import ConfigError


def test_defaults_when_nothing_is_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve({}, env={}) == Options()


def test_precedence_kwargs_over_env_over_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    toml = tmp_path / "tm.toml"
    toml.write_text('[tokenmetry]\nhistory_limit = 10\ntpm_window_s = 30\ncurrency = "eur"\n'
                    'currency_rates = { EUR = "0.9" }\n')
    env = {"TOKENMETRY_CONFIG": str(toml), "TOKENMETRY_HISTORY_LIMIT": "20"}
    options = resolve({}, env=env)
    assert (options.history_limit, options.tpm_window_s, options.currency) == (20, 30, "EUR")
    assert options.currency_rates == {"EUR": Decimal("0.9")}
    options = resolve({"history_limit": 5}, env=env)
    assert (options.history_limit, options.tpm_window_s) == (5, 30)


def test_local_tokenmetry_toml_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tokenmetry.toml").write_text("history_limit = 7\n")
    assert resolve({}, env={}).history_limit == 7


def test_otel_capture_variable_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = {"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "span_and_event"}
    assert resolve({}, env=env).capture_content == "SPAN_AND_EVENT"
    # tokenmetry's own variable wins over the standard one
    env["TOKENMETRY_CAPTURE_CONTENT"] = "NO_CONTENT"
    assert resolve({}, env=env).capture_content == "NO_CONTENT"


@pytest.mark.parametrize(("variable", "value", "key", "accepted"), [
    ("TOKENMETRY_HISTORY_LIMIT", "lots", "history_limit", "integer >= 0"),
    ("TOKENMETRY_HISTORY_LIMIT", "-1", "history_limit", "integer >= 0"),
    ("TOKENMETRY_TPM_WINDOW_S", "0", "tpm_window_s", ">= 1"),
    ("TOKENMETRY_CAPTURE_CONTENT", "everything", "capture_content", "SPAN_ONLY"),
    ("TOKENMETRY_INJECT_STREAM_USAGE", "perhaps", "inject_stream_usage", "true or false"),
    ("TOKENMETRY_SUPPRESS_SDK_SPANS", "2", "suppress_sdk_spans", "true or false"),
    ("TOKENMETRY_EXPORTER", "zipkin", "exporter", "prometheus"),
    ("TOKENMETRY_PROMETHEUS_PORT", "http", "prometheus_port", "port"),
    ("TOKENMETRY_CURRENCY", "euro", "currency", "three-letter"),
    ("TOKENMETRY_CURRENCY_RATES", "EUR:0.9", "currency_rates", "EUR=0.92"),
    ("TOKENMETRY_CURRENCY_RATES", "EUR=-1", "currency_rates", "EUR=0.92"),
    ("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "maybe", "capture_content", "SPAN_ONLY"),
])
def test_bad_environment_value_names_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str,
                                                value: str, key: str, accepted: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        resolve({}, env={variable: value})
    error = caught.value
    assert error.source == f"environment {variable}"
    assert error.key == key
    assert error.value == value
    assert accepted in error.accepted
    assert variable in str(error) and repr(value) in str(error) and accepted in str(error)


@pytest.mark.parametrize(("text", "key", "accepted"), [
    ("history_limit = \"ten\"\n", "history_limit", "integer >= 0"),
    ("history_limit = 1.5\n", "history_limit", "integer >= 0"),
    ("tpm_window_s = -3\n", "tpm_window_s", ">= 1"),
    ("exporter = 3\n", "exporter", "otlp"),
    ("inject_stream_usage = \"sometimes\"\n", "inject_stream_usage", "true or false"),
    ("colour = \"blue\"\n", "colour", "history_limit"),
    ("tracer_provider = \"x\"\n", "tracer_provider", "history_limit"),
    ("[price_overrides.my-model]\ninput = \"free\"\n", "price_overrides", "per million tokens"),
    ("[price_overrides.my-model]\nsurcharge = 1\n", "price_overrides", "cache_write"),
])
def test_bad_toml_value_names_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, key: str,
                                         accepted: str) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        resolve({}, env={"TOKENMETRY_CONFIG": str(path)})
    assert caught.value.source == f"TOML file {path}"
    assert caught.value.key == key
    assert accepted in caught.value.accepted


def test_invalid_toml_and_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "broken.toml"
    path.write_text("history_limit = = 3\n")
    with pytest.raises(ConfigError, match="valid TOML"):
        resolve({}, env={"TOKENMETRY_CONFIG": str(path)})
    with pytest.raises(ConfigError) as caught:
        resolve({}, env={"TOKENMETRY_CONFIG": str(tmp_path / "nope.toml")})
    assert caught.value.key == "TOKENMETRY_CONFIG"


def test_instrument_rejects_bad_keyword_and_provider() -> None:
    with pytest.raises(ConfigError) as caught:
        tokenmetry.instrument(history_limit="many")
    assert (caught.value.source, caught.value.key) == ("keyword arguments", "history_limit")
    with pytest.raises(ConfigError) as caught:
        tokenmetry.instrument(no_such_option=1)
    assert caught.value.key == "no_such_option"
    with pytest.raises(ConfigError) as caught:
        tokenmetry.instrument(providers=["openai", "cohere"])
    assert (caught.value.key, caught.value.value) == ("providers", "cohere")


def test_price_overrides_parse_to_decimal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    options = resolve({"price_overrides": {"my-model": {"input": 1.25, "output": "10"}}}, env={})
    assert options.price_overrides == {"my-model": {"input": Decimal("1.25"), "output": Decimal("10")}}
