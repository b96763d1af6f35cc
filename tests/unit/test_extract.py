"""Streaming extraction Presto → S3, against the Presto stand-in and a moto S3 server."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import math
import random
import struct
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import botocore.exceptions
import jinja2
import prestodb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
from airflow.providers.amazon.aws.hooks.s3 import S3Hook

from local_stack.presto_standin import PrestoStandin
from mlops_sagemaker import extract as extract_module
from mlops_sagemaker.extract import (
    EmptyExtractError,
    ExtractError,
    PrestoQueryFailedError,
    UnsupportedPrestoTypeError,
    arrow_type,
    extract_to_s3,
    part_uris,
    read_part,
    start_streaming_query,
)

ROOT = Path(__file__).resolve().parents[2]
TRAINING_SQL = ROOT / "include" / "sql" / "tpch_orders" / "training.sql"
BUCKET = "mlops-extract-test"
PAGE_ROWS = 500


@pytest.fixture(scope="module")
def presto() -> Iterator[PrestoStandin]:
    with PrestoStandin(port=0, schemas=("tiny",), page_rows=PAGE_ROWS) as standin:
        yield standin


@pytest.fixture
def s3(s3_bucket):
    """A fresh bucket, reachable through the Airflow connection ``aws_default``."""
    return s3_bucket(BUCKET)


def training_sql(start: str, end: dt.date) -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    env.filters["ds"] = lambda d: d.strftime("%Y-%m-%d")
    return env.from_string(TRAINING_SQL.read_text()).render(
        source={"catalog": "tpch", "schema": "tiny"},
        window_start=lambda _: start,
        data_interval_end=end,
    )


def query(presto: PrestoStandin, sql: str) -> list[list]:
    conn = prestodb.dbapi.connect(
        host="127.0.0.1", port=presto.port, user="test", catalog="tpch", schema="tiny"
    )
    cursor = conn.cursor()
    cursor.execute(sql)
    return cursor.fetchall()


def extract(sql: str, prefix: str, **kwargs) -> dict:
    return extract_to_s3(
        sql=sql,
        presto_conn_id="presto_default",
        aws_conn_id="aws_default",
        bucket=BUCKET,
        prefix=prefix,
        **kwargs,
    )


def keys_under(s3, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def read_parts(s3, prefix: str) -> pa.Table:
    tables = [
        pq.read_table(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()))
        for key in keys_under(s3, f"{prefix}/data/")
    ]
    return pa.concat_tables(tables)


# -- extraction --------------------------------------------------------------------------------


def test_window_extract_equals_query_result(presto, presto_conn, s3):
    sql = training_sql("1996-01-01", dt.date(1996, 3, 1))
    prefix = "tpch_orders/training/1996-02-29/extract"

    manifest = extract(sql, prefix, chunk_rows=100, context_label="window 1996-01-01..1996-03-01")

    expected = query(presto, sql)
    table = read_parts(s3, prefix)
    assert table.num_rows == len(expected) == manifest["row_count"] > 300
    assert table.column("orderkey").to_pylist() == [r[0] for r in expected]
    assert set(table.column("label").to_pylist()) == {0, 1}
    assert table.column("orderdate").to_pylist()[0] == dt.date.fromisoformat(expected[0][1])
    assert table.column("total_extended_price").to_pylist() == [r[2] for r in expected]

    parts = [p["key"] for p in manifest["parts"]]
    assert len(parts) == math.ceil(len(expected) / 100) > 1
    assert parts == keys_under(s3, f"{prefix}/data/")
    assert parts[0] == f"{prefix}/data/part-00000.parquet"
    assert sum(p["rows"] for p in manifest["parts"]) == len(expected)
    assert manifest["data_uri"] == f"s3://{BUCKET}/{prefix}/data/"
    assert manifest["format"] == "parquet"
    assert [(c["name"], c["presto_type"], c["arrow_type"]) for c in manifest["columns"]] == [
        ("orderkey", "bigint", "int64"),
        ("orderdate", "date", "date32[day]"),
        ("total_extended_price", "double", "double"),
        ("avg_discount", "double", "double"),
        ("total_quantity", "double", "double"),
        ("lineitem_count", "bigint", "int64"),
        ("total_payable_tax", "double", "double"),
        ("label", "integer", "int32"),
    ]
    assert table.schema.field("label").type == pa.int32()
    assert len(manifest["sql_sha256"]) == 64
    assert manifest["started_at"] <= manifest["finished_at"]
    stored = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{prefix}/manifest.json")["Body"].read())
    assert stored == manifest
    assert "password" not in json.dumps(manifest) and "testing" not in json.dumps(manifest)


def test_rerun_with_fewer_rows_removes_stale_parts(presto, presto_conn, s3):
    prefix = "rerun/extract"
    first = extract(training_sql("1996-01-01", dt.date(1996, 3, 1)), prefix, chunk_rows=50)
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/data/_SUCCESS", Body=b"")  # not a part: kept

    second = extract(training_sql("1996-02-01", dt.date(1996, 3, 1)), prefix, chunk_rows=50)

    assert second["part_count"] < first["part_count"]
    remaining = keys_under(s3, f"{prefix}/data/")
    assert remaining == sorted([p["key"] for p in second["parts"]] + [f"{prefix}/data/_SUCCESS"])
    table = read_parts_listed(s3, second)
    assert table.num_rows == second["row_count"]
    assert min(table.column("orderdate").to_pylist()) >= dt.date(1996, 2, 1)


def read_parts_listed(s3, manifest: dict) -> pa.Table:
    return pa.concat_tables(
        pq.read_table(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=p["key"])["Body"].read()))
        for p in manifest["parts"]
    )


def test_same_data_gives_same_parts(presto, presto_conn, s3):
    sql = training_sql("1996-01-01", dt.date(1996, 1, 15))
    first = extract(sql, "same/a", chunk_rows=30)
    second = extract(sql, "same/a", chunk_rows=30)
    assert first["part_count"] > 1
    assert [p["sha256"] for p in first["parts"]] == [p["sha256"] for p in second["parts"]]


def test_empty_window_fails_and_keeps_previous_output(presto, presto_conn, s3):
    prefix = "empty/extract"
    extract(training_sql("1996-01-01", dt.date(1996, 1, 10)), prefix)

    with pytest.raises(EmptyExtractError) as raised:
        extract(
            training_sql("2005-01-01", dt.date(2005, 2, 1)),
            prefix,
            context_label="window 2005-01-01..2005-02-01",
        )

    message = str(raised.value)
    assert "returned no rows" in message
    assert "window 2005-01-01..2005-02-01" in message
    assert f"{prefix}/manifest.json" in keys_under(s3, prefix)  # the earlier output is intact


def test_presto_error_carries_prestos_message(presto, presto_conn, s3):
    with pytest.raises(PrestoQueryFailedError) as raised:
        extract("SELECT * FROM tpch.tiny.nope", "error/extract", context_label="ds 1996-01-01")
    message = str(raised.value)
    assert "SYNTAX_ERROR" in message
    assert "Table tpch.tiny.nope does not exist" in message
    assert "ds 1996-01-01" in message
    assert keys_under(s3, "error/") == []


def test_failure_mid_stream_leaves_no_manifest(presto, presto_conn, s3):
    prefix = "midstream/extract"
    extract("SELECT orderkey FROM orders", prefix, chunk_rows=5000)
    sql = "SELECT orderkey FROM orders /* standin:fail after_pages=4 */"

    with pytest.raises(PrestoQueryFailedError, match="GENERIC_INTERNAL_ERROR"):
        extract(sql, prefix, chunk_rows=500)

    keys = keys_under(s3, prefix)
    assert f"{prefix}/manifest.json" not in keys  # no manifest describes a half-written output
    assert f"{prefix}/data/part-00000.parquet" in keys


def test_types_are_written_as_arrow_types(presto, presto_conn, s3):
    sql = """
        SELECT orderkey, CAST(shippriority AS integer) AS shippriority, totalprice,
               CAST(totalprice AS real) AS price_real, CAST(totalprice AS decimal(12,2)) AS price_dec,
               orderdate, CAST(orderdate AS timestamp) AS order_ts, orderstatus = 'F' AS finished,
               clerk, CAST(NULL AS varchar) AS nothing
        FROM orders WHERE orderkey IN (1, 2, 3) ORDER BY orderkey
    """
    manifest = extract(sql, "types/extract")
    table = read_parts(s3, "types/extract")
    assert [(f.name, str(f.type)) for f in table.schema] == [
        ("orderkey", "int64"),
        ("shippriority", "int32"),
        ("totalprice", "double"),
        ("price_real", "float"),
        ("price_dec", "decimal128(12, 2)"),
        ("orderdate", "date32[day]"),
        ("order_ts", "timestamp[ms]"),
        ("finished", "bool"),
        ("clerk", "string"),
        ("nothing", "string"),
    ]
    first = table.to_pylist()[0]
    assert first["orderkey"] == 1
    assert first["price_dec"] == Decimal("172799.49")
    assert first["orderdate"] == dt.date(1996, 1, 2)
    assert first["order_ts"] == dt.datetime(1996, 1, 2)
    assert first["finished"] is False and first["nothing"] is None
    assert manifest["row_count"] == 3


def test_unsupported_type_fails_before_writing(presto, presto_conn, s3):
    with pytest.raises(UnsupportedPrestoTypeError, match="array"):
        extract("SELECT orderkey, ARRAY[orderkey] AS keys FROM orders", "array/extract")
    assert keys_under(s3, "array/") == []


def test_duplicate_column_names_fail(presto, presto_conn, s3):
    with pytest.raises(ExtractError, match="duplicate column names"):
        extract("SELECT orderkey, orderkey FROM orders", "dup/extract")


# -- csv.gz parts ------------------------------------------------------------------------------

TYPES_SQL = """
    SELECT orderkey, CAST(shippriority AS integer) AS shippriority, totalprice,
           totalprice / 7 AS price_7th, CAST(totalprice AS decimal(12,2)) AS price_dec,
           CASE orderkey WHEN 1 THEN CAST('0.00000001' AS decimal(20,12))
                         WHEN 2 THEN CAST(0 AS decimal(20,12)) END AS tiny_dec,
           orderdate, CASE orderkey WHEN 1 THEN 'a,b "c"' WHEN 2 THEN '' END AS note,
           CAST(orderdate AS timestamp) AS order_ts, orderstatus = 'F' AS finished,
           CAST(NULL AS date) AS no_date
    FROM orders WHERE orderkey IN (1, 2, 3) ORDER BY orderkey
