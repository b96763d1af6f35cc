"""Fixtures for the local-stack tests: a running Presto stand-in and a reference TPC-H DuckDB."""

from __future__ import annotations

from collections.abc import Iterator

import duckdb
import pytest

from local_stack.presto_standin import PrestoStandin
from local_stack.presto_standin.catalog import tpch_extension_path

PAGE_ROWS = 1000


@pytest.fixture(scope="module")
def presto() -> Iterator[PrestoStandin]:
    """A stand-in serving ``tpch.tiny`` in pages of ``PAGE_ROWS`` rows."""
    with PrestoStandin(port=0, schemas=("tiny",), page_rows=PAGE_ROWS) as standin:
        yield standin


@pytest.fixture(scope="session")
def tpch_reference() -> Iterator[duckdb.DuckDBPyConnection]:
    """TPC-H sf 0.01 straight from DuckDB's dbgen (spec names: o_orderkey ...), independent of
    the stand-in's catalog code, to check what the stand-in returns."""
    con = duckdb.connect()
    con.execute(f"LOAD '{tpch_extension_path()}'")
    con.execute("CALL dbgen(sf=0.01)")
    yield con
    con.close()


# --- local AWS endpoint (SageMaker runtime + moto) ------------------------------------------------
AWS_REGION = "us-east-1"
TEST_BUCKET = "local-stack-tests"


@pytest.fixture(scope="session")
def local_aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A ``LocalAwsEndpoint`` on a free port with the bucket ``TEST_BUCKET``; faults cleared."""
    import boto3

    from local_stack.aws_endpoint import LocalAwsEndpoint

    endpoint = LocalAwsEndpoint(port=0, workdir=tmp_path_factory.mktemp("local-aws")).start()
    boto3.client(
        "s3",
        endpoint_url=endpoint.url,
        region_name=AWS_REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket=TEST_BUCKET)
    yield endpoint
    endpoint.stop()


@pytest.fixture(scope="session")
def aws_client(local_aws):
    """``aws_client("sagemaker", retries={...})``: a boto3 client for the local endpoint."""
    import boto3
    from botocore.config import Config

    def make(service: str, **config: object):
        return boto3.client(
            service,
            endpoint_url=local_aws.url,
            region_name=AWS_REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(**config) if config else None,
        )

    return make


@pytest.fixture
def airflow_aws_connection(local_aws, aws_default_at) -> None:
    """``aws_default`` pointing at the local endpoint (for hooks, sensors and operators)."""
    aws_default_at(local_aws.url, AWS_REGION)


@pytest.fixture
def faults(local_aws) -> Iterator:
    """The endpoint's fault injector, disarmed after the test."""
    yield local_aws.runtime.faults
    local_aws.runtime.faults.clear()
