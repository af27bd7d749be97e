"""The usage ledger: one SQLite row per recorded call, written in batches off the calling thread.

Opt-in: ``TOKENMETRY_LEDGER=path`` (or ``instrument(ledger=path)``, or ``ledger = "path"`` in the TOML
file). The lifecycle hands every finished call to :meth:`Ledger.sink`, which only appends it to a
queue; a writer thread turns the calls into rows and inserts them in batches (WAL mode, one
``BEGIN IMMEDIATE`` transaction per batch), so several processes can share one file. Nothing here ever
raises into an SDK call: a ledger that cannot be written logs a WARNING and keeps the rows in memory
(bounded) until it can. Pending rows are flushed at exit.

The rows are read back by :func:`read_records` and summarised by :func:`summarize`, which
``tokenmetry report`` prints.

>>> import tokenmetry
>>> tokenmetry.instrument(ledger="usage.db")      # doctest: +SKIP
>>> tokenmetry.ledger.summarize("usage.db", by="model")  # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .usage import CallRecord, Cost, Usage

if TYPE_CHECKING:
    from .call import Call

__all__ = [
    "COLUMNS",
    "GROUPINGS",
    "SCHEMA_VERSION",
    "Ledger",
    "LedgerError",
    "Summary",
    "SummaryRow",
    "TimeSeries",
    "close",
    "configure",
    "current",
    "path_problem",
    "read_records",
    "summarize",
    "usage_over_time",
]

logger = logging.getLogger("tokenmetry")

SCHEMA_VERSION = 1

#: The ``calls`` table, one row per CallRecord (plus the writing process). Costs are exact decimal
#: strings (never floats); ``finish_reasons`` is a JSON array; ``started_at`` is epoch seconds (UTC).
COLUMNS: tuple[tuple[str, str], ...] = (
    ("started_at", "REAL NOT NULL"),
    ("provider", "TEXT NOT NULL"),
    ("operation", "TEXT NOT NULL"),
    ("request_model", "TEXT"),
    ("response_model", "TEXT"),
    ("response_id", "TEXT"),
    ("session_id", "TEXT NOT NULL"),
    ("turn", "INTEGER"),
    ("stream", "INTEGER NOT NULL"),
    ("input_tokens", "INTEGER NOT NULL"),
    ("output_tokens", "INTEGER NOT NULL"),
    ("total_tokens", "INTEGER NOT NULL"),
    ("cache_read_tokens", "INTEGER"),
    ("cache_write_tokens", "INTEGER"),
    ("reasoning_tokens", "INTEGER"),
    ("tool_tokens", "INTEGER"),
    ("usage_source", "TEXT NOT NULL"),
    ("cost", "TEXT"),
    ("currency", "TEXT"),
    ("cost_input", "TEXT"),
    ("cost_output", "TEXT"),
    ("cost_cache_read", "TEXT"),
    ("cost_cache_write", "TEXT"),
    ("cost_source", "TEXT"),
    ("duration_s", "REAL NOT NULL"),
    ("time_to_first_chunk_s", "REAL"),
    ("retries", "INTEGER NOT NULL"),
    ("throttle_wait_s", "REAL NOT NULL"),
    ("retry_wait_s", "REAL NOT NULL"),
    ("error_type", "TEXT"),
    ("finish_reasons", "TEXT NOT NULL"),
    ("server_address", "TEXT"),
    ("pid", "INTEGER NOT NULL"),
    ("host", "TEXT NOT NULL"),
)
_COLUMN_NAMES = tuple(name for name, _ in COLUMNS)
_INSERT = f"INSERT INTO calls ({', '.join(_COLUMN_NAMES)}) VALUES ({', '.join('?' * len(COLUMNS))})"
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS calls (id INTEGER PRIMARY KEY, "
    + ", ".join(f"{name} {kind}" for name, kind in COLUMNS) + ")",
    "CREATE INDEX IF NOT EXISTS calls_started_at ON calls (started_at)",
    "CREATE INDEX IF NOT EXISTS calls_session ON calls (session_id)",
)


class LedgerError(Exception):
    """The ledger file cannot be read (``tokenmetry report``); writing never raises."""


def _decimal_text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def record_row(record: CallRecord, pid: int, host: str) -> tuple[Any, ...]:
    """The ``calls`` row of one record, in :data:`COLUMNS` order."""
    usage = record.usage
    cost = record.cost
    return (
        record.started_at, record.provider, record.operation, record.request_model, record.response_model,
        record.response_id, record.session_id, record.turn, int(record.stream),
        usage.input_tokens, usage.output_tokens, usage.total_tokens, usage.cache_read_tokens,
        usage.cache_write_tokens, usage.reasoning_tokens, usage.tool_tokens, record.usage_source,
        None if cost is None else str(cost.amount), None if cost is None else cost.currency,
        None if cost is None else _decimal_text(cost.input), None if cost is None else _decimal_text(cost.output),
        None if cost is None else _decimal_text(cost.cache_read),
        None if cost is None else _decimal_text(cost.cache_write), None if cost is None else cost.source,
        record.duration_s, record.time_to_first_chunk_s, record.retries, record.throttle_wait_s,
        record.retry_wait_s, record.error_type, json.dumps(list(record.finish_reasons)), record.server_address,
        pid, host,
    )


def _dec(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def row_record(row: sqlite3.Row) -> CallRecord:
    """The CallRecord a ``calls`` row was written from."""
    cost = None
    if row["cost"] is not None:
        cost = Cost(Decimal(row["cost"]), row["currency"], _dec(row["cost_input"]), _dec(row["cost_output"]),
                    _dec(row["cost_cache_read"]), _dec(row["cost_cache_write"]), row["cost_source"])
    usage = Usage(row["input_tokens"], row["output_tokens"], row["cache_read_tokens"], row["cache_write_tokens"],
                  row["reasoning_tokens"], row["tool_tokens"])
    return CallRecord(
        row["provider"], row["operation"], row["request_model"], row["response_model"], row["response_id"],
        usage, row["usage_source"], cost, bool(row["stream"]), row["started_at"], row["duration_s"],
        row["time_to_first_chunk_s"], row["retries"], row["throttle_wait_s"], row["error_type"],
        row["session_id"], tuple(json.loads(row["finish_reasons"])), row["server_address"], row["turn"],
        row["retry_wait_s"],
    )


def path_problem(path: Path) -> str | None:
    """Why a ledger cannot be written at ``path`` (checked before starting; None when it looks fine)."""
    parent = path.parent
    if not parent.exists():
        return f"its directory {parent} does not exist"
    if not parent.is_dir():
        return f"{parent} is not a directory"
    if path.exists() and not path.is_file():
        return "it exists and is not a file"
    # WAL mode creates <file>-wal and <file>-shm next to the file: the directory must be writable
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"its directory {parent} is not writable"
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        return "the file is not writable"
    return None


def _connect(path: Path, timeout_s: float = 30.0) -> sqlite3.Connection:
    """Open (creating when needed) a ledger file in WAL mode with the current schema."""
    conn = sqlite3.connect(str(path), timeout=timeout_s, isolation_level=None, check_same_thread=False)
    try:
        for attempt in range(50):
            try:
                # switching to WAL needs a moment of exclusive access: another process may hold it
                conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) and "busy" not in str(error) or attempt == 49:
                    raise
                time.sleep(0.02 * (attempt + 1))
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"ledger schema version {version} is newer than this tokenmetry's ({SCHEMA_VERSION})")
            for statement in _SCHEMA:
                conn.execute(statement)
            if version < SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    except BaseException:
        conn.close()
        raise
    return conn


@dataclass
class _Flush:
    done: threading.Event


_STOP = object()


class Ledger:
    """Writes one row per finished call to a SQLite file, from a writer thread.

    :meth:`sink` is what the call lifecycle calls (on the calling thread): it only queues the call.
    The writer waits up to ``flush_interval_s`` after a call to gather a batch (at most
    ``batch_size`` rows) and inserts it in one transaction. Rows that cannot be written are kept (at
    most ``max_pending``; the oldest are dropped beyond that, with a warning) and retried.
    """

    def __init__(self, path: str | os.PathLike[str], *, batch_size: int = 500, flush_interval_s: float = 0.25,
                 max_pending: int = 20_000) -> None:
        self.path = Path(path)
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.max_pending = max_pending
        self.written = 0  #: rows committed by this process
        self.dropped = 0  #: rows given up (could not be written and over max_pending, or at exit)
        self.last_error: str | None = None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending: list[tuple[Any, ...]] = []
        self._conn: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._write_lock = threading.Lock()
        self._host = socket.gethostname()
        self._pid = os.getpid()
        # bound once: the recorder removes sinks by identity
        self.sink = self._sink

    # ----------------------------------------------------------------- calling thread
    def _sink(self, call: Call) -> None:
        """Queue a finished call (the lifecycle's internal sink: cheap, never raises, never blocks)."""
        self._queue.put(call)

    # ----------------------------------------------------------------- control
    def start(self) -> Ledger:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="tokenmetry-ledger", daemon=True)
            self._thread.start()
        return self

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every call queued before now has been written (or could not be). True when done."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            with self._write_lock:
                self._write_batch(self._drain())
            return not self._pending
        marker = _Flush(threading.Event())
        self._queue.put(marker)
        return marker.done.wait(timeout) and not self._pending

    def write(self, records: Iterable[CallRecord]) -> int:
        """Write records now, on this thread (imports, backfills, tests); returns the rows written.

        Raises :class:`LedgerError` when the file cannot be written (unlike the sink, which never raises).
        """
        batch = list(records)
        with self._write_lock:
            before = self.written
            self._write_batch(batch)
            if self._pending:
                self._pending = []
                raise LedgerError(f"cannot write {self.path}: {self.last_error}")
            return self.written - before

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, stop the writer and close the file. The sink must be detached first."""
        if self._closed:
            return
        self._closed = True
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._queue.put(_STOP)
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("tokenmetry: the ledger %s did not finish writing within %.0f s at exit",
                               self.path, timeout)
                return
        with self._write_lock:
            self._write_batch(self._drain())  # calls that raced the stop marker
        if self._pending:
            self.dropped += len(self._pending)
            logger.warning("tokenmetry: %d call(s) could not be written to the ledger %s: %s",
                           len(self._pending), self.path, self.last_error)
            self._pending = []
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None

    def _after_fork_in_child(self) -> None:
        # the parent's queued calls and its writer thread do not belong to this process: calls
        # queued before the fork are the parent's to write
        self._queue = queue.SimpleQueue()
        self._pending = []
        self._write_lock = threading.Lock()  # the parent's writer may have held it at the fork
        if self._conn is not None:
            _inherited_connections.append(self._conn)  # never closed here: it belongs to the parent
            self._conn = None
        self._thread = None
        self._pid = os.getpid()
        self.written = self.dropped = 0
        if not self._closed:
            self.start()
            # multiprocessing's fork children leave through os._exit, so atexit never runs there; they do
            # run threading's exit hooks (the hook CPython's concurrent.futures uses)
            register = getattr(threading, "_register_atexit", None)
            if register is not None:
                try:
                    register(_flush_current)
                except RuntimeError:  # the child is already shutting down
                    pass

    # ----------------------------------------------------------------- writer thread
    def _drain(self) -> list[Any]:
        items: list[Any] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return items
            if item is not _STOP and not isinstance(item, _Flush):
                items.append(item)
            elif isinstance(item, _Flush):
                item.done.set()

    def _run(self) -> None:
        get = self._queue.get
        retry_s = 1.0
        while True:
            if self._pending:
                # rows are waiting for the file to come back: retry on a backoff even without new calls
                try:
                    item = get(timeout=retry_s)
                except queue.Empty:
                    item = None
                retry_s = min(retry_s * 2, 30.0)
            else:
                item = get()
                retry_s = 1.0
            batch: list[Any] = []
            markers: list[_Flush] = []
            stop = False
            deadline = time.monotonic() + self.flush_interval_s
            while item is not None:
                if item is _STOP:
                    stop = True
                    break
                if isinstance(item, _Flush):
                    markers.append(item)
                    break
                batch.append(item)
                if len(batch) >= self.batch_size:
                    break
                remaining = deadline - time.monotonic()
                try:
                    item = get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
            try:
                with self._write_lock:
                    self._write_batch(batch)
            except Exception:  # never let the writer die: the next batch retries
                logger.debug("tokenmetry: ledger writer failed", exc_info=True)
            for marker in markers:
                marker.done.set()
            if stop:
                return

    def _write_batch(self, calls: Sequence[Any]) -> None:
        rows = self._pending
        if calls:
            pid, host = self._pid, self._host
            for call in calls:
                try:
                    rows.append(record_row(call.record() if not isinstance(call, CallRecord) else call, pid, host))
                except Exception:
                    logger.debug("tokenmetry: could not turn a call into a ledger row", exc_info=True)
        if not rows:
            return
        try:
            conn = self._conn
            if conn is None:
                conn = self._conn = _connect(self.path)
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_INSERT, rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError) as error:
            self.last_error = f"{type(error).__name__}: {error}"
            if self._conn is not None and not isinstance(error, sqlite3.OperationalError):
                try:
                    self._conn.close()
                except sqlite3.Error:
                    pass
                self._conn = None
            from .call import warn_once

            warn_once(f"ledger-write:{self.path}", "tokenmetry: cannot write the usage ledger %s (%s); calls "
                      "are not affected, rows are kept in memory and retried", self.path, self.last_error)
            if len(rows) > self.max_pending:
                over = len(rows) - self.max_pending
                del rows[:over]
                self.dropped += over
                warn_once(f"ledger-drop:{self.path}", "tokenmetry: dropping the oldest unwritten ledger rows "
                          "for %s (more than %d pending)", self.path, self.max_pending)
            return
        self.written += len(rows)
        self._pending = []


# ----------------------------------------------------------------- the process's ledger
_lock = threading.RLock()
_current: Ledger | None = None
_inherited_connections: list[sqlite3.Connection] = []
_atexit_registered = False


def current() -> Ledger | None:
    """The ledger this process writes to, if any."""
    return _current


def configure(path: str | os.PathLike[str] | None) -> Ledger | None:
    """Write to the ledger at ``path`` from now on (None: stop writing). Idempotent for one path.

    A path that cannot work (missing or read-only directory) logs a WARNING and returns None; it never
    raises, and calls are never affected.
    """
    global _current, _atexit_registered
    from .call import recorder, warn_once

    with _lock:
        if path is None:
            _close_current()
            return None
        resolved = Path(path).expanduser().absolute()
        if _current is not None and _current.path == resolved and not _current._closed:
            recorder.add_sink(_current.sink)
            return _current
        _close_current()
        problem = path_problem(resolved)
        if problem is not None:
            warn_once(f"ledger-path:{resolved}", "tokenmetry: the usage ledger %s is disabled: %s", resolved,
                      problem)
            return None
        ledger = Ledger(resolved).start()
        _current = ledger
        recorder.add_sink(ledger.sink)
        if not _atexit_registered:
            atexit.register(_close_current)
            _atexit_registered = True
        return ledger


def close() -> None:
    """Flush and close the process's ledger (it is also closed at exit)."""
    _close_current()


