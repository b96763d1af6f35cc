"""The Presto stand-in, driven by the real ``presto-python-client`` and Airflow's ``PrestoHook``."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime
from pathlib import Path

import jinja2
import prestodb
import pytest
import requests
from prestodb.exceptions import HttpError, PrestoQueryError, PrestoUserError

from local_stack.presto_standin import PrestoStandin
from local_stack.stack import LocalStack

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


# -- data that lands later ("visible up to" date) ----------------------------------------------

# tpch.tiny (dbgen sf 0.01): all of it, and what is dated up to a day (orders, their line items).
FULL = (15000, 60175)
UP_TO = {
    date(1995, 6, 16): (7843, 31572),
    date(1995, 6, 17): (7851, 31607),  # 8 orders on 1995-06-17, 35 line items
    date(1998, 8, 1): (14993, 60144),  # the last day, 1998-08-02, has 7 orders
}


@pytest.fixture(scope="module")
def landing_home(tmp_path_factory) -> Path:
    """The ``home`` of a (not started) local stack whose visible-up-to file the stand-in reads."""
    return tmp_path_factory.mktemp("local-stack-home")


@pytest.fixture(scope="module")
def presto_landing(landing_home) -> Iterator[PrestoStandin]:
    """A stand-in reading the visible-up-to file where ``LocalStack`` writes it (documented as
    ``<home>/presto-tls/visible-up-to``)."""
    path = landing_home / "presto-tls" / "visible-up-to"
    with PrestoStandin(port=0, schemas=("tiny",), visible_up_to_file=path) as standin:
        yield standin


@pytest.fixture
def stack(landing_home, presto_landing, monkeypatch) -> Iterator[LocalStack]:
    """The stack object that sets the date (all data visible again afterwards), with
    ``presto_default`` pointing at ``presto_landing``."""
    conn = {
        "conn_type": "presto",
        "host": "127.0.0.1",
        "port": presto_landing.port,
        "login": "airflow",
        "schema": "tiny",
        "extra": {"catalog": "tpch"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_PRESTO_DEFAULT", json.dumps(conn))
    stack = LocalStack(presto_port=1, aws_port=2, home=landing_home)
    yield stack
    stack.set_presto_visible_up_to(None)


def landed_counts(standin: PrestoStandin) -> tuple[int, int]:
    orders = run(standin, "SELECT count(*) FROM orders")[0][0][0]
    lineitem = run(standin, "SELECT count(*) FROM lineitem")[0][0][0]
    return orders, lineitem


def test_reference_counts_of_landed_data(tpch_reference):
    for day, counts in UP_TO.items():
        expected = tpch_reference.execute(
            "SELECT count(DISTINCT o_orderkey), count(*) FROM orders JOIN lineitem "
            "ON l_orderkey = o_orderkey WHERE o_orderdate <= ?",
            [day],
        ).fetchone()
        assert expected == counts, day


def test_data_arrival_waits_for_data_that_lands_later(presto_landing, stack):
    from airflow.providers.presto.hooks.presto import PrestoHook

    run_date = date(1995, 6, 17)
    sql = render(
        "data_arrival.sql",
        source={"catalog": "tpch", "schema": "tiny"},
        data_interval_start=datetime(1995, 6, 17),
    )
    hook = PrestoHook()
    assert hook.get_first(sql) == [True]
    assert landed_counts(presto_landing) == FULL

    stack.set_presto_visible_up_to(date(1995, 6, 16))  # the run date has not landed yet
    assert hook.get_first(sql) == [False]
    assert landed_counts(presto_landing) == UP_TO[date(1995, 6, 16)]

    stack.set_presto_visible_up_to(run_date)  # it lands: the sensor would release
    assert hook.get_first(sql) == [True]
    assert landed_counts(presto_landing) == UP_TO[run_date]

    stack.set_presto_visible_up_to(None)
    assert landed_counts(presto_landing) == FULL


def test_without_a_date_queries_are_not_rewritten(presto_landing, stack):
    _, _, query_id = run(presto_landing, "SELECT count(*) FROM orders")
    assert presto_landing.query_info(query_id)["duckdb_sql"] == (
        "SELECT COUNT(*) AS _col0 FROM tpch.tiny.orders"
    )


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT count(*) FROM tpch.tiny.orders o", 14993),
        ("SELECT count(tiny.orders.orderkey), count(orders.custkey) FROM orders", [14993, 14993]),
        ("SELECT count(x.k) FROM orders AS x(k, c, s, t, d, p, cl, sp, cm)", 14993),
        ("SELECT max(orderdate) FROM orders", "1998-08-01"),
        ("SELECT count(*) FROM lineitem l JOIN orders o ON l.orderkey = o.orderkey", 60144),
        ("SELECT count(*), count(DISTINCT orderkey) FROM lineitem", [60144, 14993]),
        (
            "SELECT count(*) FROM (SELECT orderkey FROM orders UNION ALL SELECT 1 FROM lineitem)",
            14993 + 60144,
        ),
        ("WITH orders AS (SELECT 1 AS x) SELECT count(*) FROM orders", 1),
        ("SELECT count(*) FROM customer", 1500),
    ],
)
def test_every_reference_to_orders_and_lineitem_sees_only_landed_rows(
    presto_landing, stack, sql, expected
):
    stack.set_presto_visible_up_to(date(1998, 8, 1))
    rows, _, _ = run(presto_landing, sql)
    assert rows == [expected if isinstance(expected, list) else [expected]]


def test_prepared_statements_see_only_landed_rows(stack):
    from airflow.providers.presto.hooks.presto import PrestoHook

    # Parameters go through PREPARE / EXECUTE ... USING: the executed statement is filtered too.
    sql = "SELECT count(*) FROM orders WHERE orderdate >= ?"
    assert PrestoHook().get_first(sql, parameters=[date(1998, 8, 1)]) == [12]
    stack.set_presto_visible_up_to(date(1998, 8, 1))
    assert PrestoHook().get_first(sql, parameters=[date(1998, 8, 1)]) == [5]


def test_a_file_without_a_date_fails_queries_loudly(presto_landing, stack, landing_home):
    path = landing_home / "presto-tls" / "visible-up-to"
    path.write_text("tomorrow\n")
    with pytest.raises(PrestoQueryError) as raised:
        run(presto_landing, "SELECT count(*) FROM orders")
    assert raised.value.error_name == "GENERIC_INTERNAL_ERROR"
    assert f"{path} holds 'tomorrow', not an ISO date" in raised.value.message


def test_cli_reads_the_file_local_stack_writes(tmp_path):
    stack = LocalStack(presto_port=1, aws_port=2, home=tmp_path)
    stack.set_presto_visible_up_to(date(1998, 8, 1))  # before the stand-in starts
    path = tmp_path / "presto-tls" / "visible-up-to"
    assert path.read_text() == "1998-08-01\n"
    argv = [sys.executable, "-m", "local_stack.presto_standin", "--port", "0"]
    argv += ["--schemas", "tiny", "--visible-up-to-file", str(path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        url = proc.stdout.readline().split("listening on ", 1)[1].split()[0]
        sql = "SELECT count(*) FROM lineitem"
        assert post_to(url, sql)["data"] == [[60144]]
        stack.set_presto_visible_up_to(None)  # from this process; the stand-in sees it
        assert not path.exists()
        assert post_to(url, sql)["data"] == [[60175]]
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


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


# -- Presto's grammar: what Presto rejects is rejected before translation ---------------------

# Statements Presto's parser rejects. sqlglot accepted the first eight, plus "negative LIMIT",
# "JOIN without ON", "empty IN list" and "alias is a reserved word". Each entry: SQL, (line,
# column) of the error as Presto reports it, start of the message after "line L:C: ".
INVALID_SQL = {
    "empty GROUP BY item": (
        "SELECT o.orderkey\nFROM orders o\nGROUP BY o.orderkey,, o.orderdate",
        (3, 21),
        "mismatched input ','. Expecting: ",
    ),
    "empty select item": (
        "SELECT orderkey,, orderdate FROM orders",
        (1, 17),
        "mismatched input ','",
    ),
    "trailing comma in select list": (
        "SELECT orderkey, orderdate, FROM orders",
        (1, 29),
        "mismatched input 'FROM'. Expecting: '*', <expression>",
    ),
    "trailing comma in ORDER BY": (
        "SELECT orderkey FROM orders ORDER BY orderkey,",
        (1, 47),
        "mismatched input '<EOF>'. Expecting: <expression>",
    ),
    "GROUP BY without items": ("SELECT orderkey FROM orders GROUP BY", (1, 37), "mismatched input"),
    "DISTINCT without items": ("SELECT DISTINCT FROM orders", (1, 17), "mismatched input 'FROM'"),
    "empty IN list": ("SELECT 1 FROM orders WHERE orderkey IN ()", (1, 37), "mismatched input"),
    "JOIN without ON": (
        "SELECT * FROM orders o JOIN lineitem l",
        (1, 39),
        "mismatched input '<EOF>'. Expecting: 'ON', 'USING'",
    ),
    "missing FROM relation": ("SELECT * FROM", (1, 14), "mismatched input '<EOF>'"),
    "missing relation before WHERE": ("SELECT * FROM WHERE orderkey = 1", (1, 15), "mismatched"),
    "WHERE without condition": ("SELECT * FROM orders WHERE", (1, 27), "mismatched input '<EOF>'"),
    "unclosed parenthesis": ("SELECT (orderkey + 1 FROM orders", (1, 22), "mismatched input"),
    "extra closing parenthesis": (
        "SELECT orderkey + 1) FROM orders",
        (1, 20),
        "mismatched input ')'",
    ),
    "unclosed function call": ("SELECT count(* FROM orders", (1, 16), "mismatched input 'FROM'"),
    "misspelled SELECT": ("SELCT * FROM orders", (1, 1), "mismatched input 'SELCT'. Expecting: "),
    "misspelled FROM": ("SELECT * FORM orders", (1, 10), "mismatched input 'FORM'"),
    "misspelled WHERE": ("SELECT * FROM orders WHER orderkey = 1", (1, 27), "mismatched input"),
    "LIMIT without value": ("SELECT * FROM orders o LIMIT", (1, 29), "mismatched input '<EOF>'"),
    "negative LIMIT": ("SELECT * FROM orders LIMIT -1", (1, 28), "mismatched input '-'"),
    "two LIMIT values": ("SELECT * FROM orders LIMIT 10 20", (1, 31), "mismatched input '20'"),
    "ORDER without BY": ("SELECT orderkey FROM orders ORDER orderkey", (1, 35), "mismatched input"),
    "double comparison operator": (
        "SELECT 1 FROM orders WHERE orderkey = = 1",
        (1, 39),
        "mismatched",
    ),
    "CASE without END": ("SELECT CASE WHEN orderkey > 1 THEN 1 FROM orders", (1, 38), "mismatched"),
    "BETWEEN without AND": ("SELECT 1 FROM orders WHERE orderkey BETWEEN 1", (1, 46), "mismatched"),
    "dangling AND": ("SELECT 1 FROM orders WHERE orderkey > 1 AND", (1, 44), "mismatched"),
    "trailing semicolon": ("SELECT 1;", (1, 9), "mismatched input ';'. Expecting: <EOF>"),
    "two statements": ("SELECT 1; SELECT 2", (1, 9), "mismatched input ';'"),
    "unterminated string": ("SELECT 'abc FROM orders", (1, 8), "mismatched input '''"),
    "backquoted identifier": (
        "SELECT `orderkey` FROM orders",
        (1, 8),
        "backquoted identifiers are not supported; use double quotes to quote identifiers",
    ),
    "identifier starting with a digit": (
        "SELECT 1 AS 1st FROM orders",
        (1, 13),
        "identifiers must not start with a digit; surround the identifier with double quotes",
    ),
    "alias is a reserved word": ("SELECT 1 AS from", (1, 13), "mismatched input 'from'"),
    "WITH without a query": ("WITH x AS (SELECT 1)", (1, 21), "mismatched input '<EOF>'"),
    "UNION without right side": ("SELECT 1 UNION", (1, 15), "mismatched input '<EOF>'"),
    "PARTITION without BY": (
        "SELECT max(orderkey) OVER (PARTITION orderkey) FROM orders",
        (1, 38),
        "mismatched input",
    ),
    "SELECT twice": ("SELECT SELECT 1", (1, 8), "mismatched input 'SELECT'"),
    "comment only": ("-- nothing here", (1, 16), "mismatched input '<EOF>'"),
}

# Statements Presto parses (the client's own PREPARE/EXECUTE forms included): the stand-in runs
# them, so they must get past the grammar.
VALID_SQL = [
    "SELECT o.orderkey, sum(l.quantity) AS q FROM orders o JOIN lineitem l "
    "ON l.orderkey = o.orderkey GROUP BY o.orderkey ORDER BY 2 DESC LIMIT 3",
    "select lower(clerk) as c, date_trunc('month', orderdate) from orders where orderkey "
    "between 1 and 10 limit 5",
    "WITH t AS (SELECT orderkey, row_number() OVER (PARTITION BY custkey ORDER BY orderdate DESC)"
    " AS rn FROM orders) SELECT count(*) FROM t WHERE rn = 1",
    "SELECT count(*) FROM orders WHERE EXISTS (SELECT 1 FROM lineitem "
    "WHERE lineitem.orderkey = orders.orderkey)",
    "SELECT \"orderkey\" FROM \"orders\" WHERE orderstatus IN ('F', 'O') LIMIT 2",
    "SELECT * FROM (VALUES (1, 'a'), (2, 'b')) AS t (id, name)",
    "SELECT 1 UNION ALL SELECT 2",
    "SELECT CASE orderstatus WHEN 'F' THEN 1 ELSE 0 END AS f FROM orders LIMIT 1",
    "-- a comment first\nSELECT orderkey /* inline */ FROM orders LIMIT 1",
    "SELECT * FROM orders LIMIT ALL",
]


@pytest.mark.parametrize(
    ("sql", "location", "message"),
    list(INVALID_SQL.values()),
    ids=list(INVALID_SQL),
)
def test_invalid_sql_is_a_presto_syntax_error(presto, sql, location, message):
    with pytest.raises(PrestoUserError) as raised:
        run(presto, sql)
    error = raised.value
    assert (error.error_name, error.error_type) == ("SYNTAX_ERROR", "USER_ERROR")
    assert error.error_location == location
    assert error.message.startswith(f"line {location[0]}:{location[1]}: {message}")
    info = presto.query_info(error.query_id)
    assert info["duckdb_sql"] is None, "rejected before translation"


def test_empty_group_by_item_message_is_prestos(presto):
    """The case of issue 6, with the full message Presto's ErrorHandler builds."""
    with pytest.raises(PrestoUserError) as raised:
        run(presto, INVALID_SQL["empty GROUP BY item"][0])
    assert raised.value.message == (
        "line 3:21: mismatched input ','. "
        "Expecting: '(', 'CUBE', 'GROUPING', 'ROLLUP', <expression>"
    )
    assert raised.value.failure_info["type"].endswith("ParsingException")