"""


def get_body(s3, uri: str) -> bytes:
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def read_all(s3, manifest: dict) -> pa.Table:
    return pa.concat_tables(read_part(get_body(s3, uri), manifest) for uri in part_uris(manifest))


def test_csv_parts_read_back_with_the_manifests_types(presto, presto_conn, s3):
    manifest = extract(TYPES_SQL, "csvtypes/extract", file_format="csv.gz")
    table = read_all(s3, manifest)

    assert manifest["format"] == "csv.gz"
    assert part_uris(manifest) == [f"s3://{BUCKET}/csvtypes/extract/data/part-00000.csv.gz"]
    assert table.equals(read_all(s3, extract(TYPES_SQL, "csvtypes/parquet")))
    assert [str(f.type) for f in table.schema] == [c["arrow_type"] for c in manifest["columns"]]
    assert table.to_pylist() == [
        {
            "orderkey": 1,
            "shippriority": 0,
            "totalprice": 172799.49,
            "price_7th": 24685.641428571427,
            "price_dec": Decimal("172799.49"),
            "tiny_dec": Decimal("0.000000010000"),
            "orderdate": dt.date(1996, 1, 2),
            "note": 'a,b "c"',
            "order_ts": dt.datetime(1996, 1, 2),
            "finished": False,
            "no_date": None,
        },
        {
            "orderkey": 2,
            "shippriority": 0,
            "totalprice": 38426.09,
            "price_7th": 5489.441428571428,
            "price_dec": Decimal("38426.09"),
            "tiny_dec": Decimal("0E-12"),
            "orderdate": dt.date(1996, 12, 1),
            "note": "",  # an empty string stays an empty string, not NULL
            "order_ts": dt.datetime(1996, 12, 1),
            "finished": False,
            "no_date": None,
        },
        {
            "orderkey": 3,
            "shippriority": 0,
            "totalprice": 205654.3,
            "price_7th": 29379.18571428571,
            "price_dec": Decimal("205654.30"),
            "tiny_dec": None,
            "orderdate": dt.date(1993, 10, 14),
            "note": None,
            "order_ts": dt.datetime(1993, 10, 14),
            "finished": True,
            "no_date": None,
        },
    ]


def test_csv_text_is_headerless_rfc4180_with_plain_decimals(presto, presto_conn, s3):
    manifest = extract(TYPES_SQL, "csvtext/extract", file_format="csv.gz")
    body = get_body(s3, part_uris(manifest)[0])

    assert body[:4] == b"\x1f\x8b\x08\x00"  # gzip, no file name in the header
    assert body[4:8] == b"\x00\x00\x00\x00"  # mtime 0
    assert gzip.decompress(body).decode().split("\n") == [
        '1,0,172799.49,24685.641428571427,172799.49,"0.000000010000",1996-01-02,"a,b ""c""",'
        "1996-01-02 00:00:00.000,false,",
        '2,0,38426.09,5489.441428571428,38426.09,"0.000000000000",1996-12-01,"",'
        "1996-12-01 00:00:00.000,false,",
        "3,0,205654.3,29379.18571428571,205654.30,,1993-10-14,,1993-10-14 00:00:00.000,true,",
        "",
    ]


