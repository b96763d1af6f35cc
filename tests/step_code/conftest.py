"""Fixtures for the step-code tests: real TPC-H rows (DuckDB dbgen, sf 0.01) and the scripts.

The step code runs in SageMaker's scikit-learn images, so its tests run on each image's
interpreter and packages, never the host's: the host's pytest collects only
``test_images.py``, which runs this folder's ``test_step_*.py`` with the pytest of every image
venv (``local_stack/images.py``) in a subprocess, with ``STEP_CODE_IMAGE`` set to the framework
version. Under an image these modules (and the scripts and ``local_stack.toolkits`` they
import) must work on the image's Python (3.9 for ``1.2-1``).

The extraction frame (real TPC-H rows, built like ``include/sql/tpch_orders/training.sql``
builds it in Presto) is generated on the host with DuckDB, which the images do not ship, and
handed over as Parquet in ``STEP_CODE_TPCH_PARQUET``. Its key, label and feature names come
from ``tpch_features.py`` (the config's ``dataset`` section).
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tpch_features import FEATURES, KEY, LABEL

IMAGE = os.environ.get("STEP_CODE_IMAGE")
# Under an image: the step-code tests; on the host: only the runner that starts them per image.
collect_ignore_glob = ["test_images.py"] if IMAGE else ["test_step_*.py"]

ROOT = Path(__file__).resolve().parents[2]
STEP_CODE_DIR = ROOT / "include" / "step_code"


def pytest_report_header() -> list[str]:
    """Which interpreter and libraries the step code is tested on (the runner checks it)."""
    import numpy
    import sklearn

    return [
        f"step-code image: {IMAGE or 'none (host)'}; python {platform.python_version()}; "
        f"scikit-learn {sklearn.__version__}; pandas {pd.__version__}; numpy {numpy.__version__}"
    ]


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
    label int32 — the schema the extraction task writes (from ``STEP_CODE_TPCH_PARQUET``)."""
    path = os.environ.get("STEP_CODE_TPCH_PARQUET")
    if not path:
        pytest.fail("STEP_CODE_TPCH_PARQUET is not set: run these tests through test_images.py")
    return pq.read_table(path)


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
    for part, (start, stop) in enumerate(zip(bounds, bounds[1:])):
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
