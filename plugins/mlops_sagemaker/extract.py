"""Stream a Presto query result to S3 as Parquet or gzip CSV parts, with a manifest written last.

Why not ``SqlToS3Operator`` or ``PrestoHook.get_pandas_df``: both hold the whole result in memory
(a 5 GB export took about 10 GB of RAM in a public report). Here the result is read page by
page, every ``chunk_rows`` rows become one part uploaded at once, and memory stays bounded by
the chunk size.

``presto-python-client`` 0.8.4's ``Cursor.execute`` itself reads every result page before it
returns (``PrestoQuery.execute`` loops until the query is finished), so ``fetchmany`` alone
would not bound memory. :func:`start_streaming_query` starts the query with only the initial
``POST`` and lets the cursor fetch the following pages as ``fetchmany`` consumes rows; with any
other DB-API cursor it falls back to ``cursor.execute``.

Speed: a background thread fetches the next Presto pages (at most one chunk of rows ahead, so
memory stays bounded) while the main thread converts, encodes and uploads the previous ones;
waiting for the coordinator then overlaps with our own work. Pages are decoded with ``msgspec``
(an Airflow dependency; about 5x faster than ``json`` on result pages, falling back to the
client's own decoding for anything it rejects) and taken whole instead of row by row, and
columns go to Arrow in bulk where the JSON values need no per-value conversion.

Layout under ``s3://<bucket>/<prefix>/``::

    data/part-00000.parquet, data/part-00001.parquet, ...   file_format="parquet" (the default)
    data/part-00000.csv.gz, data/part-00001.csv.gz, ...     file_format="csv.gz"
    manifest.json                                           written last, only on success

One part per chunk, in query order. Both formats are built from the same Arrow table. Parquet
parts are Snappy-compressed and carry their schema. ``csv.gz`` parts are what a SageMaker batch
transform reads with ``SplitType=Line`` (it cannot split Parquet into records): gzip (no file
name, mtime 0), no header, columns in query order, ``\\n`` line endings, RFC 4180 quoting
(pyarrow quotes every non-null string, so ``""`` is an empty string and an empty field is NULL),
doubles in their shortest round-trip form, dates/timestamps in ISO 8601, decimals as plain
decimal text. Strings with line breaks are refused there (``SplitType=Line`` would cut the record
in two), and so is ``varbinary``. :func:`read_part` reads a part of either format back with the
manifest's column names and Arrow types. The manifest's ``format`` says which one was written.

Re-runs are idempotent and give byte-identical parts for the same rows: parts are overwritten in
place, parts of a previous run that this run did not write (of either format) are deleted, and
the previous manifest is removed before the first new part is written, so a manifest always
describes a complete, consistent set of parts.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import gzip
import hashlib
import io
import itertools
import json
import logging
import re
import threading
import zoneinfo
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypedDict

import msgspec
import prestodb.client
import prestodb.dbapi
import prestodb.exceptions
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import requests

from mlops_sagemaker.failures import ClassifiedError, classify

log = logging.getLogger(__name__)

PART_NAME = re.compile(r"part-\d{5,}\.(?:parquet|csv\.gz)")
MANIFEST_NAME = "manifest.json"


class ExtractError(ClassifiedError):
    """The extraction failed; the message says why and what to do (permanent by default)."""

    category = "data"


class EmptyExtractError(ExtractError):
    """The query returned no rows for the window being extracted."""


class PrestoQueryFailedError(ExtractError):
    """Presto rejected or failed the query (its error name and message are in the text); its
    kind is the failure policy's verdict on the Presto error (user error or server trouble)."""


class UnsupportedPrestoTypeError(ExtractError):
    """A result column has a Presto type this module does not write to Parquet."""


# -- Presto types → Arrow ----------------------------------------------------------------------

Converter = Callable[[Any], Any]


def _to_float(value: Any) -> Any:
    # Presto encodes non-finite doubles as the strings "NaN", "Infinity", "-Infinity".
    return float(value) if isinstance(value, str) else value


def _to_date(value: Any) -> Any:
    return dt.date.fromisoformat(value) if isinstance(value, str) else value