@pytest.mark.parametrize("sql", VALID_SQL)
def test_valid_sql_gets_past_the_grammar_and_runs(presto, sql):
    rows, columns, query_id = run(presto, sql)
    assert rows and columns
    assert presto.query_info(query_id)["state"] == "FINISHED"


def test_grammar_check_cost_is_small():
    from local_stack.presto_standin.grammar import check_statement, warm_up

    sql = render(
        "training.sql",
        source={"catalog": "tpch", "schema": "tiny"},
        window_start=lambda d: "1996-01-01",
        data_interval_end=datetime(1996, 3, 1),
    )
    warm_up()
    check_statement(sql)
    started = time.perf_counter()
    for _ in range(5):
        check_statement(sql)
    assert (time.perf_counter() - started) / 5 < 0.5  # about 0.03 s on 2 shared cores


# -- HTTPS and basic authentication ------------------------------------------------------------

PASSWORD = "s3cret-Pa55"


@pytest.fixture(autouse=True)
def _session_verify_is_honoured(monkeypatch):
    """requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a session's ``verify``
    (psf/requests issue 3829), which is where PrestoHook puts the connection's ``verify``;
    the local stack unsets them for Airflow too (``LocalStack.airflow_env``)."""
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)


@pytest.fixture(scope="module")
def presto_tls(tmp_path_factory) -> PrestoStandin:
    """A stand-in on HTTPS with user ``airflow`` (password ``PASSWORD``)."""
    tls_dir = tmp_path_factory.mktemp("presto-tls")
    with PrestoStandin(
        port=0, schemas=("tiny",), users={"airflow": PASSWORD}, tls=True, tls_dir=tls_dir
    ) as standin:
        yield standin


