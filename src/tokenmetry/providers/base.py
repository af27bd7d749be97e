"""What a provider adapter declares: endpoints, and how to read facts into a Call.

An adapter never imports OpenTelemetry and never touches sinks: it reads requests, responses and
chunks into the :class:`~tokenmetry.call.Call` that the lifecycle hands it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..call import Call, current_call, report_failure

__all__ = ["Endpoint", "Target", "Patch", "RateLimitHeaders", "RateLimitTable"]

#: (header name, lower-case; key in ``call.rate_limits``; parser of the header's text)
RateLimitTable = tuple[tuple[str, str, Callable[[str], Any]], ...]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One token-producing API operation and its readers."""

    operation: str  # gen_ai.operation.name
    read_response: Callable[[Call, Any], None]
    read_chunk: Callable[[Call, Any], bool] | None = None  # False: withhold the chunk from the user
    # called with (call, request body) before a streamed request is sent; may return a replacement body
    prepare: Callable[[Call, Mapping[str, Any]], Mapping[str, Any] | None] | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """Where a client sends its calls: the provider name and server of gen_ai / server.* attributes."""

    provider: str
    server_address: str | None
    server_port: int | None


@dataclass(frozen=True, slots=True)
class Patch:
    """One attribute replaced by instrument(): ``owner.name`` wrapped by ``wrapper``."""

    owner: Any
    name: str
    wrapper: Callable[..., Any]


