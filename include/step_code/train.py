"""Train a scikit-learn RandomForest classifier on the train channel; score it on validation.

Started by the SageMaker scikit-learn container (the ``sagemaker-training`` toolkit) as
``python train.py --n_estimators 100 --max_depth 8 ...``: hyperparameters arrive as
``--name value`` arguments, data channels as directories named by ``SM_CHANNEL_<NAME>``.
It has no dependency on Airflow; it imports ``step_common.py`` (failure reporting) from the
same source dir.

Channels ``train`` and ``validation`` hold the CSV files written by ``preprocess.py`` (header
row, columns ``key, features..., label``). The script prints ``validation:auc=<value>;`` (the
metric a hyperparameter tuning job reads with the regex ``validation:auc=([0-9\\.]+)``) and
writes to ``SM_MODEL_DIR``:

* ``model.joblib``: the fitted ``RandomForestClassifier``;
* ``model_metadata.json``: feature columns in training order, key/label columns, classes,
  hyperparameters, library versions, row counts, validation AUC.

It also writes ``metrics.json`` to ``SM_OUTPUT_DATA_DIR`` (packed into ``output.tar.gz``).

Validation problems raise :class:`DataValidationError`; when run as a script the message is
written to ``/opt/ml/output/failure`` (the training job's FailureReason), printed to stderr,
and the exit code is 1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import sklearn
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, roc_auc_score
from step_common import DataValidationError, StepArgumentParser, run_as_script

MODEL_FILE = "model.joblib"
METADATA_FILE = "model_metadata.json"
METRICS_FILE = "metrics.json"
POSITIVE_CLASS = 1
# Predicted positive when P(positive) >= this; evaluate.py and inference.py read it from metadata.
DECISION_THRESHOLD = 0.5


# --------------------------------------------------------------------------- arguments


def _int_value(value: str) -> int:
    """Integers as SageMaker sends them: ``"8"``, and also ``"8.0"`` from a tuning range."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
    if not number.is_integer():
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}")
    return int(number)


def _max_depth(value: str) -> int | None:
    """``max_depth``: a positive integer, or ``0``/``none`` for unlimited depth."""
    if value.strip().lower() in ("", "none", "null"):
        return None
    depth = _int_value(value)
    return depth if depth > 0 else None