def test_csv_doubles_round_trip_exactly(presto, presto_conn, s3):
    sql = """
        SELECT orderkey, totalprice / 7 AS a, sqrt(totalprice) AS b, totalprice * 1e-300 AS c,
               1 / (totalprice * 1e-300) AS d
        FROM orders ORDER BY orderkey
    """
    manifest = extract(sql, "csvfloat/extract", chunk_rows=5000, file_format="csv.gz")
    table = read_all(s3, manifest)

    expected = query(presto, sql)
    assert manifest["part_count"] == 3 and table.num_rows == len(expected) == 15000
    for index, name in enumerate(["a", "b", "c", "d"], start=1):
        values = table.column(name).to_pylist()
        assert [v.hex() for v in values] == [row[index].hex() for row in expected], name


def test_csv_rerun_gives_byte_identical_parts(presto, presto_conn, s3):
    sql = training_sql("1996-01-01", dt.date(1996, 1, 15))
    first = extract(sql, "csvsame/extract", chunk_rows=30, file_format="csv.gz")
    first_bodies = [get_body(s3, uri) for uri in part_uris(first)]
    second = extract(sql, "csvsame/extract", chunk_rows=30, file_format="csv.gz")

    assert first["part_count"] > 1
    assert [get_body(s3, uri) for uri in part_uris(second)] == first_bodies
    assert [p["sha256"] for p in second["parts"]] == [p["sha256"] for p in first["parts"]]


