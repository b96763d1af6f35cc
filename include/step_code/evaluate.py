"""Evaluate a trained model on the test split and write ``evaluation.json``.

Runs as a SageMaker Processing job in the scikit-learn container (``python evaluate.py ...``).
It has no dependency on Airflow; it needs ``step_common.py`` (failure reporting) next to it,
which holds because the job receives the whole step-code folder.

Inputs:

* ``--model-dir``: the training job's ``model.tar.gz`` (extracted to a temporary directory), or
  a directory that already holds ``model.joblib`` and ``model_metadata.json``;
* ``--test-dir``: the CSV files of the test split written by ``preprocess.py``.

Output: ``<output-dir>/evaluation.json`` in the SageMaker model-quality format
(``binary_classification_metrics`` with ``{"value": ..., "standard_deviation": "NaN"}`` entries,
``confusion_matrix`` as actual -> predicted -> count, ROC and precision-recall curves of at most
101 points), plus a ``baseline`` section (a constant classifier that always predicts the
training majority class), ``test_rows`` and the feature list. The same file can be given to
the Model Registry as ``ModelMetrics.ModelQuality.Statistics`` and read by a quality gate.

Validation problems raise :class:`DataValidationError`; when run as a script the message is
written to the SageMaker failure/exit-message file, printed to stderr, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    fbeta_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)
from step_common import DataValidationError, StepArgumentParser, run_as_script

DEFAULT_MODEL_DIR = "/opt/ml/processing/model"
DEFAULT_TEST_DIR = "/opt/ml/processing/test"
DEFAULT_OUTPUT_DIR = "/opt/ml/processing/evaluation"
MODEL_ARCHIVE = "model.tar.gz"
MODEL_FILE = "model.joblib"
METADATA_FILE = "model_metadata.json"
MAX_CURVE_POINTS = 101
# Test rows (with their probabilities) kept in evaluation.json for the endpoint smoke test.
SAMPLE_ROWS = 50


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line (SageMaker passes ``ContainerArguments`` here)."""
    parser = StepArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=DEFAULT_MODEL_DIR)
    parser.add_argument("--test-dir", default=DEFAULT_TEST_DIR)
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR)
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="positive-class probability at or above which a row is predicted positive "
        "(default: the model's decision_threshold, 0.5)",
    )
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- loading