def _close_current() -> None:
    global _current
    from .call import recorder

    with _lock:
        ledger, _current = _current, None
    if ledger is not None:
        recorder.remove_sink(ledger.sink)
        ledger.close()


def _flush_current() -> None:
    ledger = _current
    if ledger is not None:
        ledger.flush(timeout=5.0)


def _after_fork_in_child() -> None:
    ledger = _current
    if ledger is not None:
        ledger._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# ----------------------------------------------------------------- reading
def _open_readonly(path: str | os.PathLike[str]) -> sqlite3.Connection:
    file = Path(path).expanduser()
    if not file.is_file():
        raise LedgerError(f"no ledger at {file} (set TOKENMETRY_LEDGER=path to record one)")
    try:
        # not mode=ro: a reader of a WAL file may need to create the -shm file next to it
        conn = sqlite3.connect(str(file), timeout=30.0)
        conn.row_factory = sqlite3.Row
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error as error:
        raise LedgerError(f"{file} is not a readable tokenmetry ledger: {error}") from None
    if "calls" not in tables or version < 1:
        conn.close()
        raise LedgerError(f"{file} is not a tokenmetry ledger (no calls table)")
    if version > SCHEMA_VERSION:
        conn.close()
        raise LedgerError(f"{file} was written by a newer tokenmetry (schema {version} > {SCHEMA_VERSION})")
    return conn