def test_switching_format_deletes_the_other_formats_parts(presto, presto_conn, s3):
    sql = training_sql("1996-01-01", dt.date(1996, 3, 1))
    prefix = "switch/extract"
    parquet = extract(sql, prefix, chunk_rows=50)
    parquet_table = read_all(s3, parquet)

    csv = extract(sql, prefix, chunk_rows=50, file_format="csv.gz")

    assert csv["part_count"] == parquet["part_count"] > 1
    assert keys_under(s3, f"{prefix}/data/") == [p["key"] for p in csv["parts"]]
    assert all(p["key"].endswith(".csv.gz") for p in csv["parts"])
    stored = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{prefix}/manifest.json")["Body"].read())
    assert stored["format"] == "csv.gz"
    assert read_all(s3, csv).equals(parquet_table)

    back = extract(sql, prefix, chunk_rows=400)
    assert keys_under(s3, f"{prefix}/data/") == [p["key"] for p in back["parts"]]
    assert [p["key"] for p in back["parts"]] == [f"{prefix}/data/part-00000.parquet"]


def test_unknown_format_names_the_allowed_ones(presto, presto_conn, s3):
    with pytest.raises(ValueError, match=r"'csv'.*'parquet', 'csv\.gz'"):
        extract("SELECT orderkey FROM orders", "badformat/extract", file_format="csv")
    assert keys_under(s3, "badformat/") == []


