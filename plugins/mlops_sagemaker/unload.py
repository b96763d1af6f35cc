"""Presto writes the query result to S3 itself (``extract.mode: presto_unload``).

For results too big to pass through one Airflow worker: instead of streaming rows
(``extract.extract_to_s3``), the task sends one statement and Presto's workers write the Parquet
files in parallel, straight to the run date's prefix::

    DROP TABLE IF EXISTS <catalog>.<schema>.<name>          -- a leftover of a crashed try
    CREATE TABLE <catalog>.<schema>.<name>
    WITH (format = 'PARQUET', external_location = 's3://<bucket>/<prefix>/data/')
    AS <query>
    DROP TABLE <catalog>.<schema>.<name>                    -- metadata only: the files stay

``<catalog>`` is a Hive-connector catalog that may write external tables
(``hive.non-managed-table-writes-enabled=true``; README "Extraction without Airflow"). Presto's
Hive connector treats a table with ``external_location`` as external and drops only its
metadata (prestodb ``HiveMetadata.dropTable``: the data of non-managed tables is kept), so the
files outlive the scratch table. ``<name>`` is content-derived (a fingerprint of the location
and the query), so a re-run for the same run date uses the same name and drops what a crashed
earlier try left.

The manifest has the shape of ``extract_to_s3``'s and is built from the S3 listing: the row
count of each part from its Parquet footer (ranged GETs of the footer only: the data never
passes through Airflow), the column names and types from the Parquet schema. Its parts have no
``sha256`` (that would mean reading every byte here); their ``etag`` identifies the content
instead (``payloads.ExtractManifest.data_fingerprint``). Re-runs: the manifest is removed first
and written last, and the prefix's old files are deleted before Presto writes, so a manifest
always describes one complete set of files.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

# extract.py owns the manifest and the Presto error mapping; this mode reuses both as they are.
from mlops_sagemaker.extract import (
    MANIFEST_NAME,
    PRESTO_ERRORS,
    EmptyExtractError,
    ExtractError,
    UnsupportedPrestoTypeError,
    arrow_type,
    presto_failure,
    utc_now,
)
from mlops_sagemaker.naming import fingerprint

log = logging.getLogger(__name__)

TABLE_PREFIX = "mlops_unload"


def scratch_table(catalog: str, schema: str, data_uri: str, sql: str) -> str:
    """``<catalog>.<schema>.mlops_unload_<fingerprint>``: the same location and query give the
    same name, so a re-run finds (and drops) what an earlier try left."""
    return f"{catalog}.{schema}.{TABLE_PREFIX}_{fingerprint([data_uri, sql], length=16)}"


def ctas_statement(table: str, data_uri: str, sql: str) -> str:
    """The ``CREATE TABLE ... AS`` that makes Presto write ``sql``'s result under ``data_uri``."""
    location = data_uri.replace("'", "''")
    return (
        f"CREATE TABLE {table}\n"
        f"WITH (format = 'PARQUET', external_location = '{location}')\n"
        f"AS\n{sql}"
    )


# -- Arrow (Parquet schema) → Presto type names ----------------------------------------------------

_PRESTO_NAMES = {
    pa.bool_(): "boolean",
    pa.int8(): "tinyint",
    pa.int16(): "smallint",
    pa.int32(): "integer",
    pa.int64(): "bigint",
    pa.float32(): "real",
    pa.float64(): "double",
    pa.string(): "varchar",
    pa.large_string(): "varchar",
    pa.date32(): "date",
    pa.binary(): "varbinary",
}


