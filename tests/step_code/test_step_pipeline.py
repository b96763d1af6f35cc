"""preprocess -> train (sagemaker-training toolkit) -> evaluate -> inference (sagemaker-inference
Transformer) on real TPC-H rows."""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from tpch_features import FEATURES, KEY, LABEL

from local_stack.toolkits import (
    InferenceSession,
    TrainingRunResult,
    extract_model_tarball,
    make_model_tarball,
    run_training_job,
)

TUNING_METRIC_REGEX = r"validation:auc=([0-9\.]+)"
SPLITS = ("train", "validation", "test")


@dataclass
class Pipeline:
    """Everything the pipeline produced, shared by the tests of this module."""

    split_dir: Path
    split_dir_again: Path
    baseline: dict[str, Any]
    training: TrainingRunResult
    model_archive: Path
    evaluation: dict[str, Any]
    session: InferenceSession
    test_frame: pd.DataFrame


@pytest.fixture(scope="module")
def pipeline(
    tmp_path_factory: pytest.TempPathFactory,
    tpch_input_dir: Path,
    step_module: Callable[[str], ModuleType],
    preprocess_argv: Callable[..., list[str]],
    hyperparameters: Callable[..., dict[str, str]],
    step_code_dir: Path,
    cols: Any,
) -> Pipeline:
    assert list(cols.features) == FEATURES and (cols.key, cols.label) == (KEY, LABEL)
    root = tmp_path_factory.mktemp("pipeline")
    preprocess = step_module("preprocess")
    baseline = preprocess.main(preprocess_argv(tpch_input_dir, root / "splits"))
    preprocess.main(preprocess_argv(tpch_input_dir, root / "splits-again"))

    training = run_training_job(
        root / "training",
        str(step_code_dir),
        "train.py",
        hyperparameters(),
        {"train": root / "splits" / "train", "validation": root / "splits" / "validation"},
        timeout=300,
        job_name="tpch-orders-test",
    )
    assert training.succeeded, training.output[-3000:]
    archive = make_model_tarball(training.model_dir, root / "artifacts" / "model.tar.gz")

    evaluation = step_module("evaluate").main(
        [
            "--model-dir",
            str(archive.parent),
            "--test-dir",
            str(root / "splits" / "test"),
            "--output-dir",
            str(root / "evaluation"),
        ]
    )
    assert json.loads((root / "evaluation" / "evaluation.json").read_text()) == evaluation

    model_dir = extract_model_tarball(archive, root / "serving" / "model")
    session = InferenceSession(model_dir, step_code_dir)
    return Pipeline(
        split_dir=root / "splits",
        split_dir_again=root / "splits-again",
        baseline=baseline,
        training=training,
        model_archive=archive,
        evaluation=evaluation,
        session=session,
        test_frame=pd.read_csv(root / "splits" / "test" / "test.csv"),
    )


# ----------------------------------------------------------------------------- preprocess


def _read_split(directory: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(directory / name / f"{name}.csv")


def test_splits_are_disjoint_cover_the_input_and_follow_the_fractions(
    pipeline: Pipeline, tpch_frame: pd.DataFrame
) -> None:
    frames = {name: _read_split(pipeline.split_dir, name) for name in SPLITS}
    keys = {name: set(frame[KEY]) for name, frame in frames.items()}
    assert not keys["train"] & keys["validation"]
    assert not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]
    assert keys["train"] | keys["validation"] | keys["test"] == set(tpch_frame[KEY])

    total = len(tpch_frame)
    for name, expected in (("train", 0.7), ("validation", 0.15), ("test", 0.15)):
        assert abs(len(frames[name]) / total - expected) < 0.02, name
        assert list(frames[name].columns) == [KEY, *FEATURES, LABEL]
        assert frames[name][KEY].is_monotonic_increasing
        assert 0.15 < frames[name][LABEL].mean() < 0.35  # about 24 % positives everywhere

    # Rows are copied, not altered.
    merged = pd.concat(frames.values()).set_index(KEY).sort_index()
    expected_rows = tpch_frame.set_index(KEY).sort_index()
    pd.testing.assert_frame_equal(
        merged[FEATURES], expected_rows[FEATURES], check_dtype=False, check_exact=False
    )
    assert (merged[LABEL] == expected_rows[LABEL]).all()