def _to_decimal(value: Any) -> Any:
    # Presto encodes decimals as strings; str() keeps a float's shortest repr exact.
    return Decimal(str(value)) if isinstance(value, str | int | float) else value


def _to_bytes(value: Any) -> Any:
    return base64.b64decode(value) if isinstance(value, str) else value


def _parse_timestamp(text: str) -> dt.datetime:
    date_part, _, time_part = text.partition(" ")
    if "." in time_part:  # Python parses at most 6 fractional digits; Presto may send 9
        whole, fraction = time_part.split(".", 1)
        time_part = f"{whole}.{fraction[:6]}"
    return dt.datetime.fromisoformat(f"{date_part} {time_part}" if time_part else date_part)


def _to_timestamp(value: Any) -> Any:
    return _parse_timestamp(value) if isinstance(value, str) else value


def _to_timestamp_tz(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    text, _, zone = value.rpartition(" ")
    if not text or zone[:1].isdigit():  # no zone given
        return _parse_timestamp(value).replace(tzinfo=dt.UTC)
    if zone[:1] in "+-":
        hours, _, minutes = zone[1:].partition(":")
        offset = dt.timedelta(hours=int(hours), minutes=int(minutes or 0))
        tz: dt.tzinfo = dt.timezone(-offset if zone[0] == "-" else offset)
    else:
        tz = dt.UTC if zone in ("UTC", "Z") else zoneinfo.ZoneInfo(zone)
    return _parse_timestamp(text).replace(tzinfo=tz)


_TYPE_PATTERN = re.compile(
    r"^(?P<base>[a-z]+(?: [a-z]+)*?)\s*(?:\((?P<args>[^()]*)\))?(?P<tz> with time zone)?$"
)
_SIMPLE_TYPES: dict[str, tuple[pa.DataType, Converter | None]] = {
    "boolean": (pa.bool_(), None),
    "tinyint": (pa.int8(), None),
    "smallint": (pa.int16(), None),
    "integer": (pa.int32(), None),
    "int": (pa.int32(), None),
    "bigint": (pa.int64(), None),
    "real": (pa.float32(), _to_float),
    "double": (pa.float64(), _to_float),
    "varchar": (pa.string(), None),
    "char": (pa.string(), None),
    "json": (pa.string(), None),
    "uuid": (pa.string(), None),
    "ipaddress": (pa.string(), None),
    "date": (pa.date32(), _to_date),
    "varbinary": (pa.binary(), _to_bytes),
    "unknown": (pa.null(), None),  # the type of a bare NULL
}


def _timestamp_unit(args: str | None) -> str:
    precision = int(args) if args else 3  # Presto's default timestamp precision
    return "ms" if precision <= 3 else "us"


def arrow_type(presto_type: str, column: str = "?") -> tuple[pa.DataType, Converter | None]:
    """Return the Arrow type for a Presto type name and the converter for its JSON values.

    Supported: boolean, tinyint/smallint/integer/bigint, real/double, varchar(n)/char(n)/json/
    uuid, date, timestamp(p) [with time zone], decimal(p,s), varbinary. Anything else (arrays,
    maps, rows, time, intervals ...) raises :class:`UnsupportedPrestoTypeError`.
    """
    match = _TYPE_PATTERN.match(presto_type.strip().lower())
    if match:
        base, args, tz = match["base"], match["args"], match["tz"]
        if base in _SIMPLE_TYPES and not tz:
            return _SIMPLE_TYPES[base]
        if base == "timestamp":
            unit = _timestamp_unit(args)
            if tz:
                return pa.timestamp(unit, tz="UTC"), _to_timestamp_tz
            return pa.timestamp(unit), _to_timestamp
        if base == "decimal" and args:
            precision, _, scale = args.partition(",")
            return pa.decimal128(int(precision), int(scale or 0)), _to_decimal
    raise UnsupportedPrestoTypeError(
        f"Column {column!r} has Presto type {presto_type!r}, which the extraction cannot write to "
        "Parquet. Cast it in the SQL to a supported type (bigint, integer, double, varchar, date, "
        "timestamp, decimal, boolean), e.g. CAST(x AS varchar) or json_format(CAST(x AS json))."
    )


@dataclass(frozen=True)
class _Column:
    name: str
    presto_type: str
    arrow_type: pa.DataType
    convert: Converter | None


def _columns(description: Sequence[Sequence[Any]] | None) -> list[_Column]:
    if not description:
        raise ExtractError("Presto returned no column description for the query result")
    columns = []
    for entry in description:
        name, presto_type = str(entry[0]), str(entry[1])
        arrow, convert = arrow_type(presto_type, name)
        columns.append(_Column(name, presto_type, arrow, convert))
    names = [c.name for c in columns]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ExtractError(
            f"The query returns duplicate column names {duplicates}: give each column a unique "
            "alias (Parquet needs unique names)"
        )
    return columns


# -- parts -------------------------------------------------------------------------------------


def _schema(columns: list[_Column]) -> pa.Schema:
    return pa.schema([pa.field(c.name, c.arrow_type) for c in columns])


# Arrow's string -> date32 cast accepts year 0, which Python's dates (the per-value converter)
# refuse: such a column goes value by value, so it fails as it always did.
_FIRST_PYTHON_DAY = (dt.date(1, 1, 1) - dt.date(1970, 1, 1)).days


def _bulk_array(values: list[Any], column: _Column) -> pa.Array | None:
    """``values`` converted to Arrow in one call, or None where only the per-value converter
    gives the right result (doubles sent as strings such as ``"NaN"``, dates not in ISO form)."""
    try:
        if column.convert is _to_float:
            # The same result as the per-value path whenever no value is a string (else Arrow
            # raises and the converter handles them).
            return pa.array(values, type=column.arrow_type)
        if column.convert is _to_date:
            days = pa.array(values, type=pa.string()).cast(pa.date32())
            first = pc.min(days.view(pa.int32())).as_py()
            return days if first is None or first >= _FIRST_PYTHON_DAY else None
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    return None


def _column_array(values: list[Any], column: _Column) -> pa.Array:
    array = None if column.convert is None else _bulk_array(values, column)
    if array is not None:
        return array
    if column.convert is not None:
        convert = column.convert
        values = [None if v is None else convert(v) for v in values]
    try:
        return pa.array(values, type=column.arrow_type)
    except (pa.ArrowException, ValueError, TypeError) as err:
        raise ExtractError(
            f"Cannot convert column {column.name!r} ({column.presto_type}) to "
            f"{column.arrow_type}: {err}"
        ) from err


def _record_batch(
    rows: Sequence[Sequence[Any]], columns: list[_Column], schema: pa.Schema
) -> pa.RecordBatch:
    arrays = [_column_array([row[i] for row in rows], c) for i, c in enumerate(columns)]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _chunk_tables(
    batches: Iterable[Sequence[Sequence[Any]]], columns: list[_Column], chunk_rows: int
) -> Iterator[pa.Table]:
    """Convert row batches (Presto pages) to Arrow as they come and regroup them into tables of
    exactly ``chunk_rows`` rows (the last one may be shorter), each one contiguous: the same rows
    give the same parts however the pages fall."""
    schema = _schema(columns)
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for rows in batches:
        pending.append(_record_batch(rows, columns, schema))
        pending_rows += len(rows)
        del rows  # the page's Python objects go now: the Arrow batch is far smaller
        while pending_rows >= chunk_rows:
            table = pa.Table.from_batches(pending, schema)
            pending = table.slice(chunk_rows).to_batches()
            pending_rows -= chunk_rows
            yield table.slice(0, chunk_rows).combine_chunks()
    if pending_rows:
        yield pa.Table.from_batches(pending, schema).combine_chunks()


def _parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="snappy")
    return buffer.getvalue()


