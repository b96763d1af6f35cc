"""Split the extracted rows into train/validation/test and write a feature baseline.

Runs as a SageMaker Processing job in the scikit-learn container (``python preprocess.py ...``).
It has no dependency on Airflow; it needs ``step_common.py`` (failure reporting) next to it,
which holds because the job receives the whole step-code folder.

Inputs: every ``*.parquet`` and ``*.csv`` file under ``--input-dir`` (recursively), as written by
the extraction task (one row per entity, a key column, numeric feature columns, a binary label),
and every file without an extension that is Parquet (its first bytes are ``PAR1``): Presto's Hive
writer names its files ``<query id>_<uuid>`` (``extract.mode: presto_unload``). Names starting
with ``.`` or ``_`` are hidden (Hadoop's convention: staging folders, ``_SUCCESS`` markers).

Sharded (``--shard-outputs``, ``presto_unload``): SageMaker gives each of several instances its
share of the files (``ShardedByS3Key``); each instance writes its rows of every split as
``<split>/<split>-<host>.csv`` (host from ``--resource-config``, SageMaker's
``/opt/ml/config/resourceconfig.json``), so the instances' uploads to one S3 prefix never
collide, and no baseline; an instance whose share is empty writes nothing. Then one instance
runs ``--merge-dir`` over those splits: the checks that need every row (unique keys, both label
classes, no empty split) and ``baseline/baseline.json`` exactly as an unsharded run writes it.

Outputs under ``--output-dir``:

* ``train/train.csv``, ``validation/validation.csv``, ``test/test.csv``: CSV with a header row,
  columns ``key, features..., label``, rows sorted by key;
* ``baseline/baseline.json``: per-feature statistics of the train split (for drift checks),
  label balance and row counts per split (format below).

Baseline format (``"version": 2``). The shape follows SageMaker Model Monitor's
``statistics.json`` (per-feature completeness, mean/std/min/max and a KLL-sketch distribution
in buckets); Model Monitor is closed to new customers, so the batch-inference DAG computes drift
itself (``plugins/mlops_sagemaker/drift.py``) from this file::

    {"version": 2, "key_column": ..., "label_column": ..., "feature_columns": [...],
     "statistics_computed_on": "train",
     "features": {"<feature>": {
         "count": <non-null train rows>, "null_count": <null train rows>,
         "mean": ..., "std": ..., "min": ..., "max": ...,
         "quantiles": {"p01": ..., "p05": ..., ..., "p99": ...},
         "bins": {"closed": "right", "edges": [e1, ..., ek], "counts": [c0, ..., ck]}}},
     "label": {...}, "rows": {...}, "split": {...}}

``bins`` is a histogram of the non-null train values (nulls are in ``null_count`` only). Its
edges are the distinct deciles (quantiles 0.1 … 0.9) of the train values, taken as observed
values (numpy's ``method="lower"``, no interpolation, so no bin between two adjacent integers
of a count feature stays empty): at most 10 bins, fewer for a constant or low-cardinality
feature (one edge and two bins for a constant). The bins are closed on the right:
``(-inf, e1], (e1, e2], ..., (ek, +inf)``, i.e. value ``v`` is in bin
``numpy.searchsorted(edges, v, side="left")``; the outer bins are open, so any batch value
falls in a bin, and ``counts`` (``k + 1`` of them) add up to ``count``.
Unlike Model Monitor's buckets no sketch is kept: the bins are all a drift check needs.
Version 1 baselines (models trained before bins existed) lack ``bins``.

The split is deterministic: a row goes to a split according to a stable hash of
``<salt>:<key>`` (BLAKE2b, 64 bits, mapped to [0, 1)), so the same input always gives
byte-identical outputs, a row keeps its split when other rows are added, and changing
``--split-salt`` draws a new, independent split.

Validation problems raise :class:`DataValidationError`; when run as a script the message is
written to the SageMaker failure/exit-message file, printed to stderr, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from step_common import DataValidationError, StepArgumentParser, run_as_script

DEFAULT_INPUT_DIR = "/opt/ml/processing/input/data"
DEFAULT_OUTPUT_DIR = "/opt/ml/processing/output"
SPLITS = ("train", "validation", "test")
QUANTILES = {
    "p01": 0.01,
    "p05": 0.05,
    "p25": 0.25,
    "p50": 0.5,
    "p75": 0.75,
    "p95": 0.95,
    "p99": 0.99,
}
# Inner decile edges of the drift-check histogram (see "Baseline format" above).
BIN_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
BASELINE_VERSION = 2
MAX_EXAMPLES = 5


# --------------------------------------------------------------------------- arguments


def _comma_list(value: str) -> list[str]:
    items = [item.strip() for item in value.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list of column names")
    return items


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line (SageMaker passes ``ContainerArguments`` here)."""
    parser = StepArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-dir", default=DEFAULT_INPUT_DIR)
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR)
    parser.add_argument("--key-column", required=True)
    parser.add_argument("--label-column", required=True)
    parser.add_argument("--feature-columns", required=True, type=_comma_list)
    parser.add_argument("--train-fraction", type=float, default=0.7)
    parser.add_argument("--validation-fraction", type=float, default=0.15)
    parser.add_argument("--split-salt", default="")
    parser.add_argument("--shard-outputs", action="store_true", help="one shard of the input")
    parser.add_argument("--resource-config", default="/opt/ml/config/resourceconfig.json")
    parser.add_argument("--merge-dir", help="the splits of a sharded run: write the baseline")
    args = parser.parse_args(argv)
    _check_fractions(args.train_fraction, args.validation_fraction)
    columns = [args.key_column, args.label_column, *args.feature_columns]
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise DataValidationError(
            "key, label and feature columns must be distinct; used more than once: "
            + ", ".join(duplicated)
        )
    return args


