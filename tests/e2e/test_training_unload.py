"""The training DAG with ``extract.mode: presto_unload``, run by ``airflow dags test``.

Presto (the stand-in's Hive catalog on the local S3) writes the extraction's Parquet files
itself; the split reads them sharded on several instances; a re-run for the same date replaces
the files, drops a crashed try's leftover table and starts no SageMaker job.
"""

from __future__ import annotations

import json
import sqlite3

import pytest
from e2e_support import include_copy
from test_training_dag import DAG_ID, GROUP, job_counts, run_dag

from local_stack.stack import LocalStack
from local_stack.summary import training_summary

DS = "1996-02-29"
PREFIX = f"mlops/tpch_orders/training/{DS}/extract"
UNLOAD = {"  mode: streaming ": "  mode: presto_unload "}
# The manifest fields of the streaming extraction (extract.extract_to_s3).
MANIFEST_FIELDS = {
    "format", "data_uri", "row_count", "part_count", "parts", "columns", "sql_sha256",
    "presto_query_id", "context_label", "started_at", "finished_at",
}  # fmt: skip


def _manifest(stack: LocalStack) -> dict:
    body = stack.client("s3").get_object(Bucket=stack.bucket, Key=f"{PREFIX}/manifest.json")
    return json.loads(body["Body"].read())


def _data_keys(stack: LocalStack) -> list[str]:
    listing = stack.client("s3").list_objects_v2(Bucket=stack.bucket, Prefix=f"{PREFIX}/data/")
    return sorted(o["Key"] for o in listing.get("Contents", []))


def _rendered_sql(stack: LocalStack) -> str:
    """The extract task's SQL as Airflow rendered it for the run."""
    with sqlite3.connect(stack.airflow_home / "airflow.db") as db:
        (fields,) = db.execute(
            "SELECT rendered_fields FROM rendered_task_instance_fields "
            "WHERE dag_id = ? AND task_id = 'extract'",
            (DAG_ID,),
        ).fetchone()
    return json.loads(fields)["sql"]


def _streamed_manifest(
    stack: LocalStack, sql: str, label: str, monkeypatch: pytest.MonkeyPatch
) -> dict:
    """The same query extracted the streaming way (in this process), for comparison."""
    for name, value in stack.airflow_env().items():
        if name.startswith("AIRFLOW_CONN_"):
            monkeypatch.setenv(name, value)
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):  # they would override `verify`
        monkeypatch.delenv(name, raising=False)
    from mlops_sagemaker.extract import extract_to_s3

    return extract_to_s3(sql=sql, presto_conn_id="presto_default", aws_conn_id="aws_default",
                         bucket=stack.bucket, prefix="compare/streamed",
                         context_label=label)  # fmt: skip


@pytest.fixture(scope="module")
def unload_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return include_copy(tmp_path_factory.mktemp("unload"), UNLOAD)


def test_presto_writes_the_files_and_the_split_reads_them_sharded(
    stack, unload_env, monkeypatch
) -> None:
    code, log = run_dag(stack, DS, env=unload_env)
    assert code == 0, log[-5000:]
    manifest = _manifest(stack)
    assert set(manifest) == MANIFEST_FIELDS
    assert manifest["part_count"] == stack.presto_writer_count == len(_data_keys(stack))
    assert {p["key"] for p in manifest["parts"]} == set(_data_keys(stack))
    assert all(p["sha256"] is None and p["etag"] and p["rows"] for p in manifest["parts"])
    streamed = _streamed_manifest(
        stack, _rendered_sql(stack), manifest["context_label"], monkeypatch
    )
    assert set(streamed) == MANIFEST_FIELDS
    for field in ("row_count", "columns", "format", "sql_sha256", "context_label"):
        assert manifest[field] == streamed[field], field

    sm = stack.client("sagemaker")
    jobs = {j["ProcessingJobName"] for j in sm.list_processing_jobs()["ProcessingJobSummaries"]}
    (split,) = [j for j in jobs if "-prep-" in j]
    described = sm.describe_processing_job(ProcessingJobName=split)
    assert described["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == 2
    data_input = next(i for i in described["ProcessingInputs"] if i["InputName"] == "data")
    assert data_input["S3Input"]["S3DataDistributionType"] == "ShardedByS3Key"
    assert any("-base-" in j for j in jobs), "no baseline job over the sharded split"
    summary = training_summary(stack, "tpch_orders", GROUP, DS)
    (version,) = summary["registered_versions"]
    assert int(version["metadata"]["rows_extracted"]) == manifest["row_count"]
    baseline = json.loads(
        stack.client("s3")
        .get_object(
            Bucket=stack.bucket, Key=f"mlops/tpch_orders/training/{DS}/split/baseline/baseline.json"
        )["Body"]
        .read()
    )
    assert baseline["rows"]["total"] == manifest["row_count"]


def test_rerun_replaces_the_files_drops_a_leftover_and_starts_nothing(stack, unload_env) -> None:
    from mlops_sagemaker.unload import ctas_statement, scratch_table

    first, before = _manifest(stack), job_counts(stack)
    # A crashed earlier try: its scratch table still exists and its files are in the prefix.
    table = scratch_table("hive", "mlops_scratch", first["data_uri"], _rendered_sql(stack))
    stack.presto_execute(ctas_statement(table, first["data_uri"], _rendered_sql(stack)))
    assert len(_data_keys(stack)) == 2 * first["part_count"]

    code, log = run_dag(stack, DS, env=unload_env)
    assert code == 0, log[-5000:]
    again = _manifest(stack)
    assert again["row_count"] == first["row_count"] and again["columns"] == first["columns"]
    assert len(_data_keys(stack)) == again["part_count"], "old files were not replaced"
    assert sorted(p["etag"] for p in again["parts"]) == sorted(p["etag"] for p in first["parts"])
    assert job_counts(stack) == before, "a re-run started new SageMaker jobs"
    summary = training_summary(stack, "tpch_orders", GROUP, DS)
    assert len(summary["registered_versions"]) == 1
    with pytest.raises(Exception, match="does not exist"):
        stack.presto_execute(f"DROP TABLE {table}")  # dropped by the re-run
