"""Fixtures for the step-code tests: real TPC-H rows (DuckDB dbgen, sf 0.01) and the scripts.

The extraction frame is built like ``include/sql/tpch_orders/training.sql`` builds it in Presto:
one row per order with the aggregated line-item features and the "all lines late" label.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[2]
STEP_CODE_DIR = ROOT / "include" / "step_code"
KEY = "orderkey"
LABEL = "label"
FEATURES = [
    "total_extended_price",
    "avg_discount",
    "total_quantity",
    "lineitem_count",
    "total_payable_tax",
]

# DuckDB's TPC-H tables prefix their columns (o_orderkey, l_extendedprice, ...); Presto's don't.
ORDERS_SQL = """
SELECT
    o.o_orderkey AS orderkey,
    o.o_orderdate AS orderdate,
    CAST(SUM(l.l_extendedprice) AS DOUBLE) AS total_extended_price,
    CAST(AVG(l.l_discount) AS DOUBLE) AS avg_discount,
    CAST(SUM(l.l_quantity) AS DOUBLE) AS total_quantity,
    COUNT(*) AS lineitem_count,
    CAST(SUM(l.l_extendedprice * (1 - l.l_discount) * l.l_tax) AS DOUBLE) AS total_payable_tax,
    CASE WHEN MIN(CASE WHEN l.l_receiptdate > l.l_commitdate THEN 1 ELSE 0 END) = 1
        THEN 1 ELSE 0 END AS label
FROM orders AS o
JOIN lineitem AS l ON l.l_orderkey = o.o_orderkey
GROUP BY o.o_orderkey, o.o_orderdate
ORDER BY o.o_orderkey
"""


def tpch_orders_table(scale_factor: float = 0.01) -> pa.Table:
    """The extraction frame for every TPC-H order, generated offline with DuckDB."""
    import duckdb
    import duckdb_extension_tpch

    package_dir = Path(duckdb_extension_tpch.__file__).parent
    extension = next(package_dir.rglob("tpch.duckdb_extension"))
    with duckdb.connect() as con:
        con.execute(f"LOAD '{extension}'")
        con.execute(f"CALL dbgen(sf={float(scale_factor)})")
        return con.execute(ORDERS_SQL).to_arrow_table()


@dataclass(frozen=True)
class Columns:
    """Column roles of the extraction frame."""

    key: str = KEY
    label: str = LABEL
    features: tuple[str, ...] = tuple(FEATURES)


@pytest.fixture(scope="session")
def cols() -> Columns:
    """Key, label and feature column names (``cols.features`` in training order)."""
    return Columns()


@pytest.fixture(scope="session")
def step_code_dir() -> Path:
    """``include/step_code``: the folder shipped as the training/serving source dir."""
    return STEP_CODE_DIR


@pytest.fixture(scope="session")
def tpch_orders() -> pa.Table:
    """Arrow table: orderkey int64, orderdate date32, float64 features, lineitem_count int64,
    label int32 — the schema the extraction task writes."""
    return tpch_orders_table()


@pytest.fixture(scope="session")
def tpch_frame(tpch_orders: pa.Table) -> pd.DataFrame:
    """The same rows as a pandas frame (a fresh copy per test would be wasteful: don't mutate)."""
    return tpch_orders.to_pandas()


@pytest.fixture(scope="session")
def tpch_input_dir(tmp_path_factory: pytest.TempPathFactory, tpch_orders: pa.Table) -> Path:
    """The extraction output: three Parquet parts ``part-0000N.parquet``."""
    directory = tmp_path_factory.mktemp("extract")
    rows = tpch_orders.num_rows
    bounds = [0, rows // 3, 2 * rows // 3, rows]
    for part, (start, stop) in enumerate(itertools.pairwise(bounds)):
        pq.write_table(
            tpch_orders.slice(start, stop - start), directory / f"part-{part:05d}.parquet"
        )
    return directory


_MODULES: dict[str, ModuleType] = {}


def _load_step_module(name: str) -> ModuleType:
    """Import ``include/step_code/<name>.py`` under a private name (``step_code_<name>``).

    The scripts import their helper ``step_common`` by its plain name, as they do in the
    containers (where their folder is first on ``sys.path``): the folder is put on
    ``sys.path`` while the script is imported.
    """
    if name not in _MODULES:
        module_name = f"step_code_{name}"
        spec = importlib.util.spec_from_file_location(module_name, STEP_CODE_DIR / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses need the module registered
        sys.path.insert(0, str(STEP_CODE_DIR))
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(STEP_CODE_DIR))
        _MODULES[name] = module
    return _MODULES[name]


@pytest.fixture(scope="session")
def step_module() -> Callable[[str], ModuleType]:
    """``step_module("preprocess")`` -> the script imported as a module."""
    return _load_step_module


def preprocess_args(input_dir: Path, output_dir: Path, *extra: str) -> list[str]:
    """Arguments of ``preprocess.py`` for the TPC-H frame."""
    return [
        "--input-dir",
        str(input_dir),
        "--output-dir",
        str(output_dir),
        "--key-column",
        KEY,
        "--label-column",
        LABEL,
        "--feature-columns",
        ",".join(FEATURES),
        *extra,
    ]


@pytest.fixture(scope="session")
def preprocess_argv() -> Callable[..., list[str]]:
    """Builder of ``preprocess.py`` arguments (input dir, output dir, extra args)."""
    return preprocess_args


def training_hyperparameters(**overrides: str) -> dict[str, str]:
    """Hyperparameters as the tuning job sends them (strings), small forest for speed."""
    return {
        "n_estimators": "30",
        "max_depth": "8",
        "min_samples_split": "4",
        "max_features": "sqrt",
        "feature_columns": ",".join(FEATURES),
        "label_column": LABEL,
        "key_column": KEY,
        "random_state": "0",
        **overrides,
    }


@pytest.fixture(scope="session")
def hyperparameters() -> Callable[..., dict[str, str]]:
    """Builder of training hyperparameters with overrides."""
    return training_hyperparameters
