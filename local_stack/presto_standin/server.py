"""HTTP side of the stand-in: Presto's client REST protocol (``/v1/statement``) over DuckDB.

Protocol as implemented (the subset ``presto-python-client`` and Airflow's ``PrestoHook`` use):

* ``POST /v1/statement`` with the SQL as body and ``X-Presto-User`` (required; without it the
  answer is HTTP 400 ``User must be set``, as Presto answers), ``X-Presto-Catalog``,
  ``X-Presto-Schema`` and ``X-Presto-Prepared-Statement``. The answer is a ``QueryResults``
  document in state ``QUEUED`` with ``id``, ``infoUri``, ``nextUri`` and ``stats``.
* ``GET nextUri`` plans and starts the query on the first call, then returns one page of at most
  ``page_rows`` rows per call (``columns`` with Presto type names and ``typeSignature``, ``data``)
  in state ``RUNNING``, fetched from DuckDB with ``fetchmany`` as the client asks for it; the last
  page is ``FINISHED`` and has no ``nextUri``. Repeating the previous token returns the same page
  again (client retries); any other token is ``410 Gone``. A failure is a document in state
  ``FAILED`` with Presto's ``error`` payload.
* ``DELETE nextUri`` or ``DELETE /v1/query/{id}`` cancel the query (``204``); a later ``GET``
  answers ``USER_CANCELED`` / ``Query was canceled``. Unknown queries answer ``404``.
* ``GET /v1/info`` and ``/v1/info/state`` for health checks, ``GET /v1/query/{id}`` for a summary.
* With ``users`` the server speaks HTTPS only (a self-signed certificate made at start, its PEM
  at :attr:`PrestoStandin.ca_path`) and every request needs HTTP basic authentication; answers
  to missing or wrong credentials are Presto's 401s (see ``security.py``).
* Every statement is checked against Presto's grammar (``grammar.py``) before translation.

Queries a client abandons (no request for ``abandon_after`` seconds) are closed, as Presto does.

Fault injection for tests: a comment ``/* standin:fail */`` in the SQL makes the query fail with
``GENERIC_INTERNAL_ERROR``; ``/* standin:fail after_pages=2 error=NAME */`` fails it after two
pages with the named Presto error; ``/* standin:delay_ms=200 */`` waits before each page.
Data that lands later: with ``visible_up_to_file`` holding a date D, orders dated after D and
their line items are invisible (``visibility.py``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import re
import secrets
import shutil
import ssl
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import duckdb

from . import errors, grammar, security
from .catalog import CATALOG, TpchCatalog
from .errors import PrestoError
from .hive import ActionPlan, HiveCatalog, load_settings
from .translate import DuckDBPlan, Session, StaticPlan, Translator, parse_prepared_header
from .types import Encoder, encode_rows, presto_type, simple_type
from .visibility import VisibleUpToFile

log = logging.getLogger(__name__)

_STATEMENT_PATH = re.compile(
    r"^/v1/statement/(?:queued|executing)/(?P<id>[\w-]+)/(?P<slug>\w+)/(?P<token>\d+)$"
)
_QUERY_PATH = re.compile(r"^/v1/query/(?P<id>[\w-]+)$")
_FAULT = re.compile(
    r"standin:fail(?:\s+after_pages=(?P<after>\d+))?(?:\s+error=(?P<error>[A-Z_]+))?"
)
_DELAY = re.compile(r"standin:delay_ms=(?P<ms>\d+)")
_SEQUENCE = itertools.count(1)


@dataclass
class _Fault:
    after_pages: int
    error: errors.ErrorCode


class _Source:
    """Rows of a running query, produced page by page."""

    def fetchmany(self, size: int) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def interrupt(self) -> None:
        """Abort work in progress (called without the query lock)."""

    def close(self) -> None:
        """Release resources."""


class _DuckDBSource(_Source):
    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._con = con

    def fetchmany(self, size: int) -> list[tuple[Any, ...]]:
        try:
            return self._con.fetchmany(size)
        except duckdb.Error as err:
            raise presto_error_from_duckdb(err) from None

    def interrupt(self) -> None:
        with contextlib.suppress(duckdb.Error):
            self._con.interrupt()

    def close(self) -> None:
        with contextlib.suppress(duckdb.Error):
            self._con.close()


class _StaticSource(_Source):
    def __init__(self, rows: list[list[Any]]) -> None:
        self._rows = iter(rows)

    def fetchmany(self, size: int) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in itertools.islice(self._rows, size)]


@dataclass
class _RunningAction:
    """A statement with side effects running in the background; ``result`` once ``done``."""

    done: threading.Event = field(default_factory=threading.Event)
    result: StaticPlan | None = None
    error: PrestoError | None = None


@dataclass
class _Query:
    id: str
    slug: str
    sql: str
    session: Session
    created: float = field(default_factory=time.monotonic)
    state: str = "QUEUED"
    expected_token: int = 1
    last_token: int | None = None
    last_response: tuple[dict[str, Any], dict[str, str]] | None = None
    source: _Source | None = None
    columns: list[dict[str, Any]] | None = None
    encoders: list[Encoder] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    update_type: str | None = None
    duckdb_sql: str | None = None
    error: PrestoError | None = None
    cancelled: bool = False
    pages: int = 0
    rows: int = 0
    fault: _Fault | None = None
    delay: float = 0.0
    plan: DuckDBPlan | StaticPlan | ActionPlan | _RunningAction | None = None
    queued_polls: int = 0
    last_access: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def terminal(self) -> bool:
        return self.state in ("FINISHED", "FAILED")


def presto_error_from_duckdb(err: duckdb.Error) -> PrestoError:
    """Map a DuckDB exception to the Presto error a real cluster would give."""
    first = str(err).strip().split("\n")[0]
    message = re.sub(r"^[A-Za-z ]+ Error: ", "", first)
    if "Division by zero" in message:
        return PrestoError(errors.DIVISION_BY_ZERO, "Division by zero")
    if isinstance(err, duckdb.ConversionException):
        return PrestoError(errors.INVALID_CAST_ARGUMENT, message)
    if isinstance(err, duckdb.OutOfRangeException):
        return PrestoError(errors.NUMERIC_VALUE_OUT_OF_RANGE, message)
    if isinstance(err, duckdb.BinderException):
        if m := re.search(r'Referenced column "(.+?)" not found', message):
            return PrestoError(errors.SYNTAX_ERROR, f"Column '{m[1]}' cannot be resolved")
        return PrestoError(errors.SYNTAX_ERROR, message)
    if isinstance(err, duckdb.CatalogException) and "Function" in message:
        return PrestoError(
            errors.NOT_SUPPORTED,
            f"The Presto stand-in translated a function DuckDB does not have: {message}",
        )
    if isinstance(err, duckdb.ParserException):
        return PrestoError(
            errors.NOT_SUPPORTED,
            f"The Presto stand-in could not translate this query (DuckDB: {message})",
        )
    if "More than one row returned by a subquery" in message:
        return PrestoError(
            errors.SUBQUERY_MULTIPLE_ROWS, "Scalar sub-query has returned multiple rows"
        )
    if isinstance(err, duckdb.OutOfMemoryException):
        return PrestoError(errors.GENERIC_INSUFFICIENT_RESOURCES, message)
    if isinstance(err, duckdb.InterruptException):
        return PrestoError(errors.USER_CANCELED, "Query was canceled")
    return PrestoError(errors.GENERIC_INTERNAL_ERROR, f"DuckDB: {message}")


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that does not trust the certificate or speaks plain HTTP to the TLS port is
        # the client's problem: log it briefly instead of printing a traceback.
        error = sys.exc_info()[1]
        if isinstance(error, ssl.SSLError | ConnectionError):
            log.debug("connection from %s dropped: %s", client_address, error)
            return
        super().handle_error(request, client_address)


def _query_id() -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d_%H%M%S")
    return f"{stamp}_{next(_SEQUENCE):05d}_{secrets.token_hex(3)[:5]}"


class PrestoStandin:
    """A Presto coordinator stand-in serving the ``tpch`` catalog from DuckDB.

    >>> with PrestoStandin(port=0, schemas=("tiny",)) as presto:  # doctest: +SKIP
    ...     prestodb.dbapi.connect(host="127.0.0.1", port=presto.port, user="me",
    ...                            catalog="tpch", schema="tiny")

    :param host: address to bind (``127.0.0.1``; ``0.0.0.0`` inside a container).
    :param port: TCP port; ``0`` picks a free one (read it from :attr:`port` after start).
    :param schemas: TPC-H schemas to expose: ``tiny`` (sf 0.01) and/or ``sf1`` (sf 1).
    :param page_rows: rows per result page (Presto pages by bytes; rows are simpler to test).
    :param eager_schemas: schemas generated at start; the others on first use.
    :param abandon_after: seconds without a client request after which a query is dropped.
    :param retain_finished: seconds a finished query stays answerable (client retries).
    :param poll_wait: how long a ``GET`` waits for a schema being generated before answering
        ``QUEUED`` without data (the client then polls again, as with a queued Presto query).
    :param users: ``{user: password}``; when given, requests need HTTP basic authentication,
        which (as in Presto) requires ``tls``.
    :param tls: serve HTTPS with a self-signed certificate made at start (:attr:`ca_path`).
    :param tls_dir: where to write ``ca.pem`` and ``key.pem`` (default: a temporary folder,
        removed on stop).
    :param visible_up_to_file: a text file holding an ISO date D, checked on every query: while
        it exists, ``orders`` rows dated after D and their ``lineitem`` rows are invisible, as
        if not loaded yet. Without it (the default) all data is visible.
    :param hive_catalog: a Presto catalog file (``etc/catalog/hive.properties``) of a Hive
        connector on S3: ``CREATE TABLE ... AS`` writes Parquet there (``hive.py``).
    :param writer_count: Parquet files one ``CREATE TABLE ... AS`` writes (Presto's
        ``task.writer-count``).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        schemas: Iterable[str] = ("tiny",),
        page_rows: int = 1000,
        eager_schemas: Iterable[str] = ("tiny",),
        scale_factors: Mapping[str, float] | None = None,
        abandon_after: float = 300.0,
        retain_finished: float = 120.0,
        poll_wait: float = 1.0,
        users: Mapping[str, str] | None = None,
        tls: bool = False,
        tls_dir: str | Path | None = None,
        visible_up_to_file: str | Path | None = None,
        hive_catalog: str | Path | None = None,
        writer_count: int = 1,
    ) -> None:
        if page_rows < 1:
            raise ValueError("page_rows must be at least 1")
        if users and not tls:
            # Presto authenticates passwords on its HTTPS port only; clients refuse HTTP too.
            raise ValueError("password authentication requires HTTPS: pass tls=True")
        self.users = dict(users or {})
        self.tls = tls
        self._tls_dir = Path(tls_dir) if tls_dir else None
        self._tls_tmp: str | None = None
        self.ca_path: Path | None = None
        self.host = host
        self._requested_port = port
        self.schemas = tuple(schemas)
        self.page_rows = page_rows
        self.eager_schemas = tuple(eager_schemas)
        self.scale_factors = scale_factors
        self.abandon_after = abandon_after
        self.retain_finished = retain_finished
        self.poll_wait = poll_wait
        self.catalog: TpchCatalog | None = None
        self.visible_up_to = VisibleUpToFile(visible_up_to_file) if visible_up_to_file else None
        self.hive = HiveCatalog(load_settings(hive_catalog), writer_count) if hive_catalog else None
        self.translator = Translator(
            self.schemas, self.visible_up_to.read if self.visible_up_to else None, self.hive
        )
        self._queries: dict[str, _Query] = {}
        self._registry_lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()

    # -- lifecycle ---------------------------------------------------------------------------

    def _bind(self) -> ThreadingHTTPServer:
        httpd = _Server((self.host, self._requested_port), _Handler)
        try:
            if self.tls:
                self._wrap_tls(httpd)
            self.catalog = TpchCatalog(
                self.schemas, scale_factors=self.scale_factors, eager=self.eager_schemas
            )
        except BaseException:
            httpd.server_close()
            raise
        httpd.daemon_threads = True
        httpd.standin = self  # type: ignore[attr-defined]
        self._httpd = httpd
        return httpd

    def _wrap_tls(self, httpd: ThreadingHTTPServer) -> None:
        directory = self._tls_dir
        if directory is None:
            self._tls_tmp = tempfile.mkdtemp(prefix="presto-standin-tls-")
            directory = Path(self._tls_tmp)
        cert, key = security.make_certificate(directory)
        self.ca_path = cert
        # Handshake in the request's thread (first read), not in accept(): a slow or plain-HTTP
        # client must not block the server loop.
        httpd.socket = security.server_context(cert, key).wrap_socket(
            httpd.socket, server_side=True, do_handshake_on_connect=False
        )

    def start(self) -> PrestoStandin:
        """Generate the eager schemas, bind the port and serve in a background thread."""
        if self._httpd is not None:
            raise RuntimeError("already started")
        httpd = self._bind()
        self._thread = threading.Thread(
            target=httpd.serve_forever, name=f"presto-standin-{self.port}", daemon=True
        )
        self._thread.start()
        # The grammar's prediction caches take about half a second to build: not on a query.
        threading.Thread(target=grammar.warm_up, name="presto-grammar-warm-up", daemon=True).start()
        log.info(
            "Presto stand-in serving %s on %s (%s)",
            self.schemas,
            self.url,
            f"users: {', '.join(sorted(self.users))}" if self.users else "no authentication",
        )
        return self

    def stop(self) -> None:
        """Stop serving, close running queries and the DuckDB database."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._close()

    def _close(self) -> None:
        if self._httpd is not None:
            self._httpd.server_close()
            self._httpd = None
        with self._registry_lock:
            queries = list(self._queries.values())
            self._queries.clear()
        for query in queries:
            if query.source is not None:
                query.source.interrupt()
                query.source.close()
        if self.catalog is not None:
            self.catalog.close()
            self.catalog = None
        if self._tls_tmp is not None:
            shutil.rmtree(self._tls_tmp, ignore_errors=True)
            self._tls_tmp = None

    def __enter__(self) -> PrestoStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound TCP port."""
        if self._httpd is None:
            raise RuntimeError("not started")
        return int(self._httpd.server_address[1])

    @property
    def scheme(self) -> str:
        """``https`` with TLS, else ``http``."""
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        """``http(s)://host:port`` of the running server."""
        return f"{self.scheme}://{self.host}:{self.port}"

    def query_info(self, query_id: str) -> dict[str, Any]:
        """State, pages and rows served so far of a query (for tests and debugging)."""
        query = self._queries[query_id]
        return {
            "state": query.state,
            "pages": query.pages,
            "rows": query.rows,
            "cancelled": query.cancelled,
            "sql": query.sql,
            "duckdb_sql": query.duckdb_sql,
            "user": query.session.user,
            "queued_polls": query.queued_polls,
        }

    # -- protocol ----------------------------------------------------------------------------

    def submit(self, sql: str, session: Session) -> _Query:
        """Register a new query (``POST /v1/statement``)."""
        self._purge()
        query = _Query(_query_id(), "x" + secrets.token_hex(16), sql, session)
        if m := _FAULT.search(sql):
            name = m["error"] or "GENERIC_INTERNAL_ERROR"
            query.fault = _Fault(
                int(m["after"] or 0), errors.ERROR_CODES.get(name, errors.GENERIC_INTERNAL_ERROR)
            )
        if m := _DELAY.search(sql):
            query.delay = int(m["ms"]) / 1000
        with self._registry_lock:
            self._queries[query.id] = query
        return query

    def get(self, query_id: str) -> _Query | None:
        with self._registry_lock:
            return self._queries.get(query_id)

    def cancel(self, query: _Query) -> None:
        """Cancel a query; later requests get ``USER_CANCELED``."""
        query.cancelled = True
        if query.source is not None:
            query.source.interrupt()
        with query.lock:
            query.last_access = time.monotonic()
            if not query.terminal:
                query.state = "FAILED"
                query.error = PrestoError(errors.USER_CANCELED, "Query was canceled")
            self._release(query)

    def advance(
        self, query: _Query, token: int, base: str
    ) -> tuple[int, dict[str, Any] | str, dict[str, str]]:
        """Answer ``GET nextUri``: the next page, the same page again, or an error."""
        with query.lock:
            query.last_access = time.monotonic()
            if query.cancelled:
                return 200, self._document(query, base, error=query.error), {}
            if token == query.last_token and query.last_response is not None:
                payload, headers = query.last_response
                return 200, payload, headers
            if token != query.expected_token or query.terminal:
                return 410, f"Invalid token {token} for query {query.id}", {}
            payload, headers = self._step(query, base)
            query.last_token = token
            query.expected_token = token + 1
            query.last_response = (payload, headers)
            return 200, payload, headers

    def _step(self, query: _Query, base: str) -> tuple[dict[str, Any], dict[str, str]]:
        try:
            if query.state == "QUEUED":
                if not self._ready_to_start(query) or not self._action_done(query):
                    query.queued_polls += 1
                    return self._document(query, base, next_token=query.expected_token + 1), {}
                self._start(query)
            if query.delay:
                time.sleep(query.delay)
            if query.fault is not None and query.pages >= query.fault.after_pages:
                raise PrestoError(
                    query.fault.error,
                    f"Injected failure (standin:fail marker) after {query.pages} page(s)",
                )
            assert query.source is not None
            rows = query.source.fetchmany(self.page_rows)
            data = encode_rows(rows, query.encoders)
        except PrestoError as err:
            query.state = "FAILED"
            query.error = err
            self._release(query)
            log.info("query %s failed: %s %s", query.id, err.code.name, err.message)
            return self._document(query, base, error=err), {}
        query.pages += 1
        query.rows += len(data)
        if len(rows) < self.page_rows:
            query.state = "FINISHED"
            self._release(query)
            return self._document(query, base, data=data), query.headers
        query.state = "RUNNING"
        return self._document(query, base, data=data, next_token=query.expected_token + 1), {}

    def _ready_to_start(self, query: _Query) -> bool:
        """Plan the query; False while a schema it reads is still being generated."""
        assert self.catalog is not None
        if query.plan is None:
            query.plan = self.translator.plan(query.sql, query.session)
        if isinstance(query.plan, DuckDBPlan | ActionPlan):
            for schema in sorted(query.plan.schemas):
                try:
                    if not self.catalog.wait(schema, self.poll_wait):
                        return False
                except RuntimeError as err:
                    raise PrestoError(errors.GENERIC_INTERNAL_ERROR, str(err)) from None
        return True

    def _start(self, query: _Query) -> None:
        assert self.catalog is not None and query.plan is not None
        plan = query.plan
        if isinstance(plan, StaticPlan):
            types = [simple_type(t) for _, t in plan.columns]
            names = [n for n, _ in plan.columns]
            query.source = _StaticSource(plan.rows)
            query.headers = plan.headers
            query.update_type = plan.update_type
        else:
            assert isinstance(plan, DuckDBPlan)
            query.duckdb_sql = plan.sql
            con = self.catalog.cursor()
            try:
                con.execute(plan.sql)
                description = con.description or []
                types = [presto_type(d[1]) for d in description]
            except duckdb.Error as err:
                con.close()
                raise presto_error_from_duckdb(err) from None
            except PrestoError:
                con.close()
                raise
            names = [str(d[0]).lower() for d in description]
            query.source = _DuckDBSource(con)
        query.encoders = [t.encoder for t in types]
        query.columns = (
            [
                {"name": n, "type": t.name, "typeSignature": t.signature}
                for n, t in zip(names, types, strict=True)
            ]
            if names
            else None
        )
        query.state = "RUNNING"

    def _action_done(self, query: _Query) -> bool:
        """For a statement with side effects: run it in the background (a long write must not
        outlast the client's request timeout) and report whether it has finished; then its
        answer replaces the plan. True at once for other statements."""
        if not isinstance(query.plan, ActionPlan | _RunningAction):
            return True
        if isinstance(query.plan, ActionPlan):
            query.plan = self._launch(query.plan, query)
        running = query.plan
        if not running.done.wait(self.poll_wait):
            return False
        if running.error is not None:
            raise running.error
        query.plan = running.result
        return True

    def _launch(self, plan: ActionPlan, query: _Query) -> _RunningAction:
        assert self.catalog is not None
        running = _RunningAction()
        con = self.catalog.cursor()

        def run() -> None:
            try:
                columns, rows = plan.run(con, query.id)
                running.result = StaticPlan(columns, rows, update_type=plan.update_type)
            except duckdb.Error as err:
                running.error = presto_error_from_duckdb(err)
            except PrestoError as err:
                running.error = err
            except Exception as err:  # reported to the client, as Presto reports a crash
                log.exception("query %s failed", query.id)
                running.error = PrestoError(errors.GENERIC_INTERNAL_ERROR, f"{err}")
            finally:
                con.close()
                running.done.set()

        threading.Thread(target=run, name=f"presto-action-{query.id}", daemon=True).start()
        return running

    def _release(self, query: _Query) -> None:
        if query.source is not None:
            query.source.close()
            query.source = None

    def _document(
        self,
        query: _Query,
        base: str,
        *,
        data: list[list[Any]] | None = None,
        next_token: int | None = None,
        error: PrestoError | None = None,
    ) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": query.id,
            "infoUri": f"{base}/ui/query.html?{query.id}",
        }
        if next_token is not None:
            phase = "queued" if query.state == "QUEUED" else "executing"
            doc["nextUri"] = f"{base}/v1/statement/{phase}/{query.id}/{query.slug}/{next_token}"
            doc["partialCancelUri"] = f"{base}/v1/stage/{query.id}.0"
        if query.columns is not None:
            doc["columns"] = query.columns
        if data:
            doc["data"] = data
        doc["stats"] = self._stats(query)
        doc["warnings"] = []
        if error is not None:
            doc["error"] = error.to_payload()
        if query.update_type is not None:
            doc["updateType"] = query.update_type
        return doc

    def _stats(self, query: _Query) -> dict[str, Any]:
        elapsed = int((time.monotonic() - query.created) * 1000)
        return {
            "state": query.state,
            "queued": query.state == "QUEUED",
            "scheduled": query.state != "QUEUED",
            "nodes": 1,
            "totalSplits": query.pages,
            "queuedSplits": 0,
            "runningSplits": 0 if query.terminal else 1,
            "completedSplits": query.pages,
            "cpuTimeMillis": elapsed,
            "wallTimeMillis": elapsed,
            "queuedTimeMillis": 0,
            "elapsedTimeMillis": elapsed,
            "processedRows": query.rows,
            "processedBytes": 0,
            "peakMemoryBytes": 0,
            "peakTotalMemoryBytes": 0,
            "peakTaskTotalMemoryBytes": 0,
            "spilledBytes": 0,
        }

    def _purge(self) -> None:
        now = time.monotonic()
        with self._registry_lock:
            queries = list(self._queries.values())
        for query in queries:
            idle = now - query.last_access
            if query.terminal and idle > self.retain_finished:
                with self._registry_lock:
                    self._queries.pop(query.id, None)
            elif not query.terminal and idle > self.abandon_after:
                if not query.lock.acquire(blocking=False):
                    continue  # a request is being served for it: not abandoned
                try:
                    query.state = "FAILED"
                    query.error = PrestoError(
                        errors.ABANDONED_QUERY,
                        f"Query {query.id} has not been accessed for {idle:.0f} s",
                    )
                    self._release(query)
                finally:
                    query.lock.release()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "PrestoStandin/1"
    # Keep-alive plus separate header/body writes would hit Nagle + delayed ACK (~40 ms a page).
    disable_nagle_algorithm = True

    @property
    def standin(self) -> PrestoStandin:
        return self.server.standin  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _base(self) -> str:
        host = self.headers.get("Host") or f"{self.standin.host}:{self.standin.port}"
        return f"{self.standin.scheme}://{host}"

    def _authenticated(self) -> bool:
        """True when no users are configured or the request carries valid credentials; else
        answer 401 as Presto does and return False."""
        if not self.standin.users:
            return True
        try:
            security.authenticate(self.headers.get("Authorization"), self.standin.users)
        except security.AuthenticationFailed as failure:
            # The body was not read: close the connection rather than parse it as a request.
            self.close_connection = True
            self._send(401, str(failure), {"WWW-Authenticate": security.REALM_CHALLENGE})
            return False
        return True

    def _send(
        self, status: int, body: dict[str, Any] | str, headers: Mapping[str, str] | None = None
    ) -> None:
        if isinstance(body, str):
            raw, content_type = body.encode("utf-8"), "text/plain; charset=utf-8"
        else:
            raw, content_type = json.dumps(body, separators=(",", ":")).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(raw)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(raw)

    def _no_content(self) -> None:
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        if not self._authenticated():
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8") if length else ""
        path = urllib.parse.urlsplit(self.path).path
        if path != "/v1/statement":
            self._send(404, f"Not found: {path}")
            return
        user = (self.headers.get("X-Presto-User") or "").strip()
        if not user:
            self._send(400, "User must be set")
            return
        if not body.strip():
            self._send(400, "SQL statement is empty")
            return
        session = Session(
            user=user,
            catalog=(self.headers.get("X-Presto-Catalog") or "").strip().lower() or None,
            schema=(self.headers.get("X-Presto-Schema") or "").strip().lower() or None,
            prepared=parse_prepared_header(self.headers.get("X-Presto-Prepared-Statement")),
        )
        query = self.standin.submit(body, session)
        log.debug("query %s from %s: %s", query.id, user, body)
        self._send(200, self.standin._document(query, self._base(), next_token=1))

    def do_GET(self) -> None:
        if not self._authenticated():
            return
        split = urllib.parse.urlsplit(self.path)
        if m := _STATEMENT_PATH.match(split.path):
            query = self.standin.get(m["id"])
            if query is None or query.slug != m["slug"]:
                self._send(404, "Query not found")
                return
            status, body, headers = self.standin.advance(query, int(m["token"]), self._base())
            self._send(status, body, headers)
        elif split.path == "/v1/info":
            uptime = time.monotonic() - self.standin._started
            self._send(
                200,
                {
                    "nodeVersion": {"version": "presto-standin"},
                    "environment": "local",
                    "coordinator": True,
                    "starting": False,
                    "uptime": f"{uptime:.2f}s",
                    "catalogs": {CATALOG: list(self.standin.schemas)},
                },
            )
        elif split.path == "/v1/info/state":
            self._send(200, {"state": "ACTIVE"})
        elif m := _QUERY_PATH.match(split.path):
            query = self.standin.get(m["id"])
            if query is None:
                self._send(404, "Query not found")
                return
            self._send(200, {"queryId": query.id, **self.standin.query_info(query.id)})
        elif split.path == "/ui/query.html":
            query = self.standin.get(split.query)
            state = query.state if query else "unknown"
            self._send(200, f"Presto stand-in query {split.query}: {state}")
        else:
            self._send(404, f"Not found: {split.path}")

    def do_DELETE(self) -> None:
        if not self._authenticated():
            return
        path = urllib.parse.urlsplit(self.path).path
        m = _STATEMENT_PATH.match(path) or _QUERY_PATH.match(path)
        query = self.standin.get(m["id"]) if m else None
        if query is None:
            self._send(404, "Query not found")
            return
        self.standin.cancel(query)
        self._no_content()


__all__ = ["PrestoStandin", "presto_error_from_duckdb"]