def _comma_list(value: str) -> list[str]:
    items = [item.strip() for item in value.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list of column names")
    return items


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse hyperparameters (``--name value``) and paths (defaults from ``SM_*`` variables)."""
    env = os.environ
    parser = StepArgumentParser(
        description=__doc__.splitlines()[0], error_prefix="invalid hyperparameters/arguments"
    )
    # Tuned hyperparameters.
    parser.add_argument("--n_estimators", type=_int_value, default=100)
    parser.add_argument("--max_depth", type=_max_depth, default=None)
    parser.add_argument("--min_samples_split", type=_int_value, default=2)
    parser.add_argument("--max_features", choices=("sqrt", "log2"), default="sqrt")
    # Static hyperparameters.
    parser.add_argument("--feature_columns", type=_comma_list, required=True)
    parser.add_argument("--label_column", required=True)
    parser.add_argument("--key_column", default=None)
    parser.add_argument("--random_state", type=_int_value, default=0)
    parser.add_argument("--n_jobs", type=_int_value, default=-1)
    # Locations (the container sets these variables).
    parser.add_argument("--train", default=env.get("SM_CHANNEL_TRAIN"))
    parser.add_argument("--validation", default=env.get("SM_CHANNEL_VALIDATION"))
    parser.add_argument("--model_dir", default=env.get("SM_MODEL_DIR", "/opt/ml/model"))
    parser.add_argument(
        "--output_data_dir", default=env.get("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data")
    )
    args = parser.parse_args(argv)
    if args.n_estimators < 1:
        raise DataValidationError(f"n_estimators must be >= 1, got {args.n_estimators}")
    if args.min_samples_split < 2:
        raise DataValidationError(f"min_samples_split must be >= 2, got {args.min_samples_split}")
    for channel in ("train", "validation"):
        if not getattr(args, channel):
            raise DataValidationError(
                f"no {channel} channel: the training job needs an input channel named "
                f"'{channel}' (SM_CHANNEL_{channel.upper()} is not set)"
            )
    if args.label_column in args.feature_columns or (
        args.key_column and args.key_column in args.feature_columns
    ):
        raise DataValidationError("key/label column must not be listed in feature_columns")
    return args


# --------------------------------------------------------------------------- data


def read_channel(name: str, directory: Path) -> pd.DataFrame:
    """Read and concatenate the CSV files of a channel (sorted by path)."""
    if not directory.is_dir():
        raise DataValidationError(f"{name} channel directory {directory} does not exist")
    files = sorted(p for p in directory.rglob("*.csv") if p.is_file())
    if not files:
        raise DataValidationError(
            f"{name} channel is empty: no *.csv files under {directory}; check the S3 prefix "
            "given to the training job (it should be the preprocess step's output)"
        )
    frames = []
    for path in files:
        try:
            frames.append(pd.read_csv(path))
        except pd.errors.EmptyDataError:
            continue
        except Exception as exc:
            raise DataValidationError(f"cannot read {name} file {path}: {exc}") from exc
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if frame.empty:
        raise DataValidationError(
            f"{name} channel has no rows: {len(files)} CSV file(s) under {directory} are empty"
        )
    return frame


def features_and_label(
    name: str, frame: pd.DataFrame, feature_columns: Sequence[str], label_column: str
) -> tuple[pd.DataFrame, np.ndarray]:
    """Select the features (float) and the 0/1 label; errors name the missing columns."""
    missing = [c for c in [*feature_columns, label_column] if c not in frame.columns]
    if missing:
        raise DataValidationError(
            f"{name} channel is missing column(s): {', '.join(missing)}; it has: "
            f"{', '.join(map(str, frame.columns))}"
        )
    features = frame[list(feature_columns)]
    non_numeric = [c for c in feature_columns if not pd.api.types.is_numeric_dtype(features[c])]
    if non_numeric:
        raise DataValidationError(
            f"{name} channel has non-numeric feature column(s): {', '.join(non_numeric)}"
        )
    nulls = {
        c: int(n) for c, n in frame[[*feature_columns, label_column]].isna().sum().items() if n
    }
    if nulls:
        detail = ", ".join(f"{c} ({n} rows)" for c, n in nulls.items())
        raise DataValidationError(f"{name} channel has null values in {detail}")
    label = frame[label_column]
    if not label.isin([0, 1]).all():
        others = sorted(label[~label.isin([0, 1])].astype(str).unique().tolist())[:5]
        raise DataValidationError(
            f"{name} channel label {label_column} must be 0/1; found {', '.join(others)}"
        )
    return features.astype("float64"), label.to_numpy(dtype="int64")


def _require_both_classes(name: str, label: np.ndarray) -> None:
    counts = {cls: int((label == cls).sum()) for cls in (0, 1)}
    for cls in (0, 1):
        if counts[cls] == 0:
            raise DataValidationError(
                f"{name} channel has only class {1 - cls} ({counts[1 - cls]} rows) and no row "
                f"of class {cls}; both classes are needed to train and to compute AUC"
            )


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Fit, score, save; return the metadata document written next to the model."""
    args = parse_args(argv)
    train_frame = read_channel("train", Path(args.train))
    validation_frame = read_channel("validation", Path(args.validation))
    x_train, y_train = features_and_label(
        "train", train_frame, args.feature_columns, args.label_column
    )
    x_val, y_val = features_and_label(
        "validation", validation_frame, args.feature_columns, args.label_column
    )
    _require_both_classes("train", y_train)
    _require_both_classes("validation", y_val)

    hyperparameters = {
        "n_estimators": args.n_estimators,
        "max_depth": args.max_depth,
        "min_samples_split": args.min_samples_split,
        "max_features": args.max_features,
        "random_state": args.random_state,
    }
    model = RandomForestClassifier(**hyperparameters, n_jobs=args.n_jobs)
    model.fit(x_train, y_train)

    positive = list(model.classes_).index(POSITIVE_CLASS)
    val_proba = model.predict_proba(x_val)[:, positive]
    train_proba = model.predict_proba(x_train)[:, positive]
    metrics = {
        "validation": {
            "auc": float(roc_auc_score(y_val, val_proba)),
            "accuracy": float(
                accuracy_score(y_val, (val_proba >= DECISION_THRESHOLD).astype("int64"))
            ),
            "rows": len(y_val),
            "positive_rate": float(y_val.mean()),
        },
        "train": {
            "auc": float(roc_auc_score(y_train, train_proba)),
            "rows": len(y_train),
            "positive_rate": float(y_train.mean()),
        },
    }
    # The tuning job's metric definition reads this exact line format.
    print(f"train:auc={metrics['train']['auc']:.6f};")
    print(f"validation:auc={metrics['validation']['auc']:.6f};")

    metadata = {
        "model_file": MODEL_FILE,
        "estimator": "sklearn.ensemble.RandomForestClassifier",
        "feature_columns": list(args.feature_columns),
        "label_column": args.label_column,
        "key_column": args.key_column,
        "classes": [int(c) for c in model.classes_],
        "positive_class": POSITIVE_CLASS,
        "decision_threshold": DECISION_THRESHOLD,
        "hyperparameters": hyperparameters,
        "versions": {
            "sklearn": sklearn.__version__,
            "pandas": pd.__version__,
            "numpy": np.__version__,
            "joblib": joblib.__version__,
            "python": platform.python_version(),
        },
        "train_rows": len(y_train),
        "validation_rows": len(y_val),
        "train_class_counts": {str(c): int((y_train == c).sum()) for c in (0, 1)},
        "validation_auc": metrics["validation"]["auc"],
    }
    model_dir = Path(args.model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, model_dir / MODEL_FILE)
    (model_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    output_data_dir = Path(args.output_data_dir)
    output_data_dir.mkdir(parents=True, exist_ok=True)
    (output_data_dir / METRICS_FILE).write_text(
        json.dumps(metrics, indent=2) + "\n", encoding="utf-8"
    )
    print(
        f"train: rows={len(y_train)} validation_rows={len(y_val)} "
        f"hyperparameters={json.dumps(hyperparameters, sort_keys=True)} model={model_dir}"
    )
    return metadata


if __name__ == "__main__":
    sys.exit(run_as_script(main, "train.py", ("failure",)))