def test_preprocess_outputs_are_byte_identical_across_runs(pipeline: Pipeline) -> None:
    for relative in [f"{s}/{s}.csv" for s in SPLITS] + ["baseline/baseline.json"]:
        first = (pipeline.split_dir / relative).read_bytes()
        assert first == (pipeline.split_dir_again / relative).read_bytes(), relative


def test_split_depends_only_on_key_and_salt(
    step_module: Callable[[str], ModuleType], tpch_frame: pd.DataFrame
) -> None:
    preprocess = step_module("preprocess")
    keys = tpch_frame[KEY]
    plain = preprocess.assign_splits(keys, 0.7, 0.15)
    shuffled = keys.sample(frac=1.0, random_state=3)
    assert (preprocess.assign_splits(shuffled, 0.7, 0.15).sort_index() == plain).all()
    salted = preprocess.assign_splits(keys, 0.7, 0.15, salt="2024-retrain")
    assert 0.3 < (salted != plain).mean() < 0.6  # an independent draw, same proportions
    assert abs((salted == "train").mean() - 0.7) < 0.02


def test_baseline_describes_the_train_split(pipeline: Pipeline, tpch_frame: pd.DataFrame) -> None:
    baseline = json.loads((pipeline.split_dir / "baseline" / "baseline.json").read_text())
    assert baseline == pipeline.baseline
    assert baseline["version"] == 2
    assert baseline["feature_columns"] == FEATURES
    train = _read_split(pipeline.split_dir, "train")
    assert baseline["rows"]["train"] == len(train)
    assert sum(baseline["rows"][s] for s in SPLITS) == baseline["rows"]["total"] == 15000
    exact = tpch_frame.set_index(KEY)
    for feature in FEATURES:
        stats = baseline["features"][feature]
        assert stats["count"] == len(train) and stats["null_count"] == 0
        assert stats["mean"] == pytest.approx(train[feature].mean())
        assert stats["std"] == pytest.approx(train[feature].std())
        assert stats["min"] == train[feature].min() and stats["max"] == train[feature].max()
        quantiles = stats["quantiles"]
        assert list(quantiles) == ["p01", "p05", "p25", "p50", "p75", "p95", "p99"]
        assert list(quantiles.values()) == sorted(quantiles.values())
        assert quantiles["p50"] == pytest.approx(train[feature].median())
        # The input's exact values: the CSV round trip may move a float by one ulp.
        _assert_bins_describe(stats["bins"], exact.loc[train[KEY], feature])
    balance = baseline["label"]["train"]
    assert balance["counts"]["1"] == int(train[LABEL].sum())
    assert balance["positive_rate"] == pytest.approx(train[LABEL].mean())


def _assert_bins_describe(bins: dict[str, Any], values: pd.Series) -> None:
    """``bins`` is the right-closed decile histogram of the non-null ``values``."""
    edges, counts = bins["edges"], bins["counts"]
    assert bins["closed"] == "right"
    assert 1 <= len(edges) <= 9 and len(counts) == len(edges) + 1
    assert all(low < high for low, high in zip(edges, edges[1:])), edges
    present = values.dropna().to_numpy(dtype="float64")
    assert sum(counts) == len(present)
    assert set(edges) <= set(present)  # observed values, not interpolated
    bounds = [-np.inf, *edges, np.inf]
    for index, count in enumerate(counts):  # (low, high]: an edge value is in the bin it closes
        low, high = bounds[index], bounds[index + 1]
        assert count == int(((present > low) & (present <= high)).sum()), (index, edges)


def test_baseline_bins_of_constant_low_cardinality_and_null_values(
    step_module: Callable[[str], ModuleType],
) -> None:
    preprocess = step_module("preprocess")
    constant = preprocess.feature_statistics(pd.Series([5.0] * 40))
    assert constant["bins"] == {"closed": "right", "edges": [5.0], "counts": [40, 0]}

    counts = pd.Series([1, 2, 2, 3, 3, 3, 4, 4, 4, 4] * 3 + [None] * 4, dtype="float64")
    stats = preprocess.feature_statistics(counts)
    assert stats["null_count"] == 4 and stats["count"] == 30
    assert stats["bins"] == {
        "closed": "right",
        "edges": [1.0, 2.0, 3.0, 4.0],
        "counts": [3, 6, 9, 12, 0],
    }
    _assert_bins_describe(stats["bins"], counts)

    spread = pd.Series(np.random.default_rng(7).normal(size=2001))
    _assert_bins_describe(preprocess.feature_statistics(spread)["bins"], spread)
    assert len(preprocess.feature_statistics(spread)["bins"]["edges"]) == 9


