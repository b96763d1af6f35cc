"""Drift (PSI per feature) of a batch against a baseline written by the real ``preprocess.py``."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mlops_sagemaker.drift import (
    DriftAccumulator,
    DriftBaselineError,
    DriftInputError,
    DriftReport,
    drift_level,
    psi,
)
from mlops_sagemaker.failures import Kind, classify

STEP_CODE_DIR = Path(__file__).resolve().parents[2] / "include" / "step_code"
FEATURES = ["price", "discount", "lineitem_count", "constant"]
WARN, RETRAIN = 0.1, 0.25
BASELINE_URI = "s3://bucket/mlops/tpch_orders/training/1996-02-29/split/baseline/baseline.json"
MODEL_ARN = "arn:aws:sagemaker:us-east-1:123456789012:model-package/tpch-orders/3"


def _load_preprocess() -> ModuleType:
    """``include/step_code/preprocess.py`` as a module (it imports ``step_common`` by its plain
    name, as in the container, so its folder is on ``sys.path`` while it is imported)."""
    spec = importlib.util.spec_from_file_location(
        "drift_test_preprocess", STEP_CODE_DIR / "preprocess.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(STEP_CODE_DIR))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(STEP_CODE_DIR))
    return module


def _frame(rows: int, seed: int) -> pd.DataFrame:
    """TPC-H-like rows: a skewed price, a low-cardinality discount and count, a constant."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "key": np.arange(rows) + seed * 1_000_000,
            "price": rng.lognormal(10.0, 0.5, rows),
            "discount": rng.integers(0, 11, rows) / 100,
            "lineitem_count": rng.integers(1, 8, rows),
            "constant": np.full(rows, 5.0),
            "label": rng.integers(0, 2, rows),
        }
    )


@pytest.fixture(scope="module")
def preprocess() -> ModuleType:
    return _load_preprocess()


@pytest.fixture(scope="module")
def training(preprocess: ModuleType) -> tuple[dict[str, Any], pd.DataFrame]:
    """The baseline as the drift task reads it (JSON from S3) and the train rows behind it."""
    data = _frame(6000, seed=1)
    splits = preprocess.assign_splits(data["key"], 0.7, 0.15)
    baseline = preprocess.build_baseline(data, splits, "key", "label", FEATURES, 0.7, 0.15, "")
    return json.loads(json.dumps(baseline, allow_nan=False)), data[splits == "train"]


@pytest.fixture(scope="module")
def baseline(training: tuple[dict[str, Any], pd.DataFrame]) -> dict[str, Any]:
    return training[0]


