"""Checking and publishing batch-transform output, with real pyarrow against a moto S3 server.

The input is a real csv.gz extraction (the Presto stand-in through ``extract_to_s3``); the
transform output is written here the way SageMaker writes it with ``JoinSource=Input`` and
``OutputFilter "$[0,-2,-1]"``: ``<part>.csv.gz.out``, plain text, ``key,prediction,probability``.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Callable, Iterator

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from local_stack.presto_standin import PrestoStandin
from mlops_sagemaker.extract import extract_to_s3, part_uris, read_part
from mlops_sagemaker.failures import Kind
from mlops_sagemaker.predictions import (
    PredictionCheckFailed,
    PredictionSummary,
    check_and_publish,
)

BUCKET = "mlops-predictions-test"
DS = "1996-03-01"
ARN = "arn:aws:sagemaker:us-east-1:123456789012:model-package/tpch-orders/3"
# tiny's orderkeys up to 100: 1-7, 32-39, 64-71, 96-100, in parts of 10, 10 and 8 rows:
# part-00000 = 1-7, 32-34; part-00001 = 35-39, 64-68; part-00002 = 69-71, 96-100.
INPUT_SQL = "SELECT orderkey, totalprice FROM orders WHERE orderkey <= 100 ORDER BY orderkey"
# The same rows plus orderkey 1 again at the end: part-00000 and part-00002 both hold key 1.
DUPLICATE_SQL = """
    SELECT orderkey, totalprice FROM (
        SELECT orderkey, totalprice, 0 AS pos FROM orders WHERE orderkey <= 100
        UNION ALL SELECT orderkey, totalprice, 1 AS pos FROM orders WHERE orderkey = 1
    ) ORDER BY pos, orderkey
"""

Lines = dict[str, list[str]]  # output object name -> its lines


@pytest.fixture(scope="module")
def s3(s3_endpoint: str) -> Iterator:
    # A client of its own: the module's extraction manifests ride on it as an attribute.
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    extra = {"endpoint_url": s3_endpoint, "region_name": "us-east-1"}
    aws = {"conn_type": "aws", "login": "testing", "password": "testing", "extra": extra}
    with PrestoStandin(port=0, schemas=("tiny",)) as presto, pytest.MonkeyPatch.context() as mp:
        presto_conn = {
            "conn_type": "presto",
            "host": "127.0.0.1",
            "port": presto.port,
            "login": "airflow",
            "schema": "tiny",
            "extra": {"catalog": "tpch"},
        }
        mp.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(aws))
        mp.setenv("AIRFLOW_CONN_PRESTO_DEFAULT", json.dumps(presto_conn))
        client.manifests = {  # type: ignore[attr-defined]
            name: extract_to_s3(
                sql=sql,
                presto_conn_id="presto_default",
                aws_conn_id="aws_default",
                bucket=BUCKET,
                prefix=f"inference/{name}/extract",
                chunk_rows=10,
                file_format="csv.gz",
            )
            for name, sql in (("orders", INPUT_SQL), ("duplicates", DUPLICATE_SQL))
        }
    yield client


@pytest.fixture
def prefix(request) -> str:
    """A folder of this test's own (the bucket is shared by the module)."""
    return f"runs/{request.node.name}"