class RateLimitHeaders:
    """Reads a vendor's rate-limit headers into a call: a failed attempt's response as ``(call,
    headers)``, every successful one through the hook :meth:`response_hook` makes.

    ``table`` names each header, its key and its parser; a value the parser rejects (``ValueError``)
    is left out. ``probes`` are headers of the table that every response of the vendor's own API
    carries: without any of them (a proxy, another platform) the response gives nothing.
    """

    __slots__ = ("_names", "_probes", "_table", "size", "_learned_rows", "_span", "_span_names", "_learned_length")

    def __init__(self, table: RateLimitTable, probes: tuple[str, ...]) -> None:
        headers = [header for header, _, _ in table]
        if not probes or not set(probes) <= set(headers):
            raise ValueError("probe headers must be headers of the table")
        self._table = table
        self._probes = frozenset(probes)
        # httpx2 keeps lower-case names as bytes: keyed by those, the header list is read in one pass
        self._names = {header.encode(): header for header in headers}
        self.size = len(table)  # how many keys a response can give at most
        # learned from the last complete response (see response_hook()): how many headers it had, the span of
        # its list from the table's first header to its last, the names along that span, and for each
        # row of the table its key, the parser of its raw value and its offset in the span
        self._learned_length = -1
        self._span = slice(0, 0)
        self._span_names: list[bytes] = []
        self._learned_rows: tuple[tuple[str, Callable[[bytes], Any], int], ...] = ()

    def __call__(self, call: Call, headers: Any) -> None:
        values = self.parse(headers)
        if values is not None:
            _merge_into(call, values)

    def response_hook(self) -> Callable[[Any, Any, tuple[Any, ...], dict[str, Any]], Any]:
        """The wrapper of the SDK's ``_process_response`` (wrapt's signature): every successful
        response's figures go with the call running here, and the newest figure of each kind is
        merged into its model's when the call is applied (see ``rate.newest_limits``).

        A vendor's API sends the same headers in the same order on every response, so where a
        complete response had them (every row of the table, each once) is kept: a response with as
        many headers and the same names along the span from the table's first header to its last
        hands that span's entries to the call (one slice and one comparison, in C), decoded and
        parsed only when the call is applied, where the newest of a run's calls usually gives every
        figure. Anything else (another layout) is read at once by :meth:`parse`, exactly as
        ``headers.get()`` gives each value. A span's entries stay alive only until its call is
        applied (within one batch); no response's whole header list is kept.
        """

        def keep_headers(wrapped: Any, client: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            call = current_call.get()
            if call is not None:
                try:  # (the SDK's own step runs below, outside: exactly once, its errors untouched)
                    headers = kwargs["response"].headers
                    entries = getattr(headers, "_list", None)
                    span = entries[self._span] if type(entries) is list and \
                        len(entries) == self._learned_length else None
                    if span is not None and list(map(_name_of, span)) == self._span_names:
                        call.rate_raw = (self._learned_rows, span)
                    else:
                        self._read_other(call, headers, entries)
                except Exception:
                    report_failure("headers")
            return wrapped(*args, **kwargs)

        return keep_headers

    def _read_other(self, call: Call, headers: Any, entries: Any) -> None:
        """A response not laid out as the learned one: read at once; a complete one is learned."""
        found = self.parse(headers)
        if found:
            _merge_into(call, found)
            if len(found) == self.size and type(entries) is list:
                self._learn(entries)

    def _learn(self, entries: list[Any]) -> None:
        names = self._names
        rows = {header: (key, _from_bytes(parse)) for header, key, parse in self._table}
        positions = [(index, entry[1]) for index, entry in enumerate(entries)
                     if type(entry) is tuple and len(entry) == 3 and entry[1] in names]
        if len(positions) != self.size:
            return  # a header given twice: only parse() joins repeats as get() does
        first, last = positions[0][0], positions[-1][0]
        span = entries[first:last + 1]
        if not all(type(entry) is tuple and len(entry) == 3 for entry in span):
            return  # not the (raw key, key, value) layout this was written for
        self._learned_rows = tuple((*rows[names[name]], index - first) for index, name in positions)
        self._span_names = [entry[1] for entry in span]
        self._span = slice(first, last + 1)
        self._learned_length = len(entries)

    def parse(self, headers: Any) -> dict[str, Any] | None:
        """The figures these headers give, or None when they are not the vendor's (no probe)."""
        found = self._values(headers)
        if self._probes.isdisjoint(found):
            return None
        values: dict[str, Any] = {}
        for header, key, parse in self._table:
            raw = found.get(header)
            if raw is not None:
                try:
                    values[key] = parse(raw)
                except ValueError:
                    continue
        return values

    def _values(self, headers: Any) -> dict[str, str]:
        """The table's headers that are present, each exactly as ``headers.get()`` gives it.

        ``httpx2.Headers.get()`` walks every header (and raises and catches ``KeyError`` for a missing
        one); a real response has about twenty headers, so one pass over the header list (lower-case
        keys, as httpx2 keeps them) costs a fraction of a ``get()`` per name.
        """
        entries = getattr(headers, "_list", None)
        if isinstance(entries, list):
            names = self._names
            try:
                hits = [(names[key], value) for _, key, value in entries if key in names]
            except (TypeError, ValueError):
                hits = None  # not the (raw key, key, value) layout this was written for: ask get() instead
            if hits is not None:
                if not hits:
                    return {}
                encoding = headers.encoding
                found: dict[str, str] = {}
                for name, value in hits:
                    text = value.decode(encoding)
                    found[name] = text if name not in found else f"{found[name]}, {text}"  # as get() joins
                return found
        if all(headers.get(probe) is None for probe in self._probes):
            return {}  # not the vendor's API: spare the other lookups
        values = {}
        for header, _, _ in self._table:
            value = headers.get(header)
            if value is not None:
                values[header] = value
        return values


_name_of = operator.itemgetter(1)  # of an httpx2 header entry: (raw name, lower-case name, value)


def _merge_into(call: Call, values: dict[str, Any]) -> None:
    """Figures of a later response of the call update those of an earlier attempt's."""
    if call.rate_limits is None:
        call.rate_limits = values
    else:
        call.rate_limits.update(values)


def _from_bytes(parse: Callable[[str], Any]) -> Callable[[bytes], Any]:
    """``parse`` of a header's raw value. HTTP header values are ASCII; the rare other byte is
    decoded as httpx2 decodes a response whose other headers are ASCII or UTF-8 (UTF-8, else
    ISO-8859-1). A value that does not parse raises ``ValueError`` (it is then left out)."""

    def from_bytes(raw: bytes) -> Any:
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("iso-8859-1")
        return parse(text)

    return from_bytes