def _check_fractions(train_fraction: float, validation_fraction: float) -> None:
    test_fraction = 1.0 - train_fraction - validation_fraction
    if not (0 < train_fraction < 1 and 0 < validation_fraction < 1 and test_fraction > 1e-9):
        raise DataValidationError(
            f"split fractions must be > 0 and leave room for the test split: got "
            f"train_fraction={train_fraction}, validation_fraction={validation_fraction} "
            f"(test would get {test_fraction:.4g})"
        )


# --------------------------------------------------------------------------- reading


PARQUET_MAGIC = b"PAR1"


def _input_format(path: Path) -> str | None:
    """``parquet``, ``csv`` or None (not an input file) for one file under the input dir."""
    if path.name.startswith((".", "_")):
        return None
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".csv"):
        return suffix[1:]
    if not suffix:
        with path.open("rb") as handle:
            return "parquet" if handle.read(4) == PARQUET_MAGIC else None
    return None


def input_files(input_dir: Path) -> list[tuple[Path, str]]:
    """Every input file under ``input_dir`` (sorted by path) with its format."""
    if not input_dir.is_dir():
        raise DataValidationError(f"input directory {input_dir} does not exist")
    found = ((p, _input_format(p)) for p in sorted(input_dir.rglob("*")) if p.is_file())
    return [(path, kind) for path, kind in found if kind is not None]


def _read_csv(path: Path) -> pd.DataFrame:
    # pandas' default float parser can be off in the last bit; the splits are written with
    # every digit, and a merged baseline must equal the unsharded one exactly.
    return pd.read_csv(path, float_precision="round_trip")


def read_input(input_dir: Path, files: Sequence[tuple[Path, str]] | None = None) -> pd.DataFrame:
    """Read and concatenate every Parquet/CSV file under ``input_dir`` (sorted by path)."""
    files = input_files(input_dir) if files is None else files
    if not files:
        raise DataValidationError(
            f"no *.parquet or *.csv files under {input_dir}: did the extraction write any rows "
            "for this run date?"
        )
    frames = []
    for path, kind in files:
        try:
            frames.append(pq.read_table(path).to_pandas() if kind == "parquet" else _read_csv(path))
        except Exception as exc:
            raise DataValidationError(f"cannot read {path}: {exc}") from exc
    frames = [f for f in frames if len(f.columns)]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if frame.empty:
        raise DataValidationError(
            f"input is empty: {len(files)} file(s) under {input_dir} hold no rows; check the "
            "extraction query and the run date"
        )
    return frame


# --------------------------------------------------------------------------- validation