# pyarrow writes a decimal in scientific notation ("1.00E-8", "0E-10") when its exponent would
# fall below -6, which only a scale above 6 allows; such columns are formatted here instead.
_ARROW_PLAIN_DECIMAL_SCALE = 6


def _plain_decimals(table: pa.Table) -> pa.Table:
    for index, field in enumerate(table.schema):
        if pa.types.is_decimal(field.type) and field.type.scale > _ARROW_PLAIN_DECIMAL_SCALE:
            values = table.column(index).to_pylist()
            text = pa.array([None if v is None else format(v, "f") for v in values], pa.string())
            table = table.set_column(index, field.name, text)
    return table


def _refuse_line_breaks(table: pa.Table) -> None:
    for field, column in zip(table.schema, table.columns, strict=True):
        if pa.types.is_string(field.type):
            count = pc.sum(pc.match_substring_regex(column, r"[\r\n]")).as_py() or 0
            if count:
                raise ExtractError(
                    f"Column {field.name!r} has {count} value(s) with a line break: csv.gz parts "
                    "are split into records at line breaks (SageMaker batch transform, "
                    "SplitType=Line), which would cut those rows in two. Remove them in the SQL, "
                    f"e.g. replace(replace({field.name}, chr(13), ' '), chr(10), ' ')."
                )