def test_csv_refuses_line_breaks_in_strings(presto, presto_conn, s3):
    sql = "SELECT orderkey, 'a' || chr(10) || 'b' AS note FROM orders WHERE orderkey < 5"
    with pytest.raises(ExtractError, match=r"Column 'note' has 4 value\(s\) with a line break"):
        extract(sql, "newline/extract", file_format="csv.gz")
    assert keys_under(s3, "newline/") == []  # refused before the first part is written


def test_csv_refuses_varbinary(presto, presto_conn, s3):
    sql = "SELECT orderkey, to_utf8(clerk) AS raw FROM orders"
    with pytest.raises(UnsupportedPrestoTypeError, match=r"to_base64\(raw\)"):
        extract(sql, "binary/extract", file_format="csv.gz")
    assert keys_under(s3, "binary/") == []


# -- streaming ---------------------------------------------------------------------------------


def test_query_streams_pages_on_demand_and_cancels(presto):
    conn = prestodb.dbapi.connect(
        host="127.0.0.1", port=presto.port, user="test", catalog="tpch", schema="tiny"
    )
    cursor = conn.cursor()

    start_streaming_query(cursor, "SELECT * FROM lineitem")
    first = cursor.fetchmany(10)
    query_id = cursor.stats["queryId"]

    assert len(first) == 10
    assert cursor.description[0][:2] == ("orderkey", "bigint")
    info = presto.query_info(query_id)
    assert info["pages"] == 1 and info["rows"] == PAGE_ROWS  # not the 60,175 rows of lineitem
    assert len(cursor.fetchmany(PAGE_ROWS)) == PAGE_ROWS
    assert presto.query_info(query_id)["pages"] == 2

    cursor.cancel()  # the real client's DELETE /v1/query/{id}
    assert presto.query_info(query_id)["cancelled"]


def test_plain_prestodb_execute_reads_every_page_first(presto):
    """Why ``start_streaming_query`` exists: prestodb 0.8.4's own execute drains the result."""
    conn = prestodb.dbapi.connect(
        host="127.0.0.1", port=presto.port, user="test", catalog="tpch", schema="tiny"
    )
    cursor = conn.cursor()
    cursor.execute("SELECT orderkey FROM orders")
    assert presto.query_info(cursor.stats["queryId"])["state"] == "FINISHED"