# ----------------------------------------------------------------------------- training


def test_training_prints_the_tuning_metric_and_saves_the_model(pipeline: Pipeline) -> None:
    training = pipeline.training
    assert training.returncode == 0 and training.failure_message is None
    matches = re.findall(TUNING_METRIC_REGEX, training.output)
    assert len(matches) == 1, training.output[-2000:]
    auc = float(matches[0])
    assert 0.6 < auc <= 1.0
    assert re.search(r"^validation:auc=\d\.\d{6};$", training.output, re.MULTILINE)
    assert (training.output_dir / "success").exists()

    metadata = json.loads((training.model_dir / "model_metadata.json").read_text())
    assert metadata["feature_columns"] == FEATURES
    assert metadata["label_column"] == LABEL and metadata["key_column"] == KEY
    assert metadata["classes"] == [0, 1]
    # Hyperparameters arrived as typed --name value arguments through the toolkit.
    assert metadata["hyperparameters"] == {
        "n_estimators": 30,
        "max_depth": 8,
        "min_samples_split": 4,
        "max_features": "sqrt",
        "random_state": 0,
    }
    assert metadata["train_rows"] == len(_read_split(pipeline.split_dir, "train"))
    assert metadata["validation_rows"] == len(_read_split(pipeline.split_dir, "validation"))
    assert metadata["validation_auc"] == pytest.approx(auc, abs=1e-6)
    assert metadata["versions"]["sklearn"]

    metrics = json.loads((training.output_data_dir / "metrics.json").read_text())
    assert metrics["validation"]["auc"] == pytest.approx(auc, abs=1e-6)

    # The toolkit started the script with the SageMaker variables and --name value arguments.
    assert "SM_CHANNEL_TRAIN=" in training.output
    assert "--n_estimators 30" in training.output


def test_model_tarball_is_reproducible(pipeline: Pipeline, tmp_path: Path) -> None:
    again = make_model_tarball(pipeline.training.model_dir, tmp_path / "model.tar.gz")
    assert again.read_bytes() == pipeline.model_archive.read_bytes()
    extracted = extract_model_tarball(again, tmp_path / "x")
    assert sorted(p.name for p in extracted.iterdir()) == ["model.joblib", "model_metadata.json"]


# ----------------------------------------------------------------------------- evaluation


def test_evaluation_report_has_model_quality_metrics_and_baseline(pipeline: Pipeline) -> None:
    report = pipeline.evaluation
    metrics = report["binary_classification_metrics"]
    for name in ("accuracy", "precision", "recall", "f1", "auc"):
        assert set(metrics[name]) == {"value", "standard_deviation"}
        assert 0.0 <= metrics[name]["value"] <= 1.0, name
    assert metrics["auc"]["value"] > 0.65
    assert metrics["accuracy"]["value"] > report["baseline"]["accuracy"] - 0.01

    matrix = metrics["confusion_matrix"]
    assert sum(matrix[a][p] for a in "01" for p in "01") == report["test_rows"]
    test = pipeline.test_frame
    assert report["test_rows"] == len(test)
    assert matrix["1"]["0"] + matrix["1"]["1"] == int(test[LABEL].sum())

    roc = metrics["receiver_operating_characteristic_curve"]
    assert 2 <= len(roc["false_positive_rates"]) == len(roc["true_positive_rates"]) <= 101
    assert roc["false_positive_rates"][0] == 0.0 and roc["false_positive_rates"][-1] == 1.0
    assert roc["false_positive_rates"] == sorted(roc["false_positive_rates"])
    pr = metrics["precision_recall_curve"]
    assert 2 <= len(pr["precisions"]) == len(pr["recalls"]) <= 101

    baseline = report["baseline"]
    assert baseline["majority_class"] == 0
    assert baseline["auc"] == 0.5
    assert baseline["accuracy"] == pytest.approx(1 - test[LABEL].mean())
    assert report["feature_columns"] == FEATURES