def _time_filter(since: float | None, until: float | None) -> tuple[str, list[float]]:
    clauses, params = [], []
    if since is not None:
        clauses.append("started_at >= ?")
        params.append(since)
    if until is not None:
        clauses.append("started_at < ?")
        params.append(until)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def read_records(path: str | os.PathLike[str], *, since: float | None = None,
                 until: float | None = None) -> Iterator[CallRecord]:
    """The records of a ledger file, oldest first (``since``/``until``: epoch seconds)."""
    conn = _open_readonly(path)
    try:
        where, params = _time_filter(since, until)
        for row in conn.execute(f"SELECT * FROM calls{where} ORDER BY started_at, id", params):
            yield row_record(row)
    finally:
        conn.close()


class _CostSum:
    """SQLite aggregate: exact Decimal sums of ``cost`` per currency, as JSON."""

    def __init__(self) -> None:
        self.totals: dict[str, Decimal] = {}

    def step(self, amount: str | None, currency: str | None) -> None:
        if amount is not None:
            key = currency or "USD"
            self.totals[key] = self.totals.get(key, Decimal(0)) + Decimal(amount)

    def finalize(self) -> str | None:
        if not self.totals:
            return None
        return json.dumps({k: str(v) for k, v in sorted(self.totals.items())})


#: ``--by`` values: the SQL expression(s) each groups by, and their column names
GROUPINGS: dict[str, tuple[tuple[str, str], ...]] = {
    "model": (("provider", "provider"), ("model", "COALESCE(response_model, request_model, 'unknown')")),
    "provider": (("provider", "provider"),),
    "session": (("session", "session_id"),),
    "day": (("day", "strftime('%Y-%m-%d', started_at, 'unixepoch'{tz})"),),
    "hour": (("hour", "strftime('%Y-%m-%d %H:00', started_at, 'unixepoch'{tz})"),),
    "week": (("week", "strftime('%Y-%m-%d', started_at, 'unixepoch'{tz}, 'weekday 0', '-6 days')"),),
}