# -- type mapping ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("presto_type", "arrow", "value", "converted"),
    [
        ("bigint", pa.int64(), 5, 5),
        ("integer", pa.int32(), 5, 5),
        ("double", pa.float64(), "Infinity", math.inf),
        ("real", pa.float32(), 1.5, 1.5),
        ("varchar(25)", pa.string(), "x", "x"),
        ("char(1)", pa.string(), "x", "x"),
        ("boolean", pa.bool_(), True, True),
        ("date", pa.date32(), "1996-01-02", dt.date(1996, 1, 2)),
        ("decimal(12,2)", pa.decimal128(12, 2), "1.50", Decimal("1.50")),
        (
            "timestamp",
            pa.timestamp("ms"),
            "1996-01-02 03:04:05.678",
            dt.datetime(1996, 1, 2, 3, 4, 5, 678000),
        ),
        (
            "timestamp(6)",
            pa.timestamp("us"),
            "1996-01-02 03:04:05.123456789",
            dt.datetime(1996, 1, 2, 3, 4, 5, 123456),
        ),
        (
            "timestamp(3) with time zone",
            pa.timestamp("ms", tz="UTC"),
            "1996-01-02 03:04:05.000 +01:00",
            dt.datetime(1996, 1, 2, 2, 4, 5, tzinfo=dt.UTC),
        ),
        (
            "timestamp with time zone",
            pa.timestamp("ms", tz="UTC"),
            "1996-07-02 03:04:05.000 Europe/Paris",
            dt.datetime(1996, 7, 2, 1, 4, 5, tzinfo=dt.UTC),
        ),
        ("varbinary", pa.binary(), "AQI=", b"\x01\x02"),
    ],
)
def test_arrow_type_mapping(presto_type, arrow, value, converted):
    mapped, convert = arrow_type(presto_type)
    assert mapped == arrow
    result = convert(value) if convert else value
    assert pa.array([result], type=mapped).to_pylist()[0] == converted


@pytest.mark.parametrize(
    "presto_type",
    [
        "array(bigint)",
        "map(varchar,bigint)",
        "row(x bigint)",
        "time",
        "interval day to second",
        "hyperloglog",
    ],
)
def test_unsupported_types_are_named(presto_type):
    with pytest.raises(UnsupportedPrestoTypeError, match="Cast it in the SQL"):
        arrow_type(presto_type, "col")


# -- speed-ups keep the output and the failures ------------------------------------------------


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "extract-prefetch" and t.is_alive()]


def reference_parquet(rows: list[list], description: list[tuple[str, str]]) -> bytes:
    """A part as per-value conversion of every value gives it (what the extraction always did)."""
    arrays, fields = [], []
    for index, (name, presto_type) in enumerate(description):
        arrow, convert = arrow_type(presto_type, name)
        values = [row[index] for row in rows]
        if convert is not None:
            values = [None if v is None else convert(v) for v in values]
        arrays.append(pa.array(values, type=arrow))
        fields.append(pa.field(name, arrow))
    buffer = io.BytesIO()
    pq.write_table(
        pa.Table.from_arrays(arrays, schema=pa.schema(fields)), buffer, compression="snappy"
    )
    return buffer.getvalue()


def test_parts_are_byte_identical_to_per_value_conversion(presto, presto_conn, s3):
    # Chunks of 700 rows cut across the stand-in's pages of 500; doubles include NaN and
    # infinities (sent as strings), dates include NULLs.
    sql = """
        SELECT orderkey, orderdate, CASE WHEN orderkey % 3 = 0 THEN orderdate END AS some_date,
               CASE WHEN orderkey % 50 = 1 THEN CAST('NaN' AS double)
                    WHEN orderkey % 50 = 2 THEN CAST('-Infinity' AS double)
                    WHEN orderkey % 7 = 0 THEN NULL ELSE totalprice / 7 END AS price,
               CAST(totalprice AS real) AS price_real, CAST(totalprice AS decimal(12,2)) AS dec,
               CAST(orderdate AS timestamp) AS ts, clerk, CAST(shippriority AS integer) AS prio
        FROM orders WHERE orderkey < 12000 ORDER BY orderkey
    """
    manifest = extract(sql, "identical/extract", chunk_rows=700)

    conn = prestodb.dbapi.connect(
        host="127.0.0.1", port=presto.port, user="test", catalog="tpch", schema="tiny"
    )
    cursor = conn.cursor()
    cursor.execute(sql)
    rows = cursor.fetchall()
    description = [(d[0], d[1]) for d in cursor.description]
    assert manifest["part_count"] == math.ceil(len(rows) / 700) > 3
    for index, uri in enumerate(part_uris(manifest)):
        expected = reference_parquet(rows[index * 700 : (index + 1) * 700], description)
        assert get_body(s3, uri) == expected, uri