def _csv_gz_bytes(table: pa.Table) -> bytes:
    _refuse_line_breaks(table)
    buffer = io.BytesIO()
    # mtime=0 and no file name in the gzip header: the same rows give the same bytes.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=6, mtime=0) as gz:
        pacsv.write_csv(_plain_decimals(table), gz, pacsv.WriteOptions(include_header=False))
    return buffer.getvalue()


_ENCODERS: dict[str, Callable[[pa.Table], bytes]] = {
    "parquet": _parquet_bytes,
    "csv.gz": _csv_gz_bytes,
}
FORMATS: tuple[str, ...] = tuple(_ENCODERS)  # a part's file name ends with ".<format>"


def _check_format(file_format: str) -> str:
    if file_format not in _ENCODERS:
        raise ValueError(
            f"Unknown file_format {file_format!r}: use one of {', '.join(map(repr, FORMATS))}"
        )
    return file_format


def _check_csv_columns(columns: list[_Column]) -> None:
    for column in columns:
        if pa.types.is_binary(column.arrow_type):
            raise UnsupportedPrestoTypeError(
                f"Column {column.name!r} has Presto type {column.presto_type!r}, which csv.gz "
                f"parts cannot hold as text: encode it in the SQL, e.g. to_base64({column.name})."
            )


def manifest_schema(manifest: Mapping[str, Any]) -> pa.Schema:
    """The Arrow schema of a manifest's parts: its column names and Arrow types, in query order.

    :raises ExtractError: a column's Presto type no longer maps to the Arrow type the manifest
        recorded (a manifest written by another version of this module).
    """
    fields = []
    for column in manifest["columns"]:
        arrow, _ = arrow_type(column["presto_type"], column["name"])
        if str(arrow) != column["arrow_type"]:
            raise ExtractError(
                f"Manifest column {column['name']!r} ({column['presto_type']}) was written as "
                f"{column['arrow_type']}, but this version reads it as {arrow}: re-run the "
                "extraction"
            )
        fields.append(pa.field(column["name"], arrow))
    return pa.schema(fields)


def csv_convert_options(
    column_types: pa.Schema | Mapping[str, pa.DataType],
) -> pacsv.ConvertOptions:
    """How csv.gz text converts back to Arrow: an empty unquoted field is NULL, a quoted empty
    field (``""``) an empty string, and each column gets exactly the given type."""
    return pacsv.ConvertOptions(
        column_types=column_types,
        null_values=[""],
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )


def read_part(body: bytes, manifest: Mapping[str, Any]) -> pa.Table:
    """Read one part of the extraction described by ``manifest`` (either format) into Arrow.

    :param body: the part object's bytes (one chunk, so memory stays bounded).
    :param manifest: the extraction's manifest (``format`` and ``columns`` are used).
    :returns: a table with the manifest's column names and Arrow types, in query order (dates,
        decimals and timestamps of a csv.gz part come back as their Arrow types, not text).
    """
    schema = manifest_schema(manifest)
    if _check_format(manifest["format"]) == "parquet":
        return pq.read_table(pa.BufferReader(body)).cast(schema)
    return pacsv.read_csv(
        pa.CompressedInputStream(pa.BufferReader(body), "gzip"),
        read_options=pacsv.ReadOptions(column_names=schema.names),
        convert_options=csv_convert_options(schema),
    )