@dataclass(frozen=True)
class SummaryRow:
    """One group of a :class:`Summary` (or its totals, with an empty ``key``)."""

    key: tuple[str, ...]
    calls: int
    usage: Usage
    cost: dict[str, Decimal]  #: exact totals per currency; empty when no call was priced
    unpriced_calls: int
    errors: int
    retries: int
    throttle_wait_s: float
    first_at: float | None
    last_at: float | None

    def to_dict(self, key_names: Sequence[str]) -> dict[str, Any]:
        data: dict[str, Any] = dict(zip(key_names, self.key))
        data["calls"] = self.calls
        data.update(self.usage.to_dict())
        data["cost"] = {k: str(v) for k, v in self.cost.items()}
        data["unpriced_calls"] = self.unpriced_calls
        data["errors"] = self.errors
        data["retries"] = self.retries
        data["throttle_wait_s"] = self.throttle_wait_s
        data["first_at"] = _iso(self.first_at)
        data["last_at"] = _iso(self.last_at)
        return data


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Summary:
    """Calls of a ledger grouped by model, provider, session, hour, day or week, with totals."""

    by: str
    key_names: tuple[str, ...]
    rows: tuple[SummaryRow, ...]
    totals: SummaryRow


_AGGREGATES = (
    "COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cache_read_tokens), SUM(cache_write_tokens), "
    "SUM(reasoning_tokens), SUM(tool_tokens), cost_sum(cost, currency), "
    "SUM(cost IS NULL AND total_tokens > 0), SUM(error_type IS NOT NULL), SUM(retries), SUM(throttle_wait_s), "
    "MIN(started_at), MAX(started_at)"
)