def tls_conn(standin: PrestoStandin, password: str, **extra) -> dict:
    return {
        "conn_type": "presto",
        "host": "127.0.0.1",
        "port": standin.port,
        "login": "airflow",
        "password": password,
        "schema": "tiny",
        "extra": {"catalog": "tpch", "protocol": "https", "verify": str(standin.ca_path), **extra},
    }


def test_https_with_the_right_password_works_through_presto_hook(presto_tls, monkeypatch):
    from airflow.providers.presto.hooks.presto import PrestoHook

    monkeypatch.setenv("AIRFLOW_CONN_PRESTO_TLS", json.dumps(tls_conn(presto_tls, PASSWORD)))
    hook = PrestoHook(presto_conn_id="presto_tls")
    assert presto_tls.url.startswith("https://")
    assert hook.get_records("SELECT count(*) FROM orders") == [[15000]]
    assert hook.get_first("SELECT orderkey FROM orders WHERE orderdate = ?", [date(1996, 1, 2)])


def test_wrong_password_is_a_401_from_presto(presto_tls, monkeypatch):
    from airflow.providers.presto.hooks.presto import PrestoHook

    monkeypatch.setenv("AIRFLOW_CONN_PRESTO_TLS", json.dumps(tls_conn(presto_tls, "wrong")))
    with pytest.raises(HttpError, match=r"error 401.*Access Denied: Invalid credentials"):
        PrestoHook(presto_conn_id="presto_tls").get_records("SELECT 1")