def _examples(values: Sequence[Any]) -> str:
    shown = ", ".join(repr(v) if isinstance(v, str) else str(v) for v in values[:MAX_EXAMPLES])
    return shown + (", ..." if len(values) > MAX_EXAMPLES else "")


def validate(
    frame: pd.DataFrame,
    key_column: str,
    label_column: str,
    feature_columns: Sequence[str],
    *,
    whole: bool = True,
) -> pd.DataFrame:
    """Check the frame and return ``key, features..., label`` with a 0/1 integer label.

    ``whole=False`` (one shard of a sharded run): a shard may lack a label class; the merge
    checks that on every row."""
    required = [key_column, *feature_columns, label_column]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataValidationError(
            f"missing required column(s): {', '.join(missing)}; the input has columns: "
            f"{', '.join(map(str, frame.columns))}"
        )
    data = frame[required]

    nulls = {c: int(n) for c, n in data.isna().sum().items() if n}
    if nulls:
        detail = ", ".join(f"{c} ({n} row{'s' if n != 1 else ''})" for c, n in nulls.items())
        raise DataValidationError(
            f"null values in {detail} of {len(data)} rows; fix the extraction query "
            "(COALESCE or filter) so key, features and label are always set"
        )

    problems = []
    for column in feature_columns:
        series = data[column]
        if pd.api.types.is_numeric_dtype(series):
            continue
        converted = pd.to_numeric(series, errors="coerce")
        bad = series[converted.isna()].astype(str).unique().tolist()
        problems.append(f"{column} (dtype {series.dtype}, e.g. {_examples(bad)})")
    if problems:
        raise DataValidationError(
            "feature column(s) must be numeric: " + "; ".join(problems) + ". Cast them in the "
            "extraction query or remove them from feature_columns"
        )
    numeric = data[list(feature_columns)].astype("float64")
    infinite = [c for c in feature_columns if not np.isfinite(numeric[c].to_numpy()).all()]
    if infinite:
        raise DataValidationError(f"infinite values in feature column(s): {', '.join(infinite)}")

    label = data[label_column]
    label_values = pd.to_numeric(label, errors="coerce")
    invalid = label[~label_values.isin([0, 1])].unique().tolist()
    if invalid:
        raise DataValidationError(
            f"label column {label_column} must be binary (0/1); found other values: "
            f"{_examples(sorted(invalid, key=str))}"
        )
    label_int = label_values.astype("int64")
    counts = {cls: int((label_int == cls).sum()) for cls in (0, 1)}
    for cls in (0, 1):
        if counts[cls] == 0 and whole:
            raise DataValidationError(
                f"label column {label_column} has only one class: class {1 - cls} has "
                f"{counts[1 - cls]} rows, class {cls} is missing (0 rows); a classifier needs "
                "both classes: widen the lookback window or check the label definition"
            )

    duplicated = data[key_column][data[key_column].duplicated(keep=False)]
    if len(duplicated):
        unique_dups = sorted(duplicated.unique().tolist(), key=str)
        raise DataValidationError(
            f"key column {key_column} must be unique: {len(unique_dups)} key value(s) occur more "
            f"than once ({len(duplicated)} rows), e.g. {_examples(unique_dups)}; check the "
            "GROUP BY of the extraction query or duplicated input files"
        )

    out = pd.DataFrame({key_column: data[key_column]})
    for column in feature_columns:  # integer features stay integers in the CSV
        series = data[column]
        out[column] = series.astype("int64") if pd.api.types.is_bool_dtype(series) else series
    out[label_column] = label_int
    return out


# --------------------------------------------------------------------------- splitting


def split_unit(key: Any, salt: str = "") -> float:
    """Map a row key to a uniform number in [0, 1) with a stable hash of ``<salt>:<key>``."""
    digest = hashlib.blake2b(f"{salt}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def assign_splits(
    keys: pd.Series, train_fraction: float, validation_fraction: float, salt: str = ""
) -> pd.Series:
    """Return the split name (``train``/``validation``/``test``) of every key."""
    units = np.fromiter((split_unit(k, salt) for k in keys), dtype="float64", count=len(keys))
    names = np.where(
        units < train_fraction,
        "train",
        np.where(units < train_fraction + validation_fraction, "validation", "test"),
    )
    return pd.Series(names, index=keys.index, name="split")