def _table(frame: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(frame[["key", *FEATURES]], preserve_index=False)


def _report(baseline: dict[str, Any], *tables: pa.Table) -> DriftReport:
    accumulator = DriftAccumulator(baseline, FEATURES)
    for table in tables:
        accumulator.add(table)
    return accumulator.report(WARN, RETRAIN, baseline_uri=BASELINE_URI, model_package_arn=MODEL_ARN)


def _by_name(report: DriftReport) -> dict[str, Any]:
    return {f.feature: f for f in report.features}


# ----------------------------------------------------------------------------- psi


def test_psi_matches_the_formula_computed_by_hand() -> None:
    # e = (.5, .3, .2), a = (.3, .3, .4): (-.2)ln(.6) + 0 + (.2)ln(2)
    assert psi([50, 30, 20], [30, 30, 40]) == pytest.approx(0.2407946, abs=1e-7)
    # An empty baseline bin is floored at 1e-4: (-.5)ln(.5) + (.4999)ln(.5 / 1e-4)
    assert psi([10, 0], [5, 5]) == pytest.approx(4.6043185, abs=1e-6)
    assert psi([10, 0], [5, 5], epsilon=1e-2) == pytest.approx(
        -0.5 * math.log(0.5) + 0.49 * math.log(50)
    )
    assert psi([1, 2, 3], [10, 20, 30]) == 0.0  # proportions, not counts
    assert psi([50, 30, 20], [30, 30, 40]) == pytest.approx(psi([30, 30, 40], [50, 30, 20]))


def test_psi_rejects_histograms_it_cannot_compare() -> None:
    with pytest.raises(ValueError, match="same bins"):
        psi([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="at least one count"):
        psi([1, 2], [0, 0])


def test_levels_start_at_their_thresholds() -> None:
    assert drift_level(0.25, WARN, RETRAIN) == "retrain"
    assert drift_level(0.2499, WARN, RETRAIN) == "warn"
    assert drift_level(0.1, WARN, RETRAIN) == "warn"
    assert drift_level(0.0999, WARN, RETRAIN) == "ok"


# ----------------------------------------------------------------------------- accumulator


def test_the_train_rows_reproduce_the_baseline_bins_exactly(
    training: tuple[dict[str, Any], pd.DataFrame],
) -> None:
    # Same rows, same edges: any disagreement on which side of a bin is closed shows up here
    # (discount and lineitem_count have many values equal to an edge).
    baseline, train = training
    report = _report(baseline, _table(train))
    for feature in report.features:
        bins = baseline["features"][feature.feature]["bins"]
        assert feature.psi == 0.0, feature
        assert feature.actual == feature.expected
        assert [round(p * len(train)) for p in feature.actual] == bins["counts"]
        assert feature.edges == bins["edges"]
    assert report.rows == len(train) and report.level == "ok"


def test_a_batch_from_the_same_distribution_does_not_drift(baseline: dict[str, Any]) -> None:
    report = _report(baseline, _table(_frame(2000, seed=2)))
    assert report.rows == 2000
    for feature in report.features:
        assert feature.psi < 0.02, feature
        assert feature.level == "ok" and feature.rows == 2000 and feature.nulls == 0
    assert _by_name(report)["constant"].psi == 0.0
    assert report.level == "ok"
    assert report.summary().startswith("no drift")


def test_a_tripled_feature_needs_retraining(baseline: dict[str, Any]) -> None:
    batch = _frame(2000, seed=3)
    batch["price"] = batch["price"] * 3
    report = _report(baseline, _table(batch))
    features = _by_name(report)
    assert features["price"].psi > RETRAIN and features["price"].level == "retrain"
    assert all(features[f].level == "ok" for f in FEATURES if f != "price")
    assert report.level == "retrain"
    assert report.summary().startswith(
        f"retrain: PSI >= 0.25 for price ({features['price'].psi:.3f})"
    )


def test_a_constant_feature_has_two_bins_and_drifts_upwards(baseline: dict[str, Any]) -> None:
    assert baseline["features"]["constant"]["bins"]["edges"] == [5.0]
    batch = _frame(500, seed=4)
    batch.loc[:99, "constant"] = 6.0  # 20 % above the training constant
    constant = _by_name(_report(baseline, _table(batch)))["constant"]
    assert constant.actual == [0.8, 0.2] and constant.expected == [1.0, 0.0]
    assert constant.level == "retrain"


def test_nulls_and_nan_are_counted_not_binned(baseline: dict[str, Any]) -> None:
    batch = _frame(2000, seed=5)
    table = _table(batch)
    price = pa.array(batch["price"], mask=np.arange(2000) % 10 == 0)  # 200 nulls
    discount = batch["discount"].to_numpy().copy()
    discount[:7] = np.nan
    table = table.set_column(table.schema.get_field_index("price"), "price", price)
    table = table.set_column(table.schema.get_field_index("discount"), "discount", [discount])
    features = _by_name(_report(baseline, table))
    assert (features["price"].nulls, features["price"].rows) == (200, 1800)
    assert (features["discount"].nulls, features["discount"].rows) == (7, 1993)
    assert (features["lineitem_count"].nulls, features["lineitem_count"].rows) == (0, 2000)
    assert features["price"].psi < 0.02


def test_several_tables_give_the_same_report_as_one(baseline: dict[str, Any]) -> None:
    batch = _frame(2100, seed=6)
    whole = _table(batch)
    parts = [whole.slice(0, 700), whole.slice(700, 1), whole.slice(701, 1399), whole.slice(0, 0)]
    assert _report(baseline, *parts).as_json() == _report(baseline, whole).as_json()


def test_integer_and_decimal_columns_are_binned_as_numbers(baseline: dict[str, Any]) -> None:
    batch = _frame(1000, seed=7)
    plain = _report(baseline, _table(batch))
    table = _table(batch)
    discount = pa.array(batch["discount"].round(2).astype(str)).cast(pa.decimal128(4, 2))
    table = table.set_column(table.schema.get_field_index("discount"), "discount", discount)
    assert table.schema.field("lineitem_count").type == pa.int64()
    assert _report(baseline, table).as_json() == plain.as_json()


# ----------------------------------------------------------------------------- errors


def test_a_version_1_baseline_asks_for_retraining(baseline: dict[str, Any]) -> None:
    old = json.loads(json.dumps(baseline))
    old["version"] = 1
    for stats in old["features"].values():
        del stats["bins"]
    with pytest.raises(DriftBaselineError) as info:
        DriftAccumulator(old, FEATURES)
    message = str(info.value)
    assert message.startswith("the baseline (version 1) has no bins for price, discount")
    assert "trained before baselines had bins" in message and "retrain the model" in message
    verdict = classify(info.value)
    assert (verdict.kind, verdict.category) == (Kind.PERMANENT, "data")


def test_features_missing_on_either_side_are_named(baseline: dict[str, Any]) -> None:
    with pytest.raises(DriftBaselineError) as info:
        DriftAccumulator(baseline, ["price", "discount", "lineitem_count", "tax"])
    message = str(info.value)
    assert "not in the baseline: tax;" in message
    assert "in the baseline but not in the batch: constant." in message


def test_malformed_bins_are_a_baseline_error(baseline: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(baseline))
    broken["features"]["price"]["bins"]["counts"].pop()
    with pytest.raises(DriftBaselineError, match="bins of feature price are unusable"):
        DriftAccumulator(broken, FEATURES)
    unbinned = json.loads(json.dumps(baseline))
    del unbinned["features"]["discount"]["bins"]  # version 2 without bins: not an old model
    with pytest.raises(DriftBaselineError, match=r"discount are unusable \(0 edges need 1"):
        DriftAccumulator(unbinned, FEATURES)


def test_a_feature_without_values_in_the_batch_is_an_input_error(
    baseline: dict[str, Any],
) -> None:
    table = _table(_frame(50, seed=8))
    nulls = pa.nulls(50, pa.float64())
    table = table.set_column(table.schema.get_field_index("price"), "price", nulls)
    accumulator = DriftAccumulator(baseline, FEATURES)
    accumulator.add(table)
    with pytest.raises(DriftInputError) as info:
        accumulator.report(WARN, RETRAIN)
    assert str(info.value).startswith(
        "no values to compare with the baseline in price (50 nulls) of 50 batch rows"
    )
    with pytest.raises(DriftInputError, match=r"in price \(0 nulls\), discount"):
        DriftAccumulator(baseline, FEATURES).report(WARN, RETRAIN)


def test_missing_or_non_numeric_batch_columns_are_named(baseline: dict[str, Any]) -> None:
    table = _table(_frame(10, seed=9))
    accumulator = DriftAccumulator(baseline, FEATURES)
    with pytest.raises(DriftInputError, match=r"lacks feature column\(s\) constant; it has: key"):
        accumulator.add(table.drop_columns(["constant"]))
    text = table.set_column(table.schema.get_field_index("price"), "price", pa.array(["1.5"] * 10))
    with pytest.raises(DriftInputError, match="feature column price has type string"):
        accumulator.add(text)
    with pytest.raises(ValueError, match="warn <= retrain"):
        accumulator.report(0.3, 0.2)


# ----------------------------------------------------------------------------- output


def test_table_lists_every_feature_with_its_level(baseline: dict[str, Any]) -> None:
    batch = _frame(2000, seed=10)
    batch["price"] = batch["price"] * 3
    report = _report(baseline, _table(batch))
    lines = report.table().splitlines()
    assert lines[0].split() == ["feature", "psi", "level", "rows", "nulls"]
    rows = lines[1 : 1 + len(FEATURES)]
    assert len({len(line) for line in lines[: 1 + len(FEATURES)]}) == 1  # fixed width
    for line, feature in zip(rows, report.features, strict=True):
        name, value, level, count, nulls = line.split()
        assert (name, level, int(count), int(nulls)) == (feature.feature, feature.level, 2000, 0)
        assert float(value) == pytest.approx(feature.psi, abs=5e-5)
    assert rows[0].split()[2] == "retrain"
    assert lines[-2] == "thresholds: warn >= 0.1, retrain >= 0.25"
    assert lines[-1] == report.summary()


def test_json_report_and_xcom(baseline: dict[str, Any]) -> None:
    report = _report(baseline, _table(_frame(2000, seed=11)))
    document = json.loads(json.dumps(report.as_json(), allow_nan=False))
    assert (document["baseline_uri"], document["model_package_arn"]) == (BASELINE_URI, MODEL_ARN)
    assert document["thresholds"] == {"warn": WARN, "retrain": RETRAIN}
    assert document["level"] == "ok" and document["rows"] == 2000
    assert list(document["features"]) == FEATURES
    price = document["features"]["price"]
    assert price["edges"] == baseline["features"]["price"]["bins"]["edges"]
    assert len(price["expected"]) == len(price["actual"]) == len(price["edges"]) + 1
    assert sum(price["actual"]) == pytest.approx(1.0)

    xcom = json.loads(json.dumps(report.as_xcom()))
    assert set(xcom["features"]["price"]) == {"psi", "level", "rows", "nulls"}
    again = DriftReport.from_xcom(xcom)
    assert again.as_xcom() == report.as_xcom()
    assert again.level == report.level and again.table() == report.table()