def test_s3_failure_mid_stream_stops_fetching_cancels_and_writes_no_manifest(
    presto, presto_conn, s3, monkeypatch
):
    uploads, cancelled = [], []
    load_bytes, cancel = S3Hook.load_bytes, prestodb.dbapi.Cursor.cancel

    def failing_load_bytes(self, body, key, **kwargs):
        if len(uploads) == 2:
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."}},
                "PutObject",
            )
        uploads.append(key)
        return load_bytes(self, body, key=key, **kwargs)

    def recording_cancel(self):
        cancelled.append(self.stats["queryId"])
        return cancel(self)

    monkeypatch.setattr(S3Hook, "load_bytes", failing_load_bytes)
    monkeypatch.setattr(prestodb.dbapi.Cursor, "cancel", recording_cancel)

    with pytest.raises(botocore.exceptions.ClientError, match="SlowDown"):
        extract("SELECT orderkey, comment FROM lineitem", "s3fail/extract", chunk_rows=1000)

    assert keys_under(s3, "s3fail/") == [
        f"s3fail/extract/data/part-0000{i}.parquet" for i in (0, 1)
    ]
    assert prefetch_threads() == []  # the background fetch ended with the extraction
    assert len(cancelled) == 1
    info = presto.query_info(cancelled[0])
    assert info["cancelled"] and info["rows"] < 60_175  # stopped one chunk ahead at most


def test_presto_failure_in_background_fetch_comes_after_the_earlier_parts(presto, presto_conn, s3):
    sql = "SELECT orderkey FROM orders /* standin:fail after_pages=6 error=EXCEEDED_TIME_LIMIT */"
    with pytest.raises(PrestoQueryFailedError) as raised:
        extract(sql, "bgfail/extract", chunk_rows=1000, context_label="ds 1996-01-01")

    message = str(raised.value)
    assert "EXCEEDED_TIME_LIMIT" in message and "ds 1996-01-01" in message
    assert keys_under(s3, "bgfail/") == [
        f"bgfail/extract/data/part-0000{i}.parquet" for i in range(3)
    ]
    assert prefetch_threads() == []


def test_prefetch_stays_at_most_one_chunk_ahead():
    batch_rows, max_rows, consumed = 10, 100, [0]
    leads: list[int] = []

    def batches() -> Iterator[list[int]]:
        for index in range(100):
            leads.append((index + 1) * batch_rows - consumed[0])
            yield [index] * batch_rows

    seen = []
    for batch in extract_module._Prefetcher(batches(), max_rows):
        consumed[0] += len(batch)
        seen.append(batch[0])
        time.sleep(0.002)  # a consumer slower than the producer: the bound is what holds it
    assert seen == list(range(100))
    assert max(leads) <= max_rows + 2 * batch_rows  # queued rows, plus the batch being read
    assert max(leads) >= max_rows  # it does read ahead


def test_prefetch_raises_the_sources_error_after_its_batches_and_close_stops_it():
    def failing() -> Iterator[list[int]]:
        yield [1]
        yield [2]
        raise prestodb.exceptions.HttpError("error 502")

    received = []
    with pytest.raises(prestodb.exceptions.HttpError, match="502"):
        for batch in extract_module._Prefetcher(failing(), 10):
            received.extend(batch)
    assert received == [1, 2]

    def endless() -> Iterator[list[int]]:
        while True:
            yield [0] * 10

    prefetch = extract_module._Prefetcher(endless(), 50)
    next(iter(prefetch))
    prefetch.close(timeout=5)
    assert prefetch_threads() == []


def fake_response(body: bytes) -> requests.Response:
    response = requests.Response()
    response.status_code = 200
    response._content = body
    response.encoding = "utf-8"  # what the Presto client sets before decoding
    return response