def _summary_row(key: tuple[str, ...], values: Sequence[Any]) -> SummaryRow:
    (calls, input_tokens, output_tokens, cache_read, cache_write, reasoning, tool, cost, unpriced, errors,
     retries, throttle, first_at, last_at) = values
    usage = Usage(input_tokens or 0, output_tokens or 0, cache_read, cache_write, reasoning, tool)
    costs = {k: Decimal(v) for k, v in json.loads(cost).items()} if cost else {}
    return SummaryRow(key, calls, usage, costs, unpriced or 0, errors or 0, retries or 0, throttle or 0.0,
                      first_at, last_at)


def summarize(path: str | os.PathLike[str], *, by: str = "model", since: float | None = None,
              until: float | None = None, utc: bool = False) -> Summary:
    """Group a ledger's calls by ``model`` | ``provider`` | ``session`` | ``hour`` | ``day`` | ``week``.

    Periods are local time unless ``utc``. Token sums of a detail field are None when no call in the
    group reported it (as in :class:`~tokenmetry.usage.Usage`); costs are exact decimals per currency.
    """
    if by not in GROUPINGS:
        raise ValueError(f"by must be one of {', '.join(GROUPINGS)}, not {by!r}")
    tz = "" if utc else ", 'localtime'"
    keys = GROUPINGS[by]
    expressions = [expr.format(tz=tz) for _, expr in keys]
    conn = _open_readonly(path)
    conn.create_aggregate("cost_sum", 2, _CostSum)  # type: ignore[arg-type]
    try:
        where, params = _time_filter(since, until)
        select = ", ".join(f"{expr} AS k{i}" for i, expr in enumerate(expressions))
        group = ", ".join(f"k{i}" for i in range(len(expressions)))
        order = group if by in ("hour", "day", "week") else f"SUM(total_tokens) DESC, {group}"
        rows = [
            _summary_row(tuple("" if v is None else str(v) for v in row[: len(expressions)]),
                         tuple(row[len(expressions):]))
            for row in conn.execute(f"SELECT {select}, {_AGGREGATES} FROM calls{where} GROUP BY {group} "
                                    f"ORDER BY {order}", params)
        ]
        totals = _summary_row((), tuple(conn.execute(f"SELECT {_AGGREGATES} FROM calls{where}", params).fetchone()))
    except sqlite3.Error as error:
        raise LedgerError(f"cannot read {path}: {error}") from None
    finally:
        conn.close()
    return Summary(by, tuple(name for name, _ in keys), tuple(rows), totals)