# --------------------------------------------------------------------------- baseline


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def histogram_bins(values: np.ndarray) -> dict[str, Any]:
    """Decile histogram of non-null values: ``{"closed": "right", "edges", "counts"}``.

    ``edges`` are the distinct inner deciles, observed values (duplicates removed, so a constant
    feature gets one edge); value ``v`` falls in bin ``searchsorted(edges, v, side="left")``,
    i.e. the bins are ``(-inf, e1], (e1, e2], ..., (ek, +inf)``. The drift check
    (``plugins/mlops_sagemaker/drift.py``) bins batch values the same way.
    """
    if values.size == 0:
        return {"closed": "right", "edges": [], "counts": [0]}
    edges = np.unique(np.quantile(values, BIN_QUANTILES, method="lower"))
    # side="left" counts the edges strictly below v: an edge value belongs to the bin it closes.
    index = np.searchsorted(edges, values, side="left")
    counts = np.bincount(index, minlength=edges.size + 1)
    return {
        "closed": "right",
        "edges": [float(edge) for edge in edges],
        "counts": [int(count) for count in counts],
    }


def feature_statistics(series: pd.Series) -> dict[str, Any]:
    """Summary statistics of one numeric feature (null count and bins for drift checks)."""
    values = series.dropna().to_numpy(dtype="float64")
    stats: dict[str, Any] = {"count": int(values.size), "null_count": int(series.isna().sum())}
    if values.size:
        stats.update(
            mean=_finite_or_none(values.mean()),
            std=_finite_or_none(values.std(ddof=1)) if values.size > 1 else None,
            min=float(values.min()),
            max=float(values.max()),
            quantiles={
                name: float(np.quantile(values, q, method="linear"))
                for name, q in QUANTILES.items()
            },
        )
    stats["bins"] = histogram_bins(values)
    return stats


def _class_balance(label: pd.Series) -> dict[str, Any]:
    counts = {str(cls): int((label == cls).sum()) for cls in (0, 1)}
    total = sum(counts.values())
    return {
        "counts": counts,
        "positive_rate": counts["1"] / total if total else None,
    }


def build_baseline(
    data: pd.DataFrame,
    splits: pd.Series,
    key_column: str,
    label_column: str,
    feature_columns: Sequence[str],
    train_fraction: float,
    validation_fraction: float,
    salt: str,
) -> dict[str, Any]:
    """Baseline document (format in the module docstring): train-split feature statistics
    with drift-check bins, label balance, rows per split."""
    train = data[splits == "train"]
    return {
        "version": BASELINE_VERSION,
        "key_column": key_column,
        "label_column": label_column,
        "feature_columns": list(feature_columns),
        "statistics_computed_on": "train",
        "features": {c: feature_statistics(train[c]) for c in feature_columns},
        "label": {
            "all": _class_balance(data[label_column]),
            **{s: _class_balance(data.loc[splits == s, label_column]) for s in SPLITS},
        },
        "rows": {"total": len(data), **{s: int((splits == s).sum()) for s in SPLITS}},
        "split": {
            "method": "blake2b-64 of '<salt>:<key>' mapped to [0, 1)",
            "train_fraction": train_fraction,
            "validation_fraction": validation_fraction,
            "test_fraction": 1.0 - train_fraction - validation_fraction,
            "salt": salt,
        },
    }


# --------------------------------------------------------------------------- main


# pandas renamed ``line_terminator`` to ``lineterminator`` in 1.5 and removed the old name in
# 2.0; the images ship pandas 1.1.3 (1.2-1) and 2.3.2 (1.4-2), see sklearn_images.toml.
_LINE_TERMINATOR_ARG = (
    "lineterminator"
    if "lineterminator" in inspect.signature(pd.DataFrame.to_csv).parameters
    else "line_terminator"
)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, **{_LINE_TERMINATOR_ARG: "\n"})


def _check_no_empty_split(splits: pd.Series, rows: int, args: argparse.Namespace) -> None:
    empty = [s for s in SPLITS if not (splits == s).any()]
    if empty:
        raise DataValidationError(
            f"split(s) {', '.join(empty)} would be empty with {rows} input rows, "
            f"train_fraction={args.train_fraction} and "
            f"validation_fraction={args.validation_fraction}: extract more rows (longer "
            "lookback window) or change the fractions"
        )


