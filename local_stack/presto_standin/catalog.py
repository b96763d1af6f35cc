"""The ``tpch`` catalog of the stand-in: DuckDB tables shaped like Presto's TPC-H connector.

DuckDB's ``tpch`` extension (``dbgen``) produces the TPC-H data with the specification's column
names (``o_orderkey``) and DECIMAL money columns. Presto's TPC-H connector exposes the same data
with unprefixed names (``orders.orderkey``), DOUBLE money and quantity columns, BIGINT keys and
INTEGER small counts. Each schema (``tiny`` = scale factor 0.01, ``sf1`` = 1) is generated into a
scratch DuckDB schema and copied into ``tpch.<schema>.<table>`` with Presto's names and types;
larger schemas are generated on first use.

The extension is loaded from the ``duckdb-extension-tpch`` wheel (``INSTALL tpch`` would try to
download it, which cannot work offline).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import duckdb

log = logging.getLogger(__name__)

CATALOG = "tpch"

# Presto's TPC-H connector schemas and their scale factors (the ones this stand-in can make).
SCALE_FACTORS: dict[str, float] = {"tiny": 0.01, "sf1": 1.0}

# table -> [(Presto column, Presto type, dbgen column)], in the connector's column order.
TPCH_TABLES: dict[str, list[tuple[str, str, str]]] = {
    "customer": [
        ("custkey", "bigint", "c_custkey"),
        ("name", "varchar(25)", "c_name"),
        ("address", "varchar(40)", "c_address"),
        ("nationkey", "bigint", "c_nationkey"),
        ("phone", "varchar(15)", "c_phone"),
        ("acctbal", "double", "c_acctbal"),
        ("mktsegment", "varchar(10)", "c_mktsegment"),
        ("comment", "varchar(117)", "c_comment"),
    ],
    "orders": [
        ("orderkey", "bigint", "o_orderkey"),
        ("custkey", "bigint", "o_custkey"),
        ("orderstatus", "varchar(1)", "o_orderstatus"),
        ("totalprice", "double", "o_totalprice"),
        ("orderdate", "date", "o_orderdate"),
        ("orderpriority", "varchar(15)", "o_orderpriority"),
        ("clerk", "varchar(15)", "o_clerk"),
        ("shippriority", "integer", "o_shippriority"),
        ("comment", "varchar(79)", "o_comment"),
    ],
    "lineitem": [
        ("orderkey", "bigint", "l_orderkey"),
        ("partkey", "bigint", "l_partkey"),
        ("suppkey", "bigint", "l_suppkey"),
        ("linenumber", "integer", "l_linenumber"),
        ("quantity", "double", "l_quantity"),
        ("extendedprice", "double", "l_extendedprice"),
        ("discount", "double", "l_discount"),
        ("tax", "double", "l_tax"),
        ("returnflag", "varchar(1)", "l_returnflag"),
        ("linestatus", "varchar(1)", "l_linestatus"),
        ("shipdate", "date", "l_shipdate"),
        ("commitdate", "date", "l_commitdate"),
        ("receiptdate", "date", "l_receiptdate"),
        ("shipinstruct", "varchar(25)", "l_shipinstruct"),
        ("shipmode", "varchar(10)", "l_shipmode"),
        ("comment", "varchar(44)", "l_comment"),
    ],
    "part": [
        ("partkey", "bigint", "p_partkey"),
        ("name", "varchar(55)", "p_name"),
        ("mfgr", "varchar(25)", "p_mfgr"),
        ("brand", "varchar(10)", "p_brand"),
        ("type", "varchar(25)", "p_type"),
        ("size", "integer", "p_size"),
        ("container", "varchar(10)", "p_container"),
        ("retailprice", "double", "p_retailprice"),
        ("comment", "varchar(23)", "p_comment"),
    ],
    "partsupp": [
        ("partkey", "bigint", "ps_partkey"),
        ("suppkey", "bigint", "ps_suppkey"),
        ("availqty", "integer", "ps_availqty"),
        ("supplycost", "double", "ps_supplycost"),
        ("comment", "varchar(199)", "ps_comment"),
    ],
    "supplier": [
        ("suppkey", "bigint", "s_suppkey"),
        ("name", "varchar(25)", "s_name"),
        ("address", "varchar(40)", "s_address"),
        ("nationkey", "bigint", "s_nationkey"),
        ("phone", "varchar(15)", "s_phone"),
        ("acctbal", "double", "s_acctbal"),
        ("comment", "varchar(101)", "s_comment"),
    ],
    "nation": [
        ("nationkey", "bigint", "n_nationkey"),
        ("name", "varchar(25)", "n_name"),
        ("regionkey", "bigint", "n_regionkey"),
        ("comment", "varchar(152)", "n_comment"),
    ],
    "region": [
        ("regionkey", "bigint", "r_regionkey"),
        ("name", "varchar(25)", "r_name"),
        ("comment", "varchar(152)", "r_comment"),
    ],
}

# Column name -> Presto type, for the (unambiguous) TPC-H column names.
COLUMN_TYPES: dict[str, str] = {
    column: presto for columns in TPCH_TABLES.values() for column, presto, _ in columns
}

# Presto fails on division by zero; DuckDB returns NULL. Divisors are wrapped in this macro.
NONZERO_MACRO = "presto_standin_nonzero"
NONZERO_MACRO_SQL = (
    f"CREATE OR REPLACE MACRO {NONZERO_MACRO}(x) AS "
    "CASE WHEN x = 0 THEN error('Division by zero') ELSE x END"
)

_DUCKDB_TYPES = {"bigint": "BIGINT", "integer": "INTEGER", "double": "DOUBLE", "date": "DATE"}


def tpch_extension_path() -> Path:
    """Return the ``tpch.duckdb_extension`` file shipped in ``duckdb-extension-tpch``."""
    import duckdb_extension_tpch

    root = Path(duckdb_extension_tpch.__file__).parent
    found = sorted(root.rglob("tpch.duckdb_extension"))
    if not found:
        raise RuntimeError(f"no tpch.duckdb_extension file under {root}")
    version = f"v{duckdb.__version__}"
    return next((p for p in found if version in p.parts), found[0])


class TpchCatalog:
    """An in-memory DuckDB database holding the configured ``tpch`` schemas."""

    def __init__(
        self,
        schemas: Iterable[str] = ("tiny",),
        *,
        scale_factors: Mapping[str, float] | None = None,
        eager: Iterable[str] = ("tiny",),
    ) -> None:
        self.scale_factors = dict(scale_factors or SCALE_FACTORS)
        self.schemas = tuple(schemas)
        unknown = [s for s in self.schemas if s not in self.scale_factors]
        if unknown:
            raise ValueError(
                f"unknown TPC-H schemas {unknown}; known: {sorted(self.scale_factors)}"
            )
        self._db = duckdb.connect(":memory:")
        self._db.execute(f"LOAD '{tpch_extension_path()}'")
        self._db.execute(f"ATTACH ':memory:' AS {CATALOG}")
        self._db.execute(NONZERO_MACRO_SQL)
        self._generated: dict[str, threading.Event] = {}
        self._failures: dict[str, BaseException] = {}
        self._lock = threading.Lock()
        for schema in self.schemas:
            if schema in set(eager):
                self.ensure(schema)

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """Return a new DuckDB connection to the same database, configured like Presto."""
        con = self._db.cursor()
        # Presto divides integers as integers (truncating); DuckDB's `/` is float division.
        con.execute("SET integer_division = true")
        return con

    def is_ready(self, schema: str) -> bool:
        """Whether ``schema`` has been generated."""
        event = self._generated.get(schema)
        return event is not None and event.is_set() and schema not in self._failures

    def wait(self, schema: str, timeout: float | None) -> bool:
        """Start generating ``schema`` in the background if needed; wait up to ``timeout`` s.

        Returns whether it is ready; raises if its generation failed.
        """
        with self._lock:
            event = self._generated.get(schema)
            if event is None:
                event = self._generated[schema] = threading.Event()
                threading.Thread(
                    target=self._generate_then_signal,
                    args=(schema, event),
                    name=f"tpch-dbgen-{schema}",
                    daemon=True,
                ).start()
        if not event.wait(timeout):
            return False
        if schema in self._failures:
            failure = self._failures[schema]
            raise RuntimeError(f"generating {CATALOG}.{schema} failed: {failure}") from failure
        return True

    def ensure(self, schema: str) -> None:
        """Generate ``schema`` if it has not been generated yet (blocks while generating)."""
        self.wait(schema, None)

    def _generate_then_signal(self, schema: str, event: threading.Event) -> None:
        try:
            self._generate(schema)
        except BaseException as err:  # reported to every query that waits for the schema
            log.exception("generating %s.%s failed", CATALOG, schema)
            self._failures[schema] = err
        finally:
            event.set()

    def _generate(self, schema: str) -> None:
        sf = self.scale_factors[schema]
        started = time.monotonic()
        log.info("generating TPC-H schema %s.%s (sf=%s)", CATALOG, schema, sf)
        con = self._db.cursor()
        try:
            scratch = f"_dbgen_{schema}"
            con.execute(f'CREATE SCHEMA IF NOT EXISTS {CATALOG}."{scratch}"')
            con.execute(f"CALL dbgen(sf={sf}, catalog='{CATALOG}', schema='{scratch}')")
            con.execute(f'CREATE SCHEMA IF NOT EXISTS {CATALOG}."{schema}"')
            for table, columns in TPCH_TABLES.items():
                select = ", ".join(
                    f'CAST("{source}" AS {_DUCKDB_TYPES.get(presto, "VARCHAR")}) AS "{name}"'
                    for name, presto, source in columns
                )
                con.execute(
                    f'CREATE OR REPLACE TABLE {CATALOG}."{schema}"."{table}" AS '
                    f'SELECT {select} FROM {CATALOG}."{scratch}"."{table}"'
                )
                con.execute(f'DROP TABLE {CATALOG}."{scratch}"."{table}"')
            con.execute(f'DROP SCHEMA {CATALOG}."{scratch}"')
        finally:
            con.close()
        log.info("generated %s.%s in %.1f s", CATALOG, schema, time.monotonic() - started)

    def close(self) -> None:
        """Close the DuckDB database."""
        self._db.close()