def keys_under(s3, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def body(s3, key: str) -> bytes:
    return s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def probability(key: int) -> float:
    return (key * 37 % 100) / 100


def transform_lines(s3, manifest: dict) -> Lines:
    """What the transform writes for each input part: ``key,prediction,probability`` lines."""
    lines = {}
    for uri in part_uris(manifest):
        name = uri.rsplit("/", 1)[1] + ".out"
        keys = read_part(body(s3, uri.split("/", 3)[3]), manifest).column(0).to_pylist()
        lines[name] = [f"{k},{int(probability(k) >= 0.5)},{probability(k)!r}" for k in keys]
    return lines


def write_output(s3, prefix: str, lines: Lines) -> str:
    for name, records in lines.items():
        text = "".join(f"{line}\n" for line in records)
        s3.put_object(Bucket=BUCKET, Key=f"{prefix}/transform/{name}", Body=text.encode())
    return f"s3://{BUCKET}/{prefix}/transform/"


def publish(s3, prefix: str, lines: Lines | None = None, *, input_name: str = "orders", **kw):
    manifest = s3.manifests[input_name]
    output_uri = write_output(s3, prefix, transform_lines(s3, manifest) if lines is None else lines)
    arguments = {
        "manifest": manifest,
        "transform_output_uri": output_uri,
        "predictions_uri": f"s3://{BUCKET}/{prefix}/predictions/ds={DS}/",
        "model_package_arn": ARN,
        "ds": DS,
        "key_column": "orderkey",
    }
    return check_and_publish(s3, **{**arguments, **kw})


def edited(s3, change: Callable[[Lines], None]) -> Lines:
    lines = transform_lines(s3, s3.manifests["orders"])
    change(lines)
    return lines


# -- publishing --------------------------------------------------------------------------------


def test_checked_output_is_published_as_parquet(s3, prefix):
    summary = publish(s3, prefix)

    folder = f"{prefix}/predictions/ds={DS}/"
    assert keys_under(s3, folder) == [
        f"{folder}_manifest.json",
        f"{folder}part-00000.parquet",
        f"{folder}part-00001.parquet",
        f"{folder}part-00002.parquet",
    ]
    tables = [
        pq.read_table(io.BytesIO(body(s3, f"{folder}part-0000{i}.parquet"))) for i in range(3)
    ]
    assert [t.num_rows for t in tables] == [10, 10, 8]
    table = pa.concat_tables(tables)
    assert [(f.name, str(f.type)) for f in table.schema] == [
        ("orderkey", "int64"),
        ("probability", "double"),
        ("predicted_label", "int64"),
        ("model_package_arn", "string"),
        ("run_date", "date32[day]"),
    ]
    keys = [*range(1, 8), *range(32, 40), *range(64, 72), *range(96, 101)]
    assert table.to_pylist() == [
        {
            "orderkey": k,
            "probability": probability(k),
            "predicted_label": int(probability(k) >= 0.5),
            "model_package_arn": ARN,
            "run_date": dt.date(1996, 3, 1),
        }
        for k in keys
    ]
    metadata = pq.ParquetFile(io.BytesIO(body(s3, f"{folder}part-00000.parquet"))).metadata
    assert metadata.row_group(0).column(1).compression == "SNAPPY"

    positives = sum(probability(k) >= 0.5 for k in keys)
    assert summary == PredictionSummary(
        rows=28,
        parts=3,
        output_uri=f"s3://{BUCKET}/{folder}",
        model_package_arn=ARN,
        ds=DS,
        positive_rate=positives / 28,
    )
    assert 0 < positives < 28
    assert PredictionSummary.from_xcom(json.loads(json.dumps(summary.as_xcom()))) == summary
    assert json.loads(body(s3, f"{folder}_manifest.json")) == {
        "rows": 28,
        "parts": 3,
        "model_package_arn": ARN,
        "ds": DS,
        "positive_rate": positives / 28,
    }


def test_rerun_writes_byte_identical_files(s3, prefix):
    publish(s3, prefix)
    folder = f"{prefix}/predictions/"
    first = {key: body(s3, key) for key in keys_under(s3, folder)}

    publish(s3, prefix)

    assert {key: body(s3, key) for key in keys_under(s3, folder)} == first


def test_rerun_deletes_what_a_previous_run_left_in_its_partition_only(s3, prefix):
    folder = f"{prefix}/predictions/ds={DS}/"
    other_date = f"{prefix}/predictions/ds=1996-02-29/part-00000.parquet"
    for key in (f"{folder}part-00007.parquet", f"{folder}notes.txt", other_date):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"old")

    publish(s3, prefix)

    assert keys_under(s3, folder) == [
        f"{folder}_manifest.json",
        *(f"{folder}part-0000{i}.parquet" for i in range(3)),
    ]
    assert body(s3, other_date) == b"old"


# -- checks ------------------------------------------------------------------------------------


def failure(s3, prefix: str, lines: Lines | None = None, **kw) -> str:
    with pytest.raises(PredictionCheckFailed) as raised:
        publish(s3, prefix, lines, **kw)
    assert raised.value.kind is Kind.PERMANENT
    return str(raised.value)


def test_truncated_part_names_counts_and_missing_keys_and_keeps_the_last_publication(s3, prefix):
    publish(s3, prefix)
    published = {key: body(s3, key) for key in keys_under(s3, f"{prefix}/predictions/")}

    def truncate(lines: Lines) -> None:
        del lines["part-00001.csv.gz.out"][2:]  # keys 37-39 and 64-68 are lost

    message = failure(s3, prefix, edited(s3, truncate))

    assert message.startswith(
        "Transform output part-00001.csv.gz.out has 2 rows, input part-00001.csv.gz has 10; "
        "missing keys: 37, 38, 39, 64, 65, ... (3 more). "
    )
    assert f"s3://{BUCKET}/inference/orders/extract/data/" in message  # where to re-run from
    assert {key: body(s3, key) for key in keys_under(s3, f"{prefix}/predictions/")} == published


