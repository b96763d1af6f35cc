"""The stand-in's Hive catalog: ``CREATE TABLE ... WITH (external_location) AS`` writes Parquet
to S3, ``DROP TABLE`` removes metadata only; Presto's rules and messages. Driven by the real
``presto-python-client``; S3 is a moto server."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import boto3
import prestodb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from moto.server import ThreadedMotoServer
from prestodb.exceptions import PrestoUserError
from test_presto_standin import post_to

from local_stack.presto_standin import PrestoStandin

BUCKET = "hive-tests"
WRITERS = 3
QUERY = (
    "SELECT orderkey, orderdate, totalprice, shippriority FROM orders "
    "WHERE orderdate < DATE '1992-06-01' ORDER BY orderkey"
)


@pytest.fixture(scope="module")
def s3() -> Iterator:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    client = boto3.client(
        "s3",
        endpoint_url=f"http://{host}:{port}",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_bucket(Bucket=BUCKET)
    yield client
    server.stop()


def catalog_file(folder: Path, s3, writes: bool = True) -> Path:
    path = folder / "hive.properties"
    path.write_text(
        "connector.name=hive-hadoop2\n"
        "hive.metastore=file\n"
        f"hive.s3.endpoint={s3.meta.endpoint_url}\n"
        "hive.s3.path-style-access=true\n"
        "hive.s3.aws-access-key=testing\n"
        "hive.s3.aws-secret-key=testing\n"
        f"hive.non-managed-table-writes-enabled={str(writes).lower()}\n"
    )
    return path


@pytest.fixture(scope="module")
def presto(s3, tmp_path_factory) -> Iterator[PrestoStandin]:
    hive = catalog_file(tmp_path_factory.mktemp("catalog"), s3)
    with PrestoStandin(port=0, schemas=("tiny",), hive_catalog=hive, writer_count=WRITERS) as p:
        run(p, "CREATE SCHEMA hive.scratch")
        yield p


def cursor(presto: PrestoStandin):
    conn = prestodb.dbapi.connect(
        host="127.0.0.1", port=presto.port, user="test", catalog="tpch", schema="tiny"
    )
    return conn.cursor()


def run(presto: PrestoStandin, sql: str) -> list[list]:
    cur = cursor(presto)
    cur.execute(sql)
    return cur.fetchall()


def ctas(table: str, location: str, query: str = QUERY, props: str = "") -> str:
    return (
        f"CREATE TABLE hive.scratch.{table} WITH (format = 'PARQUET', "
        f"external_location = '{location}'{props}) AS {query}"
    )


def objects(s3, prefix: str) -> list[dict]:
    return s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])


def read(s3, prefix: str) -> pa.Table:
    tables = [
        pq.read_table(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()))
        for o in objects(s3, prefix)
    ]
    return pa.concat_tables(tables)


def test_ctas_writes_the_query_result_as_parquet_files(presto, s3) -> None:
    cur = cursor(presto)
    cur.execute(ctas("orders_early", f"s3://{BUCKET}/early/data/"))
    (rows,) = cur.fetchall()
    expected = run(presto, QUERY)
    assert rows == [len(expected)]
    assert cur.description[0][:2] == ("rows", "bigint")
    files = objects(s3, "early/data/")
    assert len(files) == WRITERS
    query_id = cur.stats["queryId"]
    # Presto's Hive writer names: <query id>_<uuid>, no extension.
    assert all(o["Key"].startswith(f"early/data/{query_id}_") for o in files)
    assert all("." not in o["Key"].rsplit("/", 1)[1] for o in files)
    table = read(s3, "early/data/").sort_by("orderkey")
    assert table.schema.names == ["orderkey", "orderdate", "totalprice", "shippriority"]
    assert [str(t) for t in table.schema.types] == ["int64", "date32[day]", "double", "int32"]
    assert table.column("orderkey").to_pylist() == [r[0] for r in expected]
    assert table.column("totalprice").to_pylist() == [r[2] for r in expected]


def test_answers_carry_prestos_update_types(presto) -> None:
    location = f"s3://{BUCKET}/typed/"
    assert post_to(presto.url, ctas("typed", location))["updateType"] == "CREATE TABLE"
    assert post_to(presto.url, "DROP TABLE hive.scratch.typed")["updateType"] == "DROP TABLE"
    schema = post_to(presto.url, "CREATE SCHEMA IF NOT EXISTS hive.typed")
    assert schema["updateType"] == "CREATE SCHEMA"


def test_drop_table_removes_the_metadata_only(presto, s3) -> None:
    run(presto, ctas("dropped", f"s3://{BUCKET}/dropped/"))
    before = objects(s3, "dropped/")
    assert run(presto, "DROP TABLE hive.scratch.dropped") == []
    assert objects(s3, "dropped/") == before, "DROP TABLE of an external table deleted files"
    with pytest.raises(PrestoUserError, match=r"Table 'hive\.scratch\.dropped' does not exist"):
        run(presto, "DROP TABLE hive.scratch.dropped")
    assert run(presto, "DROP TABLE IF EXISTS hive.scratch.dropped") == []
    # The name is free again.
    run(presto, ctas("dropped", f"s3://{BUCKET}/dropped-again/"))


def test_an_empty_result_writes_no_file(presto, s3) -> None:
    query = "SELECT orderkey FROM orders WHERE orderdate < DATE '1900-01-01'"
    assert run(presto, ctas("empty", f"s3://{BUCKET}/empty/", query)) == [[0]]
    assert objects(s3, "empty/") == []


def test_an_existing_destination_fails_unless_if_not_exists(presto) -> None:
    run(presto, ctas("twice", f"s3://{BUCKET}/twice/"))
    with pytest.raises(PrestoUserError, match=r"Destination table 'hive\.scratch\.twice' already"):
        run(presto, ctas("twice", f"s3://{BUCKET}/twice/"))
    statement = ctas("twice", f"s3://{BUCKET}/twice/").replace("TABLE", "TABLE IF NOT EXISTS", 1)
    assert run(presto, statement) == [[0]]


@pytest.mark.parametrize(
    ("statement", "name", "message"),
    [
        (
            ctas("p", f"s3://{BUCKET}/p/", props=", partitioning = ARRAY['x']"),
            "INVALID_TABLE_PROPERTY",
            "Catalog 'hive' does not support table property 'partitioning'",
        ),
        (
            ctas("p", "not a location"),
            "INVALID_TABLE_PROPERTY",
            "External location is not a valid file system URI: not a location",
        ),
        (ctas("p", "hdfs://namenode/p/"), "NOT_SUPPORTED", "s3:// locations only"),
        (
            ctas("p", f"s3://{BUCKET}/p/").replace("hive.scratch", "hive.nowhere"),
            "NOT_FOUND",
            "Schema nowhere not found",
        ),
        (
            ctas("p", f"s3://{BUCKET}/p/").replace("'PARQUET'", "'ORC'"),
            "NOT_SUPPORTED",
            "writes format 'PARQUET' only",
        ),
        (
            ctas("p", f"s3://{BUCKET}/p/").replace("'PARQUET'", "'XLS'"),
            "INVALID_TABLE_PROPERTY",
            "Unable to set table property 'format'",
        ),
        (
            f"CREATE TABLE hive.scratch.p WITH (format = 'PARQUET') AS {QUERY}",
            "NOT_SUPPORTED",
            "external tables only",
        ),
        (
            ctas("p", f"s3://{BUCKET}/p/").replace("hive.scratch", "tpch.tiny"),
            "NOT_SUPPORTED",
            "This connector does not support creating tables",
        ),
        (
            ctas("p", f"s3://{BUCKET}/p/", "SELECT nope FROM orders"),
            "SYNTAX_ERROR",
            "Column 'nope' cannot be resolved",
        ),
        ("SELECT * FROM hive.scratch.twice", "NOT_SUPPORTED", "cannot read it"),
    ],
)
def test_prestos_rules_and_messages(presto, s3, statement, name, message) -> None:
    with pytest.raises(PrestoUserError) as failure:
        run(presto, statement)
    assert failure.value.error_name == name
    assert message in failure.value.message
    assert objects(s3, "p/") == [], "a refused statement wrote files"


def test_non_managed_writes_need_the_catalog_setting(s3, tmp_path) -> None:
    hive = catalog_file(tmp_path, s3, writes=False)
    with PrestoStandin(port=0, schemas=("tiny",), hive_catalog=hive) as presto:
        run(presto, "CREATE SCHEMA hive.scratch")
        with pytest.raises(PrestoUserError, match="Writes to non-managed Hive tables is disabled"):
            run(presto, ctas("t", f"s3://{BUCKET}/disabled/"))
    assert objects(s3, "disabled/") == []


def test_create_schema_twice_fails_unless_if_not_exists(presto) -> None:
    with pytest.raises(PrestoUserError, match=r"Schema 'hive\.scratch' already exists"):
        run(presto, "CREATE SCHEMA hive.scratch")
    assert run(presto, "CREATE SCHEMA IF NOT EXISTS hive.scratch") == []