def presto_type_of(field: pa.Field) -> str:
    """The Presto type a Parquet column of Arrow type ``field.type`` was written from."""
    kind = field.type
    if kind in _PRESTO_NAMES:
        return _PRESTO_NAMES[kind]
    if pa.types.is_decimal(kind):
        return f"decimal({kind.precision},{kind.scale})"
    if pa.types.is_timestamp(kind):
        # Presto's Hive writer stores timestamps as INT96 (read back as ns): millisecond values.
        precision = {"s": 0, "ms": 3, "us": 6, "ns": 3}[kind.unit]
        zone = " with time zone" if kind.tz else ""
        return f"timestamp({precision}){zone}"
    raise UnsupportedPrestoTypeError(
        f"Column {field.name!r} has Parquet/Arrow type {kind}, which the manifest cannot describe: "
        "cast it in the SQL to bigint, integer, double, varchar, date, timestamp, decimal or boolean"
    )


def manifest_columns(schema: pa.Schema) -> list[dict[str, str]]:
    """The manifest's ``columns`` (name, Presto type, Arrow type as ``read_part`` reads it)."""
    columns = []
    for field in schema:
        presto = presto_type_of(field)
        columns.append(
            {"name": field.name, "presto_type": presto, "arrow_type": str(arrow_type(presto)[0])}
        )
    return columns


# -- the S3 listing and the Parquet footers --------------------------------------------------------


class _RangeFile(io.RawIOBase):
    """A read-only, seekable view of one S3 object that fetches only the bytes asked for."""

    def __init__(self, client: Any, bucket: str, key: str, size: int) -> None:
        super().__init__()
        self._client, self._bucket, self._key, self._size, self._pos = client, bucket, key, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        end = min(self._pos + len(buffer), self._size)
        if end <= self._pos:
            return 0
        answer = self._client.get_object(
            Bucket=self._bucket, Key=self._key, Range=f"bytes={self._pos}-{end - 1}"
        )
        data = answer["Body"].read()
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