def test_missing_output_object_is_named(s3, prefix):
    lines = edited(s3, lambda lines: lines.pop("part-00002.csv.gz.out"))
    message = failure(s3, prefix, lines)
    assert (
        f"The transform output s3://{BUCKET}/{prefix}/transform/ lacks 1 of 3 output objects: "
        "part-00002.csv.gz.out. "
    ) in message
    assert keys_under(s3, f"{prefix}/predictions/") == []


def test_empty_output_object_is_a_truncated_part(s3, prefix):
    lines = edited(s3, lambda lines: lines["part-00002.csv.gz.out"].clear())
    message = failure(s3, prefix, lines)
    assert message.startswith(
        "Transform output part-00002.csv.gz.out has 0 rows, input part-00002.csv.gz has 8; "
        "missing keys: 69, 70, 71, 96, 97, ... (3 more). "
    )


def test_key_not_in_the_input_is_named(s3, prefix):
    def replace(lines: Lines) -> None:
        lines["part-00000.csv.gz.out"][2] = "999999,1,0.75"  # instead of key 3

    message = failure(s3, prefix, edited(s3, replace))
    assert message.startswith(
        "Transform output part-00000.csv.gz.out has 10 rows, input part-00000.csv.gz has 10; "
        "missing keys: 3; keys not in the input: 999999. "
    )
    assert keys_under(s3, f"{prefix}/predictions/") == []


def test_key_repeated_across_parts_is_named(s3, prefix):
    message = failure(s3, prefix, input_name="duplicates")
    assert message.startswith(
        "1 key(s) appear more than once across the transform output: 1 (2 times) "
        "(in part-00000.csv.gz.out, part-00002.csv.gz.out). "
        "Each orderkey must identify one record"
    )
    assert keys_under(s3, f"{prefix}/predictions/") == []


@pytest.mark.parametrize(
    ("bad", "shown"),
    [("1.5", "'1.5'"), ("nan", "'nan'"), ("-0.1", "'-0.1'"), ("", "None"), ("high", "'high'")],
)
def test_probability_outside_0_1_or_not_a_number_is_named(s3, prefix, bad, shown):
    def spoil(lines: Lines) -> None:
        part = lines["part-00001.csv.gz.out"]
        part[1] = f"36,1,{bad}"
        part[3] = f"38,0,{bad}"

    message = failure(s3, prefix, edited(s3, spoil))
    assert message.startswith(
        "Transform output part-00001.csv.gz.out has 2 row(s) whose probability is not a number "
        f"in [0, 1]: keys 36 ({shown}), 38 ({shown}). "
    )
    assert keys_under(s3, f"{prefix}/predictions/") == []


def test_prediction_other_than_0_or_1_is_named(s3, prefix):
    def spoil(lines: Lines) -> None:
        lines["part-00000.csv.gz.out"][0] = "1,2,0.37"

    message = failure(s3, prefix, edited(s3, spoil))
    assert message.startswith(
        "Transform output part-00000.csv.gz.out has 1 row(s) whose prediction is not 0 or 1: "
        "keys 1 ('2'). "
    )


def test_output_that_is_not_key_prediction_probability_is_refused(s3, prefix):
    def widen(lines: Lines) -> None:
        lines["part-00000.csv.gz.out"][0] = "1,172799.49,0,0.37"  # OutputFilter left at "$"

    message = failure(s3, prefix, edited(s3, widen))
    assert message.startswith(
        "Transform output part-00000.csv.gz.out is not 'key,prediction,probability' CSV"
    )
    assert 'OutputFilter "$[0,-2,-1]"' in message


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"key_column": "custkey"}, "The key column is 'custkey', but the extraction's first"),
        (
            {"predictions_uri": f"s3://{BUCKET}/x/predictions/"},
            f"predictions_uri s3://{BUCKET}/x/predictions/ must be the run date's partition",
        ),
    ],
)
def test_arguments_that_do_not_fit_fail_before_reading(s3, prefix, arguments, expected):
    assert failure(s3, prefix, **arguments).startswith(expected)