def part_uris(manifest: Mapping[str, Any]) -> list[str]:
    """The ``s3://`` URI of every part of ``manifest``, in query order."""
    bucket = manifest["data_uri"].removeprefix("s3://").split("/", 1)[0]
    return [f"s3://{bucket}/{part['key']}" for part in manifest["parts"]]


# -- streaming ---------------------------------------------------------------------------------


_JSON = msgspec.json.Decoder()


def _decode_json(response: requests.Response) -> Any:
    """A Presto response's JSON document, decoded by msgspec (about 5x faster than ``json`` on
    result pages). What msgspec refuses (``NaN`` literals, numbers beyond float range, invalid
    UTF-8, malformed JSON) goes to requests' own decoding: the result, or the error, is the
    client's own."""
    try:
        return _JSON.decode(response.content)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return requests.Response.json(response)


class _QueryResults(TypedDict, total=False):
    """Presto's ``QueryResults`` document, with each row of ``data`` decoded as a tuple."""

    id: Any
    infoUri: Any
    partialCancelUri: Any
    nextUri: Any
    columns: Any
    data: list[tuple]
    stats: Any
    error: Any
    warnings: Any
    updateType: Any
    updateCount: Any


_PAGE = msgspec.json.Decoder(_QueryResults)


def _decode_page(response: requests.Response) -> Any:
    """Like :func:`_decode_json`, with the rows as tuples. Why: the garbage collector stops
    tracking a tuple of scalars, never a list, so rows waiting in memory no longer trigger full
    collections over the whole heap (about 2 s of CPU on 1.5 M rows). A document not shaped
    like ``QueryResults`` is decoded by :func:`_decode_json`."""
    try:
        return _PAGE.decode(response.content)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return _decode_json(response)


class _StreamingQuery(prestodb.client.PrestoQuery):
    """A ``PrestoQuery`` whose ``execute`` sends the statement and returns at once.

    ``PrestoResult`` then fetches each following page when its rows are iterated; :meth:`pages`
    reads them a page at a time instead. Pages are decoded by :func:`_decode_json`.
    """

    _first_rows: list[list[Any]] = []  # the rows of the POST's answer, set by execute()

    def _process(
        self, response: requests.Response, decode: Callable[[requests.Response], Any] = _decode_json
    ) -> prestodb.client.PrestoStatus:
        response.json = lambda **_: decode(response)  # type: ignore[method-assign]
        return self._request.process(response)

    def execute(self) -> prestodb.client.PrestoResult:
        status = self._process(self._request.post(self._sql))
        self.query_id = status.id
        self._stats.update({"queryId": self.query_id})
        self._stats.update(status.stats)
        self._warnings = status.warnings
        if status.columns:
            self._columns = status.columns
        if status.next_uri is None:
            self._finished = True
        self._first_rows = status.rows
        self._result = prestodb.client.PrestoResult(self, status.rows)
        return self._result

    def fetch(self) -> list[list[Any]]:
        """``PrestoQuery.fetch`` (the next page's rows), with the page decoded by msgspec."""
        return self._fetch(_decode_json)

    def _fetch(self, decode: Callable[[requests.Response], Any]) -> list[Any]:
        if self._request.next_uri is None:
            self._finished = True
            return []
        status = self._process(self._request.get(self._request.next_uri), decode)
        if status.columns:
            self._columns = status.columns
        self._stats.update(status.stats)
        if status.next_uri is None:
            self._finished = True
        return status.rows

    def pages(self) -> Iterator[list[Sequence[Any]]]:
        """The result's rows, one list per non-empty page, each page fetched when asked for.

        Use it instead of the cursor's ``fetch*`` (not with them): whole pages, without the
        generator step and ``fetchone`` call per row of ``cursor.fetchmany``, and each row a
        tuple (see :func:`_decode_page`).
        """
        rows, self._first_rows = self._first_rows, []
        while True:
            if rows:
                yield rows
            if self._finished:
                return
            try:
                rows = self._fetch(_decode_page)
            except prestodb.exceptions.HttpError as err:
                # What the cursor's fetchone makes of it, so a failure reads as it always did.
                raise prestodb.exceptions.OperationalError(str(err)) from err


