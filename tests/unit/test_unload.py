"""``extract.mode: presto_unload``: the config section, the manifest built from the S3 listing,
and ``unload_to_s3`` against the stand-in's Hive catalog (S3: the moto server)."""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from test_extract import BUCKET, extract, training_sql
from test_requests import run_for, staged, validate

from local_stack.presto_standin import PrestoStandin
from mlops_sagemaker import tasks
from mlops_sagemaker.config import ConfigError, load_use_case
from mlops_sagemaker.extract import EmptyExtractError, ExtractError, PrestoQueryFailedError
from mlops_sagemaker.failures import Kind
from mlops_sagemaker.payloads import ExtractManifest
from mlops_sagemaker.unload import (
    ctas_statement,
    manifest_columns,
    parts_from_listing,
    scratch_table,
    unload_to_s3,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "include" / "config" / "tpch_orders.yaml"
PREFIX = "tpch_orders/training/1996-02-29/extract"


# -- config ------------------------------------------------------------------------------------


def write_config(tmp_path: Path, extract: object) -> Path:
    raw = yaml.safe_load(CONFIG.read_text())
    raw["extract"] = extract
    path = tmp_path / "tpch_orders.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_shipped_config_streams() -> None:
    config = load_use_case(CONFIG)
    assert config.extract.mode == "streaming"
    assert (config.extract.unload.catalog, config.extract.unload.schema_) == (
        "hive",
        "mlops_scratch",
    )


def test_presto_unload_names_catalog_schema_and_instances(tmp_path) -> None:
    unload = {"catalog": "lake", "schema": "scratch", "split_instance_count": 3}
    config = load_use_case(write_config(tmp_path, {"mode": "presto_unload", "unload": unload}))
    assert config.extract.mode == "presto_unload"
    assert config.extract.unload.split_instance_count == 3


@pytest.mark.parametrize(
    ("extract", "field", "message"),
    [
        ({"mode": "unload"}, "extract.mode", "Input should be 'streaming' or 'presto_unload'"),
        ({"mode": "presto_unload", "unload": {"schma": "x"}}, "extract.unload.schma", "Extra"),
        ({"unload": {"catalog": "hive; DROP"}}, "extract.unload.catalog", "should match pattern"),
        (
            {"unload": {"split_instance_count": 0}},
            "extract.unload.split_instance_count",
            "greater than or equal to 1",
        ),
        ({"chunk_rows": 10}, "extract.chunk_rows", "Extra inputs are not permitted"),
    ],
)
def test_config_errors_name_file_and_field(tmp_path, extract, field, message) -> None:
    path = write_config(tmp_path, extract)
    with pytest.raises(ConfigError) as failure:
        load_use_case(path)
    text = str(failure.value)
    assert str(path) in text and f"{field}: " in text and message in text


# -- the sharded split -------------------------------------------------------------------------


def test_the_split_reads_sharded_and_a_baseline_job_follows(tmp_path) -> None:
    unload = {"mode": "presto_unload", "unload": {"split_instance_count": 3}}
    config = load_use_case(write_config(tmp_path, unload))
    run, code, base = run_for("1996-02-29"), staged(), "s3://mlops-local/mlops/tpch_orders"
    parts = [{"key": "k", "rows": 5, "bytes": 9, "sha256": None, "etag": "e"}]
    manifest = ExtractManifest(f"{base}/training/1996-02-29/extract/data/", 5, parts, [])
    split = tasks.plan_split(config, run, code, manifest)
    validate("CreateProcessingJob", split)
    assert split["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == 3
    data = split["ProcessingInputs"][0]["S3Input"]
    assert data["S3DataDistributionType"] == "ShardedByS3Key"
    assert "--shard-outputs" in split["AppSpecification"]["ContainerArguments"]
    outputs = [o["OutputName"] for o in split["ProcessingOutputConfig"]["Outputs"]]
    assert outputs == ["train", "validation", "test"]
    baseline = tasks.plan_baseline(config, run, code, {"Processing": split})
    validate("CreateProcessingJob", baseline)
    assert baseline["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == 1
    assert "-base-" in baseline["ProcessingJobName"]
    (output,) = baseline["ProcessingOutputConfig"]["Outputs"]
    assert output["S3Output"]["S3Uri"] == f"{base}/training/1996-02-29/split/baseline/"
    streaming = tasks.plan_split(load_use_case(CONFIG), run, code, manifest)
    assert streaming["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == 1


# -- the manifest from the listing -------------------------------------------------------------


def parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def test_parts_come_from_the_footers_and_hidden_files_are_skipped(s3_bucket) -> None:
    s3 = s3_bucket(BUCKET)
    rows = {"a_1": 3, "b_2": 5}
    for name, count in rows.items():
        table = pa.table({"k": pa.array(range(count), pa.int64()), "d": pa.array([1.5] * count)})
        s3.put_object(Bucket=BUCKET, Key=f"p/data/{name}", Body=parquet(table))
    s3.put_object(Bucket=BUCKET, Key="p/data/_SUCCESS", Body=b"")
    s3.put_object(Bucket=BUCKET, Key="p/data/.staging", Body=b"x")
    parts, schema = parts_from_listing(s3, BUCKET, "p/data/")
    assert [(p["key"], p["rows"], p["sha256"]) for p in parts] == [
        ("p/data/a_1", 3, None),
        ("p/data/b_2", 5, None),
    ]
    listed = {o["Key"]: o for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="p/")["Contents"]}
    for part in parts:
        assert part["bytes"] == listed[part["key"]]["Size"]
        assert part["etag"] == listed[part["key"]]["ETag"].strip('"')
    assert schema.names == ["k", "d"]


def test_files_of_two_schemas_or_not_parquet_fail(s3_bucket) -> None:
    s3 = s3_bucket(BUCKET)
    s3.put_object(Bucket=BUCKET, Key="q/data/a", Body=parquet(pa.table({"k": [1]})))
    s3.put_object(Bucket=BUCKET, Key="q/data/b", Body=parquet(pa.table({"k": ["x"]})))
    with pytest.raises(ExtractError, match="has schema"):
        parts_from_listing(s3, BUCKET, "q/data/")
    s3.put_object(Bucket=BUCKET, Key="r/data/a", Body=b"not parquet at all")
    with pytest.raises(ExtractError, match="is not a Parquet file"):
        parts_from_listing(s3, BUCKET, "r/data/")


def test_columns_map_parquet_types_to_prestos() -> None:
    schema = pa.schema(
        [("a", pa.int64()), ("b", pa.int32()), ("c", pa.float64()), ("d", pa.string()),
         ("e", pa.date32()), ("f", pa.decimal128(12, 2)), ("g", pa.timestamp("ns")),
         ("h", pa.bool_())]
    )  # fmt: skip
    columns = manifest_columns(schema)
    assert [c["presto_type"] for c in columns] == [
        "bigint", "integer", "double", "varchar", "date", "decimal(12,2)", "timestamp(3)",
        "boolean",
    ]  # fmt: skip
    assert columns[6]["arrow_type"] == "timestamp[ms]"


def test_the_data_fingerprint_ignores_file_names_but_not_content() -> None:
    def manifest(*parts: tuple[str, str]) -> ExtractManifest:
        listed = [{"key": k, "rows": 2, "bytes": 9, "sha256": None, "etag": e} for k, e in parts]
        return ExtractManifest("s3://b/p/data/", 2 * len(parts), listed, [])

    first = manifest(("p/q1_x", "e1"), ("p/q1_y", "e2"))
    assert (
        first.data_fingerprint() == manifest(("p/q2_z", "e2"), ("p/q2_w", "e1")).data_fingerprint()
    )
    assert (
        first.data_fingerprint() != manifest(("p/q1_x", "e1"), ("p/q1_y", "e3")).data_fingerprint()
    )


# -- unload_to_s3 against the stand-in ---------------------------------------------------------


@pytest.fixture(scope="module")
def presto(s3_endpoint, tmp_path_factory) -> Iterator[PrestoStandin]:
    hive = tmp_path_factory.mktemp("catalog") / "hive.properties"
    hive.write_text(
        f"connector.name=hive-hadoop2\nhive.s3.endpoint={s3_endpoint}\n"
        "hive.s3.path-style-access=true\nhive.s3.aws-access-key=testing\n"
        "hive.s3.aws-secret-key=testing\nhive.non-managed-table-writes-enabled=true\n"
    )
    with PrestoStandin(port=0, schemas=("tiny",), hive_catalog=hive, writer_count=3) as standin:
        cursor = presto_cursor(standin)
        cursor.execute("CREATE SCHEMA hive.scratch")
        cursor.fetchall()
        yield standin


def unload(sql: str, prefix: str = PREFIX) -> dict:
    return unload_to_s3(sql=sql, presto_conn_id="presto_default", aws_conn_id="aws_default",
                        bucket=BUCKET, prefix=prefix, catalog="hive", schema="scratch",
                        context_label="order dates 1996-01-01 .. 1996-03-01")  # fmt: skip


def keys(s3, prefix: str) -> list[str]:
    return sorted(
        o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    )


def test_unload_manifest_matches_the_streamed_one(presto, presto_conn, s3_bucket) -> None:
    s3 = s3_bucket(BUCKET)
    sql = training_sql("1996-01-01", dt.date(1996, 3, 1))
    manifest = unload(sql)
    streamed = extract(sql, "streamed", context_label="order dates 1996-01-01 .. 1996-03-01")
    assert set(manifest) == set(streamed)
    for field in ("format", "row_count", "columns", "sql_sha256", "context_label"):
        assert manifest[field] == streamed[field], field
    assert manifest["part_count"] == 3 == len(keys(s3, f"{PREFIX}/data/"))
    written = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/manifest.json")["Body"].read())
    assert written == manifest
    table = scratch_table("hive", "scratch", manifest["data_uri"], sql).rsplit(".", 1)[1]
    assert presto.hive.location("scratch", table) is None, "the scratch table was not dropped"


def test_rerun_replaces_the_files_and_drops_a_leftover_table(
    presto, presto_conn, s3_bucket
) -> None:
    s3 = s3_bucket(BUCKET)
    sql = training_sql("1996-01-01", dt.date(1996, 3, 1))
    first = unload(sql)
    table = scratch_table("hive", "scratch", first["data_uri"], sql)
    # A crashed earlier try: the table is left, with its files in the prefix.
    cursor = presto_cursor(presto)
    cursor.execute(ctas_statement(table, first["data_uri"], sql))
    cursor.fetchall()
    assert len(keys(s3, f"{PREFIX}/data/")) == 6
    again = unload(sql)
    assert keys(s3, f"{PREFIX}/data/") == sorted(p["key"] for p in again["parts"])
    fingerprints = {ExtractManifest.from_xcom(m).data_fingerprint() for m in (first, again)}
    assert len(fingerprints) == 1, "the same rows must keep the split job's name"


def test_an_empty_result_fails_like_the_streaming_mode(presto, presto_conn, s3_bucket) -> None:
    s3_bucket(BUCKET)
    with pytest.raises(EmptyExtractError, match="returned no rows for order dates"):
        unload(training_sql("1900-01-01", dt.date(1900, 2, 1)), prefix="empty")


def test_presto_errors_are_classified_as_in_the_streaming_mode(
    presto, presto_conn, s3_bucket
) -> None:
    s3_bucket(BUCKET)
    with pytest.raises(PrestoQueryFailedError) as failure:
        unload("SELECT nope FROM orders", prefix="failing")
    assert failure.value.kind is Kind.PERMANENT and failure.value.category == "presto-user"
    assert "SYNTAX_ERROR" in str(failure.value) and "Column 'nope' cannot be resolved" in str(
        failure.value
    )
    with pytest.raises(PrestoQueryFailedError) as failure:
        unload("SELECT /* standin:fail */ orderkey FROM orders", prefix="failing")
    assert failure.value.kind is Kind.TRANSIENT and failure.value.category == "presto-server"


def presto_cursor(presto: PrestoStandin):
    import prestodb

    return prestodb.dbapi.connect(
        host="127.0.0.1", port=presto.port, user="t", catalog="tpch", schema="tiny"
    ).cursor()