def test_page_decoding_matches_the_clients_json_decoding():
    rng = random.Random(11)
    doubles = [
        struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0] for _ in range(3000)
    ]
    doubles = [d for d in doubles if math.isfinite(d)] + [
        0.1,
        1e-320,
        5e-324,
        1.7976931348623157e308,
    ]
    page = json.dumps({"data": [[d, 2**70, "é\u2028"] for d in doubles], "nextUri": None})
    assert extract_module._decode_json(fake_response(page.encode())) == json.loads(page)

    # What msgspec refuses goes to requests' own decoding: same value, or the same error.
    for body in (b'{"data": [[NaN, 1e400]]}', b'{"x": "\\ud800"}', b'{"x": "\xff"}'):
        assert repr(extract_module._decode_json(fake_response(body))) == repr(
            fake_response(body).json()
        )
    with pytest.raises(requests.exceptions.JSONDecodeError):
        extract_module._decode_json(fake_response(b"<html>bad gateway</html>"))

    # Pages for the extraction: the same document, rows as tuples; other shapes as before.
    decoded = extract_module._decode_page(fake_response(page.encode()))
    assert decoded["data"] == [tuple(row) for row in json.loads(page)["data"]]
    assert all(type(row) is tuple for row in decoded["data"])
    for body in (b'{"data": {"not": "rows"}}', b'{"data": [[NaN]]}', b'{"error": {"x": 1}}'):
        assert repr(extract_module._decode_page(fake_response(body))) == repr(
            fake_response(body).json()
        )


@pytest.mark.parametrize(
    ("presto_type", "values"),
    [
        ("double", [1.5, 2, None, -0.0]),
        ("double", [1.5, "NaN", "Infinity", "-Infinity", None]),
        ("real", [1.5, "NaN", None]),
        ("date", ["1996-01-02", None, "9999-12-31", "0001-01-01"]),
        ("date", ["1996-01-02", "19960102"]),  # Python reads the basic form, Arrow's cast does not
    ],
)
def test_bulk_conversion_equals_per_value_conversion(presto_type, values):
    column = extract_module._columns([("c", presto_type)])[0]
    arrow, convert = arrow_type(presto_type)
    expected = pa.array([None if v is None else convert(v) for v in values], type=arrow)
    array = extract_module._column_array(values, column)
    assert array.type == expected.type
    assert repr(array.to_pylist()) == repr(expected.to_pylist())  # NaN and -0.0 compared too


def test_bulk_conversion_fails_like_per_value_conversion():
    column = extract_module._columns([("c", "date")])[0]
    with pytest.raises(ValueError, match="year 0 is out of range"):  # Arrow alone would accept it
        extract_module._column_array(["1996-01-02", "0000-01-01"], column)
    column = extract_module._columns([("c", "double")])[0]
    with pytest.raises(ValueError, match="could not convert string to float"):
        extract_module._column_array([1.0, "oops"], column)


class _ListCursor:
    """A DB-API cursor that is not the Presto client's: read with fetchmany, in this thread."""

    description = [("x", "bigint", None, None, None, None, None)]
    stats = None

    def __init__(self, count: int) -> None:
        self._rows = iter([[i] for i in range(count)])
        self.sizes: list[int] = []
        self.threads: set[str] = set()

    def execute(self, sql: str) -> None:
        pass

    def fetchmany(self, size: int) -> list[list[int]]:
        self.sizes.append(size)
        self.threads.add(threading.current_thread().name)
        return [row for _, row in zip(range(size), self._rows, strict=False)]

    def cancel(self) -> None:
        pass


def test_other_db_api_cursors_are_read_with_fetchmany_in_line(presto_conn, s3, monkeypatch):
    from airflow.providers.presto.hooks.presto import PrestoHook

    cursor = _ListCursor(2500)
    conn = type("Conn", (), {"cursor": lambda self: cursor})()
    monkeypatch.setattr(PrestoHook, "get_conn", lambda self: conn)

    manifest = extract("SELECT x", "dbapi/extract", chunk_rows=1000)

    assert [p["rows"] for p in manifest["parts"]] == [1000, 1000, 500]
    assert cursor.sizes[0] == 1 and set(cursor.sizes[1:]) == {1000}
    assert cursor.threads == {threading.current_thread().name}
    assert read_all(s3, manifest).column("x").to_pylist() == list(range(2500))