def test_evaluation_keeps_a_test_sample_the_serving_stack_reproduces_exactly(
    pipeline: Pipeline,
) -> None:
    """The endpoint smoke test's contract: the sample's rows, sent through the
    sagemaker-inference toolkit as repr'd CSV, score exactly the probabilities evaluate.py
    computed (same model, same image: the same floats)."""
    sample = pipeline.evaluation["test_sample"]
    assert sample["feature_columns"] == FEATURES
    assert len(sample["rows"]) == len(sample["probabilities"]) == len(sample["keys"]) == 50
    test = pipeline.test_frame
    assert sample["keys"] == [int(k) for k in test[KEY].iloc[:50]]
    body = "".join(",".join(repr(v) for v in row) + "\n" for row in sample["rows"])
    result = pipeline.session.invoke(body.encode(), "text/csv", "text/csv")
    _check(result, "text/csv")
    got = [float(line.split(",")[1]) for line in result.body.decode().splitlines()]
    # Not bit for bit: the forest adds its trees' votes in parallel threads, in any order.
    assert np.abs(np.array(got) - np.array(sample["probabilities"])).max() <= 1e-12


def test_evaluate_accepts_an_extracted_model_dir(
    pipeline: Pipeline, step_module: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    report = step_module("evaluate").main(
        [
            "--model-dir",
            str(pipeline.training.model_dir),
            "--test-dir",
            str(pipeline.split_dir / "test"),
            "--output-dir",
            str(tmp_path),
        ]
    )
    sample, expected = report.pop("test_sample"), dict(pipeline.evaluation)
    expected_sample = expected.pop("test_sample")
    assert report == expected
    assert sample["rows"] == expected_sample["rows"] and sample["keys"] == expected_sample["keys"]
    diff = np.abs(np.array(sample["probabilities"]) - np.array(expected_sample["probabilities"]))
    assert diff.max() <= 1e-12, "tree votes are summed in parallel: equal up to rounding"


# ----------------------------------------------------------------------------- inference


@pytest.fixture(scope="module")
def sample(pipeline: Pipeline) -> pd.DataFrame:
    return pipeline.test_frame.head(25)


@pytest.fixture(scope="module")
def expected(pipeline: Pipeline, sample: pd.DataFrame) -> np.ndarray:
    model = joblib.load(pipeline.training.model_dir / "model.joblib")
    return model.predict_proba(sample[FEATURES])[:, 1]


def _check(result: Any, expected_type: str) -> None:
    assert result.status == 200, result.body.decode()[:2000]
    assert result.content_type == expected_type


def _csv_answers(body: bytes) -> tuple[list[int], np.ndarray]:
    lines = body.decode().strip().splitlines()
    pairs = [line.split(",") for line in lines]
    return [int(p) for p, _ in pairs], np.array([float(q) for _, q in pairs])


def _assert_matches(
    predictions: list[int], probabilities: np.ndarray, expected: np.ndarray
) -> None:
    assert len(predictions) == len(expected)
    assert set(predictions) <= {0, 1}
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-12)
    assert predictions == [int(p >= 0.5) for p in expected]


def test_inference_csv_with_header_selects_columns_by_name(
    pipeline: Pipeline, sample: pd.DataFrame, expected: np.ndarray
) -> None:
    # Extra columns and a different column order are fine when a header names them.
    frame = sample[[LABEL, *reversed(FEATURES), KEY]]
    result = pipeline.session.invoke(frame.to_csv(index=False), "text/csv", "text/csv")
    _check(result, "text/csv")
    _assert_matches(*_csv_answers(result.body), expected)


def test_inference_csv_without_header_uses_training_order(
    pipeline: Pipeline, sample: pd.DataFrame, expected: np.ndarray
) -> None:
    body = sample[FEATURES].to_csv(index=False, header=False).encode()
    result = pipeline.session.invoke(body, "text/csv; charset=utf-8", "text/csv")
    _check(result, "text/csv")
    _assert_matches(*_csv_answers(result.body), expected)


def _json_answers(body: bytes) -> tuple[list[int], np.ndarray]:
    items = json.loads(body)["predictions"]
    return [i["prediction"] for i in items], np.array([i["probability"] for i in items])


def test_inference_json_list_of_objects(
    pipeline: Pipeline, sample: pd.DataFrame, expected: np.ndarray
) -> None:
    records = sample[[KEY, *FEATURES]].to_dict(orient="records")
    result = pipeline.session.invoke(json.dumps(records), "application/json", "application/json")
    _check(result, "application/json")
    _assert_matches(*_json_answers(result.body), expected)


def test_inference_json_instances_objects_and_lists(
    pipeline: Pipeline, sample: pd.DataFrame, expected: np.ndarray
) -> None:
    as_objects = {"instances": sample[FEATURES].to_dict(orient="records")}
    as_lists = {"instances": sample[FEATURES].to_numpy().tolist()}
    for document in (as_objects, as_lists):
        result = pipeline.session.invoke(json.dumps(document).encode(), "application/json")
        _check(result, "application/json")  # no Accept: the container's default, JSON
        _assert_matches(*_json_answers(result.body), expected)