def start_streaming_query(cursor: Any, sql: str) -> None:
    """Start ``sql`` on ``cursor`` so that ``fetchmany`` pulls result pages on demand.

    For a ``prestodb`` cursor the query is submitted with its first request only; the pages
    follow as rows are consumed (``prestodb``'s own ``execute`` would read them all first). Any
    other DB-API cursor gets a plain ``execute``.
    """
    request = getattr(cursor, "_request", None)
    if not isinstance(cursor, prestodb.dbapi.Cursor) or request is None:
        cursor.execute(sql)
        return
    query = _StreamingQuery(request, sql=sql)
    result = query.execute()
    # The cursor's fetch*/description/cancel work off these two attributes.
    cursor._query = query
    cursor._iterator = iter(result)


class _Prefetcher:
    """Iterate ``batches`` in a background thread, at most ``max_rows`` rows ahead of the
    consumer (so memory stays bounded): while the consumer converts, encodes and uploads, the
    thread already waits for the next Presto pages. A failure in the thread is raised by the
    iteration, after the batches that came before it, as if it were read in line.
    """

    def __init__(self, batches: Iterator[list[Any]], max_rows: int) -> None:
        self._batches = batches
        self._max_rows = max_rows
        self._queue: deque[list[Any]] = deque()
        self._queued_rows = 0
        self._error: BaseException | None = None
        self._done = False
        self._closed = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="extract-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for batch in self._batches:
                with self._changed:
                    while self._queued_rows >= self._max_rows and not self._closed:
                        self._changed.wait()
                    if self._closed:
                        return
                    self._queue.append(batch)
                    self._queued_rows += len(batch)
                    self._changed.notify_all()
        except BaseException as err:  # handed to the consumer, raised there
            self._error = err
        finally:
            with self._changed:
                self._done = True
                self._changed.notify_all()

    def __iter__(self) -> Iterator[list[Any]]:
        while True:
            with self._changed:
                while not self._queue and not self._done:
                    self._changed.wait()
                if not self._queue:
                    if self._error is not None:
                        raise self._error
                    return
                batch = self._queue.popleft()
                self._queued_rows -= len(batch)
                self._changed.notify_all()
            yield batch

    def close(self, timeout: float = 60.0) -> None:
        """Stop fetching and wait (up to ``timeout`` s: one page request) for the thread."""
        with self._changed:
            self._closed = True
            self._queue.clear()
            self._changed.notify_all()
        self._thread.join(timeout)


def presto_failure(err: Exception, label: str) -> ExtractError:
    """The ``PrestoQueryFailedError`` for a Presto client error, classified (``kind``,
    ``category``); ``label`` (e.g. ``" for <context>"`` or ``""``) goes into the message."""
    verdict = classify(err)
    if isinstance(err, prestodb.exceptions.PrestoQueryError):
        query_id = f" (query {err.query_id})" if err.query_id else ""
        return PrestoQueryFailedError(
            f"Presto query failed{label}{query_id}: {err.error_name}: {err.message}",
            kind=verdict.kind,
            category=verdict.category,
        )
    return PrestoQueryFailedError(
        f"Presto request failed{label}: {verdict.message}",
        kind=verdict.kind,
        category=verdict.category,
    )


# What the Presto client raises: query errors (with Presto's error payload), HTTP errors and
# connection failures.
PRESTO_ERRORS: tuple[type[Exception], ...] = (
    prestodb.exceptions.PrestoQueryError,
    prestodb.exceptions.DatabaseError,
    prestodb.exceptions.HttpError,
    requests.exceptions.RequestException,
)


def _cancel_quietly(cursor: Any) -> None:
    with contextlib.suppress(Exception):
        cursor.cancel()