def _write_baseline(data: pd.DataFrame, splits: pd.Series, args: argparse.Namespace) -> dict:
    baseline = build_baseline(
        data,
        splits,
        args.key_column,
        args.label_column,
        args.feature_columns,
        args.train_fraction,
        args.validation_fraction,
        args.split_salt,
    )
    baseline_path = Path(args.output_dir) / "baseline" / "baseline.json"
    baseline_path.parent.mkdir(parents=True, exist_ok=True)
    baseline_path.write_text(
        json.dumps(baseline, indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )
    rows = baseline["rows"]
    print(
        f"preprocess: rows={rows['total']} train={rows['train']} "
        f"validation={rows['validation']} test={rows['test']} "
        f"positive_rate={baseline['label']['all']['positive_rate']:.4f} "
        f"features={len(args.feature_columns)} output={args.output_dir}"
    )
    return baseline


def current_host(resource_config: Path) -> str:
    """This instance's host name (``algo-1`` ...) from SageMaker's resource config."""
    try:
        return str(json.loads(resource_config.read_text(encoding="utf-8"))["current_host"])
    except (OSError, ValueError, KeyError) as exc:
        raise DataValidationError(
            f"--shard-outputs needs the instance's host name from {resource_config}: {exc}"
        ) from exc


def _split(args: argparse.Namespace) -> dict[str, Any]:
    """Validate and split the input (all of it, or this instance's shard)."""
    input_dir, output_dir = Path(args.input_dir), Path(args.output_dir)
    files = input_files(input_dir)
    suffix = f"-{current_host(Path(args.resource_config))}" if args.shard_outputs else ""
    if args.shard_outputs and not files:
        # More instances than files: this one got no share; the others have every row.
        print(f"preprocess: no input files for this instance under {input_dir}: nothing to do")
        return {}
    frame = read_input(input_dir, files)
    data = validate(
        frame, args.key_column, args.label_column, args.feature_columns,
        whole=not args.shard_outputs,
    )  # fmt: skip
    data = data.sort_values(args.key_column, kind="mergesort").reset_index(drop=True)
    splits = assign_splits(
        data[args.key_column], args.train_fraction, args.validation_fraction, args.split_salt
    )
    if not args.shard_outputs:
        _check_no_empty_split(splits, len(data), args)
    for name in SPLITS:
        _write_csv(data[splits == name], output_dir / name / f"{name}{suffix}.csv")
    if args.shard_outputs:
        counts = {name: int((splits == name).sum()) for name in SPLITS}
        print(f"preprocess: shard{suffix} rows={len(data)} {counts} output={output_dir}")
        return {"rows": {"total": len(data), **counts}}
    return _write_baseline(data, splits, args)


def _merge(args: argparse.Namespace) -> dict[str, Any]:
    """The splits of a sharded run: all-row checks and the one baseline."""
    merge_dir = Path(args.merge_dir)
    frames, names = [], []
    for name in SPLITS:
        part = read_input(merge_dir / name)
        frames.append(part)
        names.append(pd.Series(name, index=range(len(part))))
    frame = pd.concat(frames, ignore_index=True)
    written = pd.concat(names, ignore_index=True)
    data = validate(frame, args.key_column, args.label_column, args.feature_columns)
    order = data[args.key_column].sort_values(kind="mergesort").index
    data, written = (
        data.loc[order].reset_index(drop=True),
        written.loc[order].reset_index(drop=True),
    )
    splits = assign_splits(
        data[args.key_column], args.train_fraction, args.validation_fraction, args.split_salt
    )
    if not (splits == written).all():
        raise DataValidationError(
            f"{int((splits != written).sum())} row(s) under {merge_dir} are not in the split "
            "their key hashes to: the shards were split with other fractions or salt"
        )
    _check_no_empty_split(splits, len(data), args)
    return _write_baseline(data, splits, args)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Validate, split and write the outputs (or merge a sharded run's); return the baseline
    document (a shard's row counts for one shard of a sharded run)."""
    args = parse_args(argv)
    return _merge(args) if args.merge_dir else _split(args)


if __name__ == "__main__":
    sys.exit(run_as_script(main, "preprocess.py", ("message", "failure")))