def test_missing_credentials_get_prestos_challenge(presto_tls):
    response = requests.get(f"{presto_tls.url}/v1/info", verify=presto_tls.ca_path, timeout=30)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="Presto"'
    good = requests.get(
        f"{presto_tls.url}/v1/info",
        verify=presto_tls.ca_path,
        auth=("airflow", PASSWORD),
        timeout=30,
    )
    assert good.status_code == 200


def test_password_over_plain_http_is_refused_by_the_client(presto_tls, monkeypatch):
    from airflow.providers.presto.hooks.presto import PrestoHook

    conn = tls_conn(presto_tls, PASSWORD, protocol="http")
    monkeypatch.setenv("AIRFLOW_CONN_PRESTO_TLS", json.dumps(conn))
    with pytest.raises(ValueError, match="cannot use authentication with HTTP"):
        PrestoHook(presto_conn_id="presto_tls").get_records("SELECT 1")


def test_certificate_is_not_trusted_without_the_ca_and_http_is_not_served(presto_tls):
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{presto_tls.url}/v1/info", auth=("airflow", PASSWORD), timeout=30)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{presto_tls.port}/v1/info", timeout=30)


def test_users_require_tls():
    with pytest.raises(ValueError, match="requires HTTPS"):
        PrestoStandin(port=0, users={"airflow": PASSWORD})