def utc_now() -> str:
    """The current UTC time as ISO 8601 to the second (the manifest's timestamps)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# -- the extraction ----------------------------------------------------------------------------


def _fetchmany_batches(cursor: Any, size: int) -> Iterator[list[Any]]:
    while rows := cursor.fetchmany(size):
        yield rows


def _start(
    cursor: Any, sql: str, chunk_rows: int, label: str
) -> tuple[list[_Column], list[Any], Iterator[list[Any]]]:
    """Start the query; return its columns, its first rows and an iterator over the rest (in
    pages for the Presto client's cursor, in ``fetchmany`` batches for any other)."""
    try:
        start_streaming_query(cursor, sql)
        query = getattr(cursor, "_query", None)
        if isinstance(query, _StreamingQuery):
            rest = query.pages()
            rows = next(rest, [])  # the first page: the column types are checked early
        else:
            rows = cursor.fetchmany(1)  # one row first: the column types are checked early
            rest = _fetchmany_batches(cursor, chunk_rows)
    except PRESTO_ERRORS as err:
        raise presto_failure(err, label) from err
    if not rows:
        raise EmptyExtractError(
            f"The Presto query returned no rows{label}: nothing to extract. Check that the "
            "source data for this window has landed (the data-arrival sensor) and that the "
            "window and filters in the SQL are right."
        )
    return _columns(cursor.description), rows, rest


def _presto_errors_mapped(batches: Iterable[list[Any]], label: str) -> Iterator[list[Any]]:
    iterator = iter(batches)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except PRESTO_ERRORS as err:
            raise presto_failure(err, label) from err
        yield batch


@dataclass(frozen=True)
class _Target:
    bucket: str
    data_prefix: str
    manifest_key: str
    file_format: str


def _upload_parts(s3: Any, target: _Target, tables: Iterable[pa.Table]) -> list[dict[str, Any]]:
    """Encode and upload each table as the next part; return the parts written."""
    encode = _ENCODERS[target.file_format]
    parts: list[dict[str, Any]] = []
    row_count = 0
    for table in tables:
        key = f"{target.data_prefix}part-{len(parts):05d}.{target.file_format}"
        body = encode(table)
        s3.load_bytes(body, key=key, bucket_name=target.bucket, replace=True)
        row_count += table.num_rows
        parts.append(
            {
                "key": key,
                "rows": table.num_rows,
                "bytes": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
            }
        )
        log.info("Wrote %s: %d rows (%d so far)", key, table.num_rows, row_count)
        del table, body  # the next chunk replaces this one in memory, not next to it
    return parts


def _write_parts(
    s3: Any, cursor: Any, sql: str, target: _Target, chunk_rows: int, label: str
) -> tuple[list[_Column], list[dict[str, Any]], str | None]:
    """Run the query and write every ``chunk_rows`` rows as one part; return the columns, the
    parts written and the query id. At most two chunks of rows are in memory: the one being
    written and the one being fetched."""
    columns, first, rest = _start(cursor, sql, chunk_rows, label)
    query_id = (cursor.stats or {}).get("queryId")
    if target.file_format == "csv.gz":
        _check_csv_columns(columns)
    # Only the Presto client's own cursor is read from another thread (DB-API cursors in
    # general need not be thread-safe), and only by that thread until it is closed.
    streaming = isinstance(getattr(cursor, "_query", None), _StreamingQuery)
    prefetch = _Prefetcher(rest, chunk_rows) if streaming else None
    try:
        # From here on the previous output is being replaced: its manifest must not describe it.
        if s3.check_for_key(target.manifest_key, bucket_name=target.bucket):
            s3.delete_objects(bucket=target.bucket, keys=[target.manifest_key])
        batches = _presto_errors_mapped(itertools.chain([first], prefetch or rest), label)
        del first
        parts = _upload_parts(s3, target, _chunk_tables(batches, columns, chunk_rows))
    finally:
        if prefetch is not None:
            prefetch.close()
    return columns, parts, query_id


def _delete_stale_parts(s3: Any, target: _Target, parts: list[dict[str, Any]]) -> None:
    """Delete parts of a previous run (of either format) that this run did not overwrite."""
    written = {p["key"] for p in parts}
    prefix = target.data_prefix
    stale = [
        key
        for key in s3.list_keys(bucket_name=target.bucket, prefix=prefix)
        if PART_NAME.fullmatch(key[len(prefix) :]) and key not in written
    ]
    if stale:
        s3.delete_objects(bucket=target.bucket, keys=stale)
        log.info("Deleted %d stale part(s) of a previous run: %s", len(stale), stale)


def extract_to_s3(
    *,
    sql: str,
    presto_conn_id: str,
    aws_conn_id: str,
    bucket: str,
    prefix: str,
    chunk_rows: int = 50_000,
    context_label: str = "",
    file_format: str = "parquet",
) -> dict[str, Any]:
    """Run ``sql`` on Presto and stream its result to ``s3://bucket/prefix/data/`` in parts.

    :param sql: one Presto statement (already rendered); a trailing ``;`` is removed.
    :param presto_conn_id: Airflow connection of the Presto coordinator (``PrestoHook``).
    :param aws_conn_id: Airflow connection for S3 (``S3Hook``; ``endpoint_url`` in its extra
        points it at a local S3).
    :param bucket: target bucket.
    :param prefix: target prefix without bucket; parts go to ``{prefix}/data/`` and the
        manifest to ``{prefix}/manifest.json``.
    :param chunk_rows: rows per part; bounds the memory used (at most about two chunks of rows:
        the one being written and the one being fetched ahead).
    :param context_label: what is being extracted (e.g. the date window), for error messages.
    :param file_format: ``"parquet"`` (``part-NNNNN.parquet``) or ``"csv.gz"``
        (``part-NNNNN.csv.gz``, for SageMaker batch transform; see the module docstring).
    :returns: the manifest: ``format``, ``data_uri``, ``row_count``, ``part_count``, ``parts``
        (key, rows, bytes, sha256), ``columns`` (name, Presto and Arrow types), ``sql_sha256``,
        ``presto_query_id``, ``context_label``, ``started_at``/``finished_at``. Small and free of
        connection details (it goes to XCom).
    :raises ValueError: ``chunk_rows`` below 1 or an unknown ``file_format``.
    :raises EmptyExtractError: the query returned no rows.
    :raises PrestoQueryFailedError: Presto failed the query (error name and message included).
    :raises UnsupportedPrestoTypeError: a column type cannot be written in ``file_format``.
    :raises ExtractError: a value cannot be converted, or a csv.gz string holds a line break.
    """
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from airflow.providers.presto.hooks.presto import PrestoHook

    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    prefix = prefix.strip("/")
    manifest_key = f"{prefix}/{MANIFEST_NAME}"
    target = _Target(bucket, f"{prefix}/data/", manifest_key, _check_format(file_format))
    sql = sql.strip().rstrip(";").rstrip()
    label = f" for {context_label}" if context_label else ""
    sql_sha256 = hashlib.sha256(sql.encode("utf-8")).hexdigest()
    started_at = utc_now()
    log.info(
        "Extracting Presto query (sql sha256 %s)%s to s3://%s/%s as %s in parts of %d rows",
        sql_sha256[:12],
        label,
        bucket,
        target.data_prefix,
        file_format,
        chunk_rows,
    )
    s3 = S3Hook(aws_conn_id=aws_conn_id)
    cursor = PrestoHook(presto_conn_id=presto_conn_id).get_conn().cursor()
    try:
        columns, parts, query_id = _write_parts(s3, cursor, sql, target, chunk_rows, label)
    except BaseException:
        _cancel_quietly(cursor)
        raise
    _delete_stale_parts(s3, target, parts)
    manifest: dict[str, Any] = {
        "format": file_format,
        "data_uri": f"s3://{bucket}/{target.data_prefix}",
        "row_count": sum(p["rows"] for p in parts),
        "part_count": len(parts),
        "parts": parts,
        "columns": [
            {"name": c.name, "presto_type": c.presto_type, "arrow_type": str(c.arrow_type)}
            for c in columns
        ],
        "sql_sha256": sql_sha256,
        "presto_query_id": query_id,
        "context_label": context_label,
        "started_at": started_at,
        "finished_at": utc_now(),
    }
    s3.load_string(
        json.dumps(manifest, indent=2, sort_keys=True),
        key=manifest_key,
        bucket_name=bucket,
        replace=True,
    )
    log.info(
        "Extracted %d rows in %d part(s)%s; manifest s3://%s/%s",
        manifest["row_count"],
        len(parts),
        label,
        bucket,
        manifest_key,
    )
    return manifest