@dataclass(frozen=True)
class TimeSeries:
    """Tokens and cost per period and model: what ``tokenmetry report --chart`` draws."""

    period: str  #: hour | day | week
    periods: tuple[str, ...]  #: period labels, oldest first
    tokens: dict[str, tuple[int, ...]]  #: model -> total tokens per period
    cost: dict[str, tuple[Decimal, ...]]  #: model -> cost per period (0 where unpriced)
    currency: str | None  #: the currency of the costs (None when nothing was priced)

    def to_dict(self) -> dict[str, Any]:
        return {"period": self.period, "periods": list(self.periods),
                "tokens": {model: list(values) for model, values in self.tokens.items()},
                "cost": {model: [str(v) for v in values] for model, values in self.cost.items()},
                "currency": self.currency}


def usage_over_time(path: str | os.PathLike[str], *, period: str = "auto", since: float | None = None,
                    until: float | None = None, utc: bool = False) -> TimeSeries:
    """Total tokens and cost of each model per ``hour`` | ``day`` | ``week`` (``auto``: by the span
    of the data: hours up to two days, days up to 90 days, weeks beyond). Models are keyed
    ``provider/model``; a period with no call of a model holds 0."""
    tz = "" if utc else ", 'localtime'"
    conn = _open_readonly(path)
    conn.create_aggregate("cost_sum", 2, _CostSum)  # type: ignore[arg-type]
    try:
        where, params = _time_filter(since, until)
        if period == "auto":
            first, last = conn.execute(f"SELECT MIN(started_at), MAX(started_at) FROM calls{where}", params).fetchone()
            span = (last - first) if first is not None else 0.0
            period = "hour" if span <= 2 * 86400 else "day" if span <= 90 * 86400 else "week"
        if period not in ("hour", "day", "week"):
            raise ValueError(f"period must be auto, hour, day or week, not {period!r}")
        bucket = GROUPINGS[period][0][1].format(tz=tz)
        model = "provider || '/' || COALESCE(response_model, request_model, 'unknown')"
        rows = conn.execute(f"SELECT {bucket} AS p, {model} AS m, SUM(total_tokens), cost_sum(cost, currency) "
                            f"FROM calls{where} GROUP BY p, m ORDER BY p, m", params).fetchall()
    except sqlite3.Error as error:
        raise LedgerError(f"cannot read {path}: {error}") from None
    finally:
        conn.close()
    periods = sorted({row[0] for row in rows})
    index = {label: i for i, label in enumerate(periods)}
    tokens: dict[str, list[int]] = {}
    costs: dict[str, list[Decimal]] = {}
    currencies: set[str] = set()
    for label, name, total, cost in rows:
        tokens.setdefault(name, [0] * len(periods))[index[label]] = total or 0
        amounts = costs.setdefault(name, [Decimal(0)] * len(periods))
        if cost:
            for currency, amount in json.loads(cost).items():
                currencies.add(currency)
                amounts[index[label]] += Decimal(amount)
    if len(currencies) > 1:
        raise LedgerError(f"the ledger mixes currencies ({', '.join(sorted(currencies))}): chart one at a time "
                          "with --since/--until")
    return TimeSeries(period, tuple(periods), {k: tuple(v) for k, v in sorted(tokens.items())},
                      {k: tuple(v) for k, v in sorted(costs.items())}, next(iter(currencies), None))