def _listing(client: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        objects.extend(page.get("Contents", []))
    return sorted(objects, key=lambda o: o["Key"])


def _is_data_file(key: str, prefix: str) -> bool:
    # Hadoop's convention (and Presto's Hive reader): names starting with "." or "_" are hidden
    # (staging folders, _SUCCESS markers), not data.
    name = key[len(prefix) :]
    return bool(name) and "/" not in name and not name.startswith((".", "_"))


def parts_from_listing(
    client: Any, bucket: str, prefix: str
) -> tuple[list[dict[str, Any]], pa.Schema | None]:
    """Each data file under ``prefix`` (key, rows from its footer, bytes, etag) and the
    schema they share (None when there is no file).

    :raises ExtractError: a file is not Parquet, or two files have different schemas.
    """
    parts: list[dict[str, Any]] = []
    schema: pa.Schema | None = None
    for item in _listing(client, bucket, prefix):
        key = item["Key"]
        if not _is_data_file(key, prefix):
            continue
        try:
            metadata = pq.read_metadata(_RangeFile(client, bucket, key, int(item["Size"])))
        except (pa.ArrowException, OSError) as err:
            raise ExtractError(f"s3://{bucket}/{key} is not a Parquet file: {err}") from err
        file_schema = metadata.schema.to_arrow_schema().remove_metadata()
        if schema is not None and not file_schema.equals(schema):
            raise ExtractError(
                f"s3://{bucket}/{key} has schema {file_schema}, the other files {schema}: "
                "the prefix holds files of another write"
            )
        schema = file_schema
        parts.append(
            {
                "key": key,
                "rows": metadata.num_rows,
                "bytes": int(item["Size"]),
                "sha256": None,
                "etag": str(item.get("ETag", "")).strip('"'),
            }
        )
    return parts, schema


def _delete_prefix(client: Any, bucket: str, prefix: str) -> int:
    keys = [o["Key"] for o in _listing(client, bucket, prefix)]
    for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
        batch = [{"Key": k} for k in keys[start : start + 1000]]
        client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
    return len(keys)


# -- the statements --------------------------------------------------------------------------------


def _execute(cursor: Any, sql: str, label: str) -> tuple[list[Any], str | None]:
    """Run one statement to its end; its rows and query id, Presto errors classified."""
    try:
        cursor.execute(sql)
        rows = cursor.fetchall()
    except PRESTO_ERRORS as err:
        raise presto_failure(err, label) from err
    return rows, (cursor.stats or {}).get("queryId")


def _write(cursor: Any, table: str, data_uri: str, sql: str, label: str) -> tuple[int, str | None]:
    """Drop a leftover table, CTAS, drop the table again (also after a failed CTAS)."""
    _execute(cursor, f"DROP TABLE IF EXISTS {table}", label)
    try:
        rows, query_id = _execute(cursor, ctas_statement(table, data_uri, sql), label)
    except BaseException:
        with contextlib.suppress(Exception):  # the next try drops it otherwise
            _execute(cursor, f"DROP TABLE IF EXISTS {table}", label)
        raise
    _execute(cursor, f"DROP TABLE {table}", label)
    return int(rows[0][0]) if rows else 0, query_id


def unload_to_s3(
    *,
    sql: str,
    presto_conn_id: str,
    aws_conn_id: str,
    bucket: str,
    prefix: str,
    catalog: str,
    schema: str,
    context_label: str = "",
) -> dict[str, Any]:
    """Have Presto write ``sql``'s result to ``s3://bucket/prefix/data/`` as Parquet; return
    the manifest (the fields of ``extract_to_s3``'s, also written to ``prefix/manifest.json``).

    :param catalog: a Hive-connector catalog allowed to write external tables.
    :param schema: an existing schema of ``catalog`` for the scratch table.
    :raises EmptyExtractError: the query returned no rows.
    :raises PrestoQueryFailedError: Presto failed a statement (its error name and message).
    :raises ExtractError: the files do not add up to what Presto reported, or are not Parquet.
    """
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from airflow.providers.presto.hooks.presto import PrestoHook

    prefix = prefix.strip("/")
    data_prefix, manifest_key = f"{prefix}/data/", f"{prefix}/{MANIFEST_NAME}"
    data_uri = f"s3://{bucket}/{data_prefix}"
    sql = sql.strip().rstrip(";").rstrip()
    label = f" for {context_label}" if context_label else ""
    table = scratch_table(catalog, schema, data_uri, sql)
    started_at = utc_now()
    client = S3Hook(aws_conn_id=aws_conn_id).get_conn()
    # The previous output is being replaced: first its manifest, then its files.
    client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": manifest_key}], "Quiet": True})
    deleted = _delete_prefix(client, bucket, data_prefix)
    log.info("Unloading via %s to %s (deleted %d old object(s))%s", table, data_uri, deleted, label)
    cursor = PrestoHook(presto_conn_id=presto_conn_id).get_conn().cursor()
    rows, query_id = _write(cursor, table, data_uri, sql, label)
    if rows == 0:
        raise EmptyExtractError(
            f"The Presto query returned no rows{label}: nothing to extract. Check that the "
            "source data for this window has landed (the data-arrival sensor) and that the "
            "window and filters in the SQL are right."
        )
    parts, file_schema = parts_from_listing(client, bucket, data_prefix)
    listed = sum(p["rows"] for p in parts)
    if listed != rows or file_schema is None:
        raise ExtractError(
            f"Presto reported {rows} rows written to {data_uri}, but its Parquet files hold "
            f"{listed}: another writer shares the prefix, or the write was cut short; re-run"
        )
    manifest: dict[str, Any] = {
        "format": "parquet",
        "data_uri": data_uri,
        "row_count": rows,
        "part_count": len(parts),
        "parts": parts,
        "columns": manifest_columns(file_schema),
        "sql_sha256": hashlib.sha256(sql.encode("utf-8")).hexdigest(),
        "presto_query_id": query_id,
        "context_label": context_label,
        "started_at": started_at,
        "finished_at": utc_now(),
    }
    body = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")
    client.put_object(Bucket=bucket, Key=manifest_key, Body=body)
    log.info("Presto wrote %d rows in %d file(s)%s; manifest s3://%s/%s",
             rows, len(parts), label, bucket, manifest_key)  # fmt: skip
    return manifest