def test_password_is_not_logged(presto_tls, caplog):
    caplog.set_level(logging.DEBUG, logger="local_stack.presto_standin")
    session = requests.Session()
    session.verify = presto_tls.ca_path
    session.auth = ("airflow", PASSWORD)
    doc = session.post(
        f"{presto_tls.url}/v1/statement",
        data="SELECT count(*) FROM orders",
        headers={"X-Presto-User": "airflow", "X-Presto-Catalog": "tpch", "X-Presto-Schema": "tiny"},
        timeout=30,
    ).json()
    while "nextUri" in doc:
        doc = session.get(doc["nextUri"], timeout=30).json()
    assert doc["data"] == [[15000]]
    assert caplog.records and PASSWORD not in caplog.text


def test_local_stack_connection_uses_https_and_a_password(tmp_path):
    from local_stack.stack import LocalStack

    stack = LocalStack(presto_port=1, aws_port=2, home=tmp_path)
    conn = json.loads(stack.airflow_env()["AIRFLOW_CONN_PRESTO_DEFAULT"])
    assert conn["extra"]["protocol"] == "https"
    assert conn["extra"]["verify"] == str(tmp_path / "presto-tls" / "ca.pem")
    assert conn["login"] == "airflow" and len(conn["password"]) >= 16
    assert conn["password"] not in repr(stack)