def _extract_archive(archive: Path, destination: Path) -> None:
    """Extract ``model.tar.gz`` safely (no absolute paths, no links outside)."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(destination, filter="data")
            else:  # pragma: no cover - Python without extraction filters
                for member in tar.getmembers():
                    target = (destination / member.name).resolve()
                    if not target.is_relative_to(destination.resolve()):
                        raise DataValidationError(f"unsafe path {member.name!r} in {archive}")
                tar.extractall(destination)
    except (tarfile.TarError, OSError) as exc:
        raise DataValidationError(f"cannot extract model archive {archive}: {exc}") from exc


def locate_model(model_dir: Path, stack: ExitStack) -> Path:
    """Return a directory holding ``model.joblib``; extracts ``model.tar.gz`` when present."""
    if not model_dir.is_dir():
        raise DataValidationError(f"model directory {model_dir} does not exist")
    archive = model_dir / MODEL_ARCHIVE
    if not archive.is_file():
        archives = sorted(model_dir.glob("*.tar.gz"))
        archive = archives[0] if len(archives) == 1 else archive
    if archive.is_file():
        extracted = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="model-")))
        _extract_archive(archive, extracted)
        return extracted
    if (model_dir / MODEL_FILE).is_file():
        return model_dir
    contents = sorted(p.name for p in model_dir.iterdir())
    raise DataValidationError(
        f"no {MODEL_ARCHIVE} or {MODEL_FILE} in {model_dir} (it contains: "
        f"{', '.join(contents) or 'nothing'}); pass the training job's ModelArtifacts"
    )


def load_model(model_path: Path) -> tuple[Any, dict[str, Any]]:
    """Load the estimator and its metadata written by ``train.py``."""
    for name in (MODEL_FILE, METADATA_FILE):
        if not (model_path / name).is_file():
            raise DataValidationError(
                f"model artifact has no {name} (found: "
                f"{', '.join(sorted(p.name for p in model_path.iterdir())) or 'nothing'}); "
                "was the model trained by train.py?"
            )
    metadata = json.loads((model_path / METADATA_FILE).read_text(encoding="utf-8"))
    model = joblib.load(model_path / MODEL_FILE)
    return model, metadata


def read_test(test_dir: Path) -> pd.DataFrame:
    """Read and concatenate the test CSV files (sorted by path)."""
    if not test_dir.is_dir():
        raise DataValidationError(f"test directory {test_dir} does not exist")
    files = sorted(p for p in test_dir.rglob("*.csv") if p.is_file())
    if not files:
        raise DataValidationError(f"no *.csv files under {test_dir}: is it the test split?")
    frames = []
    for path in files:
        try:
            frames.append(pd.read_csv(path))
        except pd.errors.EmptyDataError:
            continue
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if frame.empty:
        raise DataValidationError(f"test split under {test_dir} has no rows")
    return frame


# --------------------------------------------------------------------------- metrics


def _metric(value: float) -> dict[str, Any]:
    # Model Monitor only gives a standard deviation from 200 bootstrap-able samples; we give none.
    return {"value": float(value), "standard_deviation": "NaN"}


def _downsample(*curves: np.ndarray, max_points: int = MAX_CURVE_POINTS) -> list[list[float]]:
    """Keep at most ``max_points`` evenly spaced points, always the first and the last."""
    size = len(curves[0])
    if size > max_points:
        index = np.unique(np.linspace(0, size - 1, max_points).round().astype(int))
        curves = tuple(c[index] for c in curves)
    return [[float(v) for v in c] for c in curves]


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, y_score: np.ndarray
) -> dict[str, Any]:
    """Binary classification metrics in the SageMaker model-quality layout."""
    matrix = confusion_matrix(y_true, y_pred, labels=[0, 1])
    tn, fp, fn, tp = (int(v) for v in matrix.ravel())
    positives, negatives = tp + fn, tn + fp

    def rate(num: int, den: int) -> float:
        return num / den if den else 0.0

    metrics: dict[str, Any] = {
        "confusion_matrix": {
            "0": {"0": tn, "1": fp},
            "1": {"0": fn, "1": tp},
        },
        "accuracy": _metric(accuracy_score(y_true, y_pred)),
        "precision": _metric(precision_score(y_true, y_pred, zero_division=0)),
        "recall": _metric(recall_score(y_true, y_pred, zero_division=0)),
        "f0_5": _metric(fbeta_score(y_true, y_pred, beta=0.5, zero_division=0)),
        "f1": _metric(fbeta_score(y_true, y_pred, beta=1.0, zero_division=0)),
        "f2": _metric(fbeta_score(y_true, y_pred, beta=2.0, zero_division=0)),
        "true_positive_rate": _metric(rate(tp, positives)),
        "true_negative_rate": _metric(rate(tn, negatives)),
        "false_positive_rate": _metric(rate(fp, negatives)),
        "false_negative_rate": _metric(rate(fn, positives)),
        "auc": _metric(roc_auc_score(y_true, y_score)),
    }
    fpr, tpr, _ = roc_curve(y_true, y_score)
    fpr_list, tpr_list = _downsample(fpr, tpr)
    metrics["receiver_operating_characteristic_curve"] = {
        "false_positive_rates": fpr_list,
        "true_positive_rates": tpr_list,
    }
    precisions, recalls, _ = precision_recall_curve(y_true, y_score)
    # sklearn orders the PR curve by decreasing recall; Model Monitor by increasing recall.
    precision_list, recall_list = _downsample(precisions[::-1], recalls[::-1])
    metrics["precision_recall_curve"] = {"precisions": precision_list, "recalls": recall_list}
    return metrics


def _best_constant(y_true: np.ndarray, majority_class: int) -> dict[str, Any]:
    constant = np.full_like(y_true, majority_class)
    return {
        "majority_class": majority_class,
        "accuracy": float(accuracy_score(y_true, constant)),
        "precision": float(precision_score(y_true, constant, zero_division=0)),
        "recall": float(recall_score(y_true, constant, zero_division=0)),
        "f1": float(fbeta_score(y_true, constant, beta=1.0, zero_division=0)),
        "auc": 0.5,
    }


# --------------------------------------------------------------------------- main


def evaluate(
    model: Any, metadata: dict[str, Any], test: pd.DataFrame, threshold: float | None = None
) -> dict[str, Any]:
    """Score ``test`` and build the evaluation document."""
    if threshold is None:
        threshold = float(metadata.get("decision_threshold", 0.5))
    features = list(metadata["feature_columns"])
    label_column = metadata["label_column"]
    missing = [c for c in [*features, label_column] if c not in test.columns]
    if missing:
        raise DataValidationError(
            f"test split is missing column(s) the model needs: {', '.join(missing)}; it has: "
            f"{', '.join(map(str, test.columns))}"
        )
    nulls = {c: int(n) for c, n in test[[*features, label_column]].isna().sum().items() if n}
    if nulls:
        detail = ", ".join(f"{c} ({n} rows)" for c, n in nulls.items())
        raise DataValidationError(f"test split has null values in {detail}")
    y_true = test[label_column].to_numpy()
    if not np.isin(y_true, [0, 1]).all():
        raise DataValidationError(f"test label {label_column} must be 0/1")
    y_true = y_true.astype("int64")
    counts = np.bincount(y_true, minlength=2)
    if counts.min() == 0:
        present = int(counts.argmax())
        raise DataValidationError(
            f"test split has only class {present} ({int(counts[present])} rows); AUC and recall "
            "are undefined: extract more rows (longer lookback window) or check the label"
        )
    try:
        x_test = test[features].astype("float64")
    except (TypeError, ValueError) as exc:
        raise DataValidationError(f"test split has non-numeric feature values: {exc}") from exc

    positive = list(model.classes_).index(metadata.get("positive_class", 1))
    y_score = model.predict_proba(x_test)[:, positive]
    sample = _test_sample(x_test, y_score, test.get(metadata.get("key_column", "")))
    y_pred = (y_score >= threshold).astype("int64")
    metrics = classification_metrics(y_true, y_pred, y_score)

    train_counts = metadata.get("train_class_counts") or {}
    if train_counts:
        majority = int(max(train_counts, key=lambda c: (train_counts[c], c == "0")))
        source = "train"
    else:
        majority, source = int(counts.argmax()), "test"
    baseline = _best_constant(y_true, majority)
    baseline["majority_class_from"] = source
    metrics["accuracy_best_constant_classifier"] = _metric(baseline["accuracy"])
    metrics["precision_best_constant_classifier"] = _metric(baseline["precision"])
    metrics["recall_best_constant_classifier"] = _metric(baseline["recall"])

    return {
        "binary_classification_metrics": metrics,
        "baseline": baseline,
        "test_rows": len(y_true),
        "test_positive_rate": float(y_true.mean()),
        "threshold": threshold,
        "feature_columns": features,
        "label_column": label_column,
        "model_hyperparameters": metadata.get("hyperparameters", {}),
        "test_sample": sample,
    }


def _test_sample(x_test: pd.DataFrame, y_score: np.ndarray, keys: Any) -> dict[str, Any]:
    """The first ``SAMPLE_ROWS`` test rows with the probabilities this evaluation computed:
    the endpoint DAG's smoke test sends them to a deployed endpoint and expects the same
    numbers (floats keep their full precision through JSON)."""
    rows = min(SAMPLE_ROWS, len(x_test))
    return {
        "feature_columns": list(map(str, x_test.columns)),
        "keys": [] if keys is None else [int(k) for k in keys.iloc[:rows]],
        "rows": x_test.iloc[:rows].to_numpy(dtype="float64").tolist(),
        "probabilities": [float(p) for p in y_score[:rows]],
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Load the model and the test split, write ``evaluation.json``; return its content."""
    args = parse_args(argv)
    with ExitStack() as stack:
        model_path = locate_model(Path(args.model_dir), stack)
        model, metadata = load_model(model_path)
        test = read_test(Path(args.test_dir))
        report = evaluate(model, metadata, test, args.threshold)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "evaluation.json").write_text(
        json.dumps(report, indent=2) + "\n", encoding="utf-8"
    )
    metrics = report["binary_classification_metrics"]
    print(
        f"evaluate: test_rows={report['test_rows']} auc={metrics['auc']['value']:.4f} "
        f"accuracy={metrics['accuracy']['value']:.4f} f1={metrics['f1']['value']:.4f} "
        f"baseline_accuracy={report['baseline']['accuracy']:.4f} output={output_dir}"
    )
    return report


if __name__ == "__main__":
    sys.exit(run_as_script(main, "evaluate.py", ("message", "failure")))