def test_inference_json_single_object(pipeline: Pipeline, sample: pd.DataFrame) -> None:
    record = sample[FEATURES].iloc[0].to_dict()
    result = pipeline.session.invoke(json.dumps(record), "application/json", "*/*")
    _check(result, "application/json")
    assert len(json.loads(result.body)["predictions"]) == 1


def test_inference_json_lines(
    pipeline: Pipeline, sample: pd.DataFrame, expected: np.ndarray
) -> None:
    body = sample[FEATURES].to_json(orient="records", lines=True)
    result = pipeline.session.invoke(body, "application/jsonlines", "application/jsonlines")
    _check(result, "application/jsonlines")
    items = [json.loads(line) for line in result.body.decode().splitlines()]
    predictions = [i["prediction"] for i in items]
    _assert_matches(predictions, np.array([i["probability"] for i in items]), expected)


@pytest.mark.parametrize(
    ("body", "content_type", "accept", "status", "message"),
    [
        (
            '[{"total_extended_price": 1.0, "avg_discount": 0.1, "lineitem_count": 2}]',
            "application/json",
            "application/json",
            400,
            "record 1 is missing feature(s): total_quantity, total_payable_tax",
        ),
        (
            "total_extended_price,avg_discount,lineitem_count\n1,0.1,2\n",
            "text/csv",
            "text/csv",
            400,
            "CSV header is missing feature(s): total_quantity, total_payable_tax",
        ),
        ("1,2,3\n", "text/csv", "text/csv", 400, "record 1 has 3 values; expected 5 features"),
        (
            "1,0.1,abc,2,3\n",
            "text/csv",
            "text/csv",
            400,
            "non-numeric value 'abc' for feature total_quantity in record 1",
        ),
        (
            "1,0.1,2,2,3\n",
            "application/x-npy",
            "text/csv",
            415,
            "unsupported content type 'application/x-npy'; supported: text/csv, "
            "application/json, application/jsonlines",
        ),
        ("1,0.1,2,2,3\n", "text/csv", "application/xml", 406, "unsupported accept type"),
        ("", "text/csv", "text/csv", 400, "request body is empty"),
        ("{not json", "application/json", "text/csv", 400, "invalid JSON"),
    ],
)
def test_inference_rejects_bad_requests_with_a_clear_message(
    pipeline: Pipeline, body: str, content_type: str, accept: str, status: int, message: str
) -> None:
    result = pipeline.session.invoke(body.encode(), content_type, accept)
    assert result.status == status
    first_line = result.body.decode().splitlines()[0]
    assert message in first_line, first_line


def test_inference_sessions_do_not_mix_modules(
    pipeline: Pipeline,
    tmp_path: Path,
    sample: pd.DataFrame,
    expected: np.ndarray,
    step_module: Callable[[str], ModuleType],
    step_code_dir: Path,
) -> None:
    # A second model with other features, served from another copy of the code.
    train = step_module("train")
    other_model = tmp_path / "model"
    train.main(
        [
            "--n_estimators",
            "5",
            "--feature_columns",
            "lineitem_count,avg_discount",
            "--label_column",
            LABEL,
            "--train",
            str(pipeline.split_dir / "train"),
            "--validation",
            str(pipeline.split_dir / "validation"),
            "--model_dir",
            str(other_model),
            "--output_data_dir",
            str(tmp_path / "output"),
        ]
    )
    other_code = tmp_path / "code"
    shutil.copytree(step_code_dir, other_code, ignore=shutil.ignore_patterns("__pycache__"))
    other = InferenceSession(other_model, other_code)
    assert other.module is not pipeline.session.module
    assert "inference" not in sys.modules

    two_columns = "lineitem_count,avg_discount\n3,0.05\n"
    assert other.invoke(two_columns, "text/csv", "text/csv").status == 200
    # The first session still wants its own five features and gives its own answers.
    assert pipeline.session.invoke(two_columns, "text/csv", "text/csv").status == 400
    body = sample[FEATURES].to_csv(index=False)
    result = pipeline.session.invoke(body, "text/csv", "text/csv")
    _assert_matches(*_csv_answers(result.body), expected)
    assert other.invoke(body, "text/csv", "text/csv").status == 200  # header: extra columns ok
