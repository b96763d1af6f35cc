"""The Presto stand-in, driven by the real ``presto-python-client`` and Airflow's ``PrestoHook``."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import jinja2
import prestodb
import pytest
import requests
from prestodb.exceptions import HttpError, PrestoQueryError, PrestoUserError

from local_stack.presto_standin import PrestoStandin

ROOT = Path(__file__).resolve().parents[2]
SQL_DIR = ROOT / "include" / "sql" / "tpch_orders"

# Presto's TPC-H connector (column naming SIMPLIFIED): names and types of two tables. Bounded
# varchar(n) columns are reported as plain varchar by the stand-in (see its docstring).
ORDERS = [
    ("orderkey", "bigint"),
    ("custkey", "bigint"),
    ("orderstatus", "varchar"),
    ("totalprice", "double"),
    ("orderdate", "date"),
    ("orderpriority", "varchar"),
    ("clerk", "varchar"),
    ("shippriority", "integer"),
    ("comment", "varchar"),
]
LINEITEM = [
    ("orderkey", "bigint"),
    ("partkey", "bigint"),
    ("suppkey", "bigint"),
    ("linenumber", "integer"),
    ("quantity", "double"),
    ("extendedprice", "double"),
    ("discount", "double"),
    ("tax", "double"),
    ("returnflag", "varchar"),
    ("linestatus", "varchar"),
    ("shipdate", "date"),
    ("commitdate", "date"),
    ("receiptdate", "date"),
    ("shipinstruct", "varchar"),
    ("shipmode", "varchar"),
    ("comment", "varchar"),
]
TABLES = ["customer", "lineitem", "nation", "orders", "part", "partsupp", "region", "supplier"]
REFERENCE_KEYS = {
    "customer": "c_custkey",
    "lineitem": "l_orderkey",
    "nation": "n_nationkey",
    "orders": "o_orderkey",
    "part": "p_partkey",
    "partsupp": "ps_partkey",
    "region": "r_regionkey",
    "supplier": "s_suppkey",
}


def connect(presto: PrestoStandin, **kwargs):
    options = {"user": "tester", "catalog": "tpch", "schema": "tiny", **kwargs}
    return prestodb.dbapi.connect(host="127.0.0.1", port=presto.port, **options)


def run(presto: PrestoStandin, sql: str, **kwargs) -> tuple[list[list], list[tuple[str, str]], str]:
    cursor = connect(presto, **kwargs).cursor()
    cursor.execute(sql)
    rows = cursor.fetchall()
    return rows, [(d[0], d[1]) for d in cursor.description or []], cursor.stats["queryId"]


def render(name: str, **context) -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    env.filters["ds"] = lambda d: d.strftime("%Y-%m-%d")
    return env.from_string((SQL_DIR / name).read_text()).render(**context)


def post(presto: PrestoStandin, sql: str, **headers) -> requests.Response:
    base = {"X-Presto-User": "tester", "X-Presto-Catalog": "tpch", "X-Presto-Schema": "tiny"}
    base.update(headers)
    return requests.post(f"{presto.url}/v1/statement", data=sql, headers=base, timeout=30)


# -- data, names, types ------------------------------------------------------------------------


def test_orders_has_15000_rows_over_many_pages(presto, tpch_reference):
    rows, columns, query_id = run(presto, "SELECT * FROM tpch.tiny.orders")

    assert len(rows) == 15000
    assert tpch_reference.execute("SELECT count(*) FROM orders").fetchone()[0] == 15000
    assert columns == ORDERS
    info = presto.query_info(query_id)
    assert info["state"] == "FINISHED"
    assert info["pages"] >= 15000 // presto.page_rows
    assert len({r[0] for r in rows}) == 15000


def test_every_table_matches_dbgen(presto, tpch_reference):
    for table in TABLES:
        rows, _, _ = run(presto, f"SELECT count(*) FROM {table}")
        key = REFERENCE_KEYS[table]
        expected = tpch_reference.execute(f"SELECT count(*), sum({key}) FROM {table}").fetchone()
        key_sum, _, _ = run(presto, f"SELECT sum({key.split('_', 1)[1]}) FROM {table}")
        assert (rows[0][0], key_sum[0][0]) == expected, table


def test_lineitem_names_types_and_values_are_prestos(presto, tpch_reference):
    rows, columns, _ = run(presto, "SELECT * FROM lineitem WHERE orderkey = 1 AND linenumber = 1")
    assert columns == LINEITEM
    (row,) = rows
    ref = tpch_reference.execute(
        "SELECT * FROM lineitem WHERE l_orderkey = 1 AND l_linenumber = 1"
    ).fetchone()
    assert row[:4] == list(ref[:4]) and all(type(v) is int for v in row[:4])
    assert row[4:8] == [float(v) for v in ref[4:8]] and all(type(v) is float for v in row[4:8])
    assert row[10:13] == [d.isoformat() for d in ref[10:13]]  # dates as 'YYYY-MM-DD'
    assert row[13:] == list(ref[13:])


def test_full_lineitem_pages_through_all_rows(presto, tpch_reference):
    rows, _, query_id = run(presto, "SELECT orderkey, linenumber FROM lineitem")
    expected = tpch_reference.execute("SELECT count(*) FROM lineitem").fetchone()[0]
    assert len(rows) == expected == len({tuple(r) for r in rows})
    assert presto.query_info(query_id)["pages"] >= expected // presto.page_rows


def test_literal_types_and_json_encoding(presto):
    rows, columns, _ = run(
        presto,
        "SELECT 1, CAST(1 AS bigint), 2.5E0, CAST(1.5 AS decimal(10,2)), DATE '1996-01-02', "
        "TIMESTAMP '1996-01-02 03:04:05.678', true, 'x', CAST(NULL AS varchar), "
        "ARRAY[1, 2], 7 / 2, sum(orderkey) AS total FROM orders WHERE orderkey = 1",
    )
    assert columns == [
        ("_col0", "integer"),
        ("_col1", "bigint"),
        ("_col2", "double"),
        ("_col3", "decimal(10,2)"),
        ("_col4", "date"),
        ("_col5", "timestamp"),
        ("_col6", "boolean"),
        ("_col7", "varchar"),
        ("_col8", "varchar"),
        ("_col9", "array(integer)"),
        ("_col10", "integer"),
        ("total", "bigint"),
    ]
    assert rows == [
        [1, 1, 2.5, "1.50", "1996-01-02", "1996-01-02 03:04:05.678", True, "x", None, [1, 2], 3, 1]
    ]


def test_session_catalog_and_schema_resolve_names(presto):
    assert run(presto, "SELECT count(*) FROM orders")[0] == [[15000]]
    assert run(presto, "SELECT count(*) FROM tiny.orders", schema=None)[0] == [[15000]]
    assert run(presto, "SELECT count(*) FROM tpch.tiny.orders", catalog=None, schema=None)[0] == [
        [15000]
    ]
    with pytest.raises(PrestoUserError, match="Schema must be specified"):
        run(presto, "SELECT count(*) FROM orders", schema=None)
    with pytest.raises(PrestoUserError, match="Catalog hive does not exist"):
        run(presto, "SELECT count(*) FROM orders", catalog="hive")


def test_show_and_describe(presto):
    assert run(presto, "SHOW CATALOGS")[0] == [["tpch"]]
    assert run(presto, "SHOW SCHEMAS FROM tpch")[0] == [["tiny"]]
    assert [r[0] for r in run(presto, "SHOW TABLES")[0]] == TABLES
    described = run(presto, "DESCRIBE tpch.tiny.orders")[0]
    assert [(r[0], r[1]) for r in described][:2] == [("orderkey", "bigint"), ("custkey", "bigint")]
    assert ("orderstatus", "varchar(1)") in [(r[0], r[1]) for r in described]


# -- protocol ----------------------------------------------------------------------------------


def test_protocol_pages_until_no_next_uri(presto):
    first = post(presto, "SELECT orderkey FROM orders").json()
    assert first["stats"]["state"] == "QUEUED" and "data" not in first
    assert first["infoUri"] and first["id"]
    uri, pages, rows, states = first["nextUri"], 0, 0, []
    while uri:
        page = requests.get(uri, timeout=30).json()
        assert page["columns"][0]["name"] == "orderkey"
        assert page["columns"][0]["typeSignature"]["rawType"] == "bigint"
        rows += len(page.get("data", []))
        pages += 1
        states.append(page["stats"]["state"])
        uri = page.get("nextUri")
    assert rows == 15000
    assert pages >= 15
    assert states[-1] == "FINISHED" and set(states[:-1]) == {"RUNNING"}


def test_repeated_token_returns_same_page_and_stale_token_is_gone(presto):
    first = post(presto, "SELECT orderkey FROM orders").json()
    page = requests.get(first["nextUri"], timeout=30).json()
    again = requests.get(first["nextUri"], timeout=30).json()
    assert again["data"] == page["data"]
    requests.get(page["nextUri"], timeout=30)
    assert requests.get(first["nextUri"], timeout=30).status_code == 410
    requests.delete(page["nextUri"], timeout=30)


def test_delete_next_uri_cancels(presto):
    first = post(presto, "SELECT * FROM lineitem").json()
    page = requests.get(first["nextUri"], timeout=30).json()
    assert page["stats"]["state"] == "RUNNING"

    assert requests.delete(page["nextUri"], timeout=30).status_code == 204

    after = requests.get(page["nextUri"], timeout=30).json()
    assert after["error"]["errorName"] == "USER_CANCELED"
    assert after["stats"]["state"] == "FAILED" and "nextUri" not in after
    info = presto.query_info(first["id"])
    assert info["cancelled"] and info["rows"] == presto.page_rows


def test_client_cancel_uses_query_resource(presto):
    """``PrestoQuery.cancel`` sends ``DELETE /v1/query/{id}`` and expects 204."""
    session = prestodb.client.ClientSession(user="tester", catalog="tpch", schema="tiny")
    request = prestodb.client.PrestoRequest("127.0.0.1", presto.port, session)
    query = prestodb.client.PrestoQuery(request, "SELECT * FROM lineitem")
    status = request.process(request.post("SELECT * FROM lineitem"))
    query.query_id = status.id
    request.process(request.get(status.next_uri))  # first page: the query is running

    query.cancel()

    with pytest.raises(PrestoUserError) as raised:
        request.process(request.get(request.next_uri))
    assert raised.value.error_name == "USER_CANCELED"
    assert presto.query_info(status.id)["cancelled"]


def test_missing_user_is_rejected(presto):
    response = requests.post(f"{presto.url}/v1/statement", data="SELECT 1", timeout=30)
    assert response.status_code == 400
    assert "User must be set" in response.text
    with pytest.raises(HttpError, match="User must be set"):
        run(presto, "SELECT 1", user=None)


def test_unknown_query_is_404(presto):
    assert requests.get(f"{presto.url}/v1/statement/executing/x/y/1", timeout=30).status_code == 404
    assert requests.get(f"{presto.url}/v1/info", timeout=30).json()["coordinator"] is True


def test_concurrent_queries_page_independently(presto):
    sqls = [
        "SELECT orderkey FROM orders",
        "SELECT orderkey, linenumber FROM lineitem WHERE orderkey < 20000",
        "SELECT custkey FROM customer",
        "SELECT partkey FROM part",
    ]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda sql: len(run(presto, sql)[0]), sqls * 2))
    expected = [len(run(presto, sql)[0]) for sql in sqls] * 2
    assert results == expected and expected[0] == 15000


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "name", "message"),
    [
        (
            "SELECT * FROM tpch.tiny.nope",
            "SYNTAX_ERROR",
            "line 1:15: Table tpch.tiny.nope does not exist",
        ),
        ("SELECT * FROM tpch.sf9.orders", "SYNTAX_ERROR", "Schema sf9 does not exist"),
        ("SELECT * FROM other.tiny.orders", "SYNTAX_ERROR", "Catalog other does not exist"),
        ("SELECT nope FROM orders", "SYNTAX_ERROR", "Column 'nope' cannot be resolved"),
        ("SELECT * FROM", "SYNTAX_ERROR", "line 1:"),
        ("SELECT 1;", "SYNTAX_ERROR", "mismatched input ';'"),
        ("SELECT 1 / 0", "DIVISION_BY_ZERO", "Division by zero"),
        ("SELECT CAST('x' AS integer)", "INVALID_CAST_ARGUMENT", "'x'"),
        (
            "SELECT count(*) FROM orders WHERE orderdate >= '1996-01-01'",
            "SYNTAX_ERROR",
            "'>=' cannot be applied to date, varchar(10)",
        ),
        ("SELECT xxhash64(to_utf8('a'))", "NOT_SUPPORTED", "xxhash64"),
        ("SELECT from_big_endian_64(x'00')", "NOT_SUPPORTED", "from_big_endian_64"),
        ("INSERT INTO orders SELECT * FROM orders", "NOT_SUPPORTED", "INSERT"),
        ("EXPLAIN SELECT 1", "NOT_SUPPORTED", "EXPLAIN"),
    ],
)
def test_errors_are_presto_errors(presto, sql, name, message):
    with pytest.raises(PrestoUserError) as raised:
        run(presto, sql)
    assert raised.value.error_name == name
    assert raised.value.error_type == "USER_ERROR"
    assert message in raised.value.message
    assert raised.value.query_id


def test_error_location_is_reported(presto):
    with pytest.raises(PrestoUserError) as raised:
        run(presto, "SELECT *\nFROM   nope")
    assert raised.value.error_location == (2, 8)


def test_injected_fault_after_pages(presto):
    sql = "SELECT orderkey FROM orders /* standin:fail after_pages=3 */"
    with pytest.raises(PrestoQueryError) as raised:
        run(presto, sql)
    assert raised.value.error_name == "GENERIC_INTERNAL_ERROR"
    assert raised.value.error_type == "INTERNAL_ERROR"
    assert presto.query_info(raised.value.query_id)["pages"] == 3


# -- Airflow's PrestoHook and the project's SQL ------------------------------------------------


def test_presto_hook_queries_and_parameters(presto_conn):
    from airflow.providers.presto.hooks.presto import PrestoHook

    hook = PrestoHook()
    assert hook.get_records("SELECT count(*) FROM orders") == [[15000]]
    assert hook.get_first("SELECT orderkey FROM orders WHERE orderkey = 1") == [1]
    # Parameters go through PREPARE / EXECUTE ... USING / DEALLOCATE PREPARE.
    records = hook.get_records(
        "SELECT orderkey FROM orders WHERE orderdate = ? AND orderkey < ?",
        parameters=[datetime(1996, 1, 2).date(), 10],
    )
    assert records == [[1]]


def test_presto_hook_uri_connection(presto, monkeypatch):
    from airflow.providers.presto.hooks.presto import PrestoHook

    uri = f"presto://airflow@127.0.0.1:{presto.port}/tiny?catalog=tpch"
    monkeypatch.setenv("AIRFLOW_CONN_PRESTO_URI", uri)
    hook = PrestoHook(presto_conn_id="presto_uri")
    cursor = hook.get_conn().cursor()
    cursor.execute("SELECT * FROM orders")
    assert len(cursor.fetchmany(1234)) == 1234
    assert [(d[0], d[1]) for d in cursor.description] == ORDERS


def test_training_query_runs(presto, presto_conn, tpch_reference):
    from airflow.providers.presto.hooks.presto import PrestoHook

    sql = render(
        "training.sql",
        source={"catalog": "tpch", "schema": "tiny"},
        window_start=lambda d: "1996-01-01",
        data_interval_end=datetime(1996, 3, 1),
    )
    cursor = PrestoHook().get_conn().cursor()
    cursor.execute(sql)
    rows = cursor.fetchall()
    columns = [(d[0], d[1]) for d in cursor.description]

    assert columns == [
        ("orderkey", "bigint"),
        ("orderdate", "date"),
        ("total_extended_price", "double"),
        ("avg_discount", "double"),
        ("total_quantity", "double"),
        ("lineitem_count", "bigint"),
        ("total_payable_tax", "double"),
        ("label", "integer"),
    ]
    assert {r[-1] for r in rows} == {0, 1}
    assert all("1996-01-01" <= r[1] < "1996-03-01" for r in rows)
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)
    expected = tpch_reference.execute(
        """
        SELECT o_orderkey, count(*),
               CASE WHEN min(CASE WHEN l_receiptdate > l_commitdate THEN 1 ELSE 0 END) = 1
                    THEN 1 ELSE 0 END
        FROM orders JOIN lineitem ON l_orderkey = o_orderkey
        WHERE o_orderdate >= DATE '1996-01-01' AND o_orderdate < DATE '1996-03-01'
        GROUP BY o_orderkey ORDER BY o_orderkey
        """
    ).fetchall()
    assert [(r[0], r[5], r[7]) for r in rows] == expected


@pytest.mark.parametrize(("ds", "landed"), [("1998-08-02", True), ("1998-08-03", False)])
def test_data_arrival_query_runs(presto, presto_conn, ds, landed):
    from airflow.providers.presto.hooks.presto import PrestoHook

    sql = render(
        "data_arrival.sql",
        source={"catalog": "tpch", "schema": "tiny"},
        ds=ds,
        data_interval_start=datetime.fromisoformat(ds),
    )
    assert PrestoHook().get_first(sql) == [landed]


# -- lifecycle ---------------------------------------------------------------------------------


def test_lazy_schema_is_listed_but_not_generated():
    with PrestoStandin(port=0, schemas=("tiny", "sf1"), eager_schemas=("tiny",)) as standin:
        rows, _, _ = run(standin, "SHOW SCHEMAS")
        assert rows == [["sf1"], ["tiny"]]
        assert standin.catalog is not None and not standin.catalog.is_ready("sf1")


def test_schema_generated_on_first_use_while_client_polls():
    with PrestoStandin(port=0, schemas=("tiny",), eager_schemas=(), poll_wait=0.0) as standin:
        assert standin.catalog is not None and not standin.catalog.is_ready("tiny")
        rows, _, query_id = run(standin, "SELECT count(*) FROM orders")
        assert rows == [[15000]]
        assert standin.query_info(query_id)["queued_polls"] >= 1


def test_cli_serves_until_terminated():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "local_stack.presto_standin", "--port", "0", "--schemas", "tiny"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, line
        url = line.split("listening on ", 1)[1].split()[0]
        response = post_to(url, "SELECT count(*) FROM orders")
        assert response["data"] == [[15000]]
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


def post_to(url: str, sql: str) -> dict:
    headers = {"X-Presto-User": "cli", "X-Presto-Catalog": "tpch", "X-Presto-Schema": "tiny"}
    doc = requests.post(f"{url}/v1/statement", data=sql, headers=headers, timeout=30).json()
    while "nextUri" in doc:
        doc = requests.get(doc["nextUri"], timeout=30).json()
    return doc
