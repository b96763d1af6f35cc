"""Bad inputs give errors a data engineer can act on, in-process and through the failure file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tpch_features import FEATURES, LABEL

from local_stack.toolkits import run_training_job

# ----------------------------------------------------------------------------- preprocess


@pytest.fixture(scope="module")
def preprocess(step_module: Callable[[str], ModuleType]) -> ModuleType:
    return step_module("preprocess")


@pytest.fixture
def run_preprocess(
    preprocess: ModuleType, preprocess_argv: Callable[..., list[str]], tmp_path: Path
) -> Callable[..., Any]:
    """Write ``frame`` (Parquet, or CSV with ``csv=True``) and run preprocess on it."""

    def run(frame: pd.DataFrame | None, *extra: str, csv: bool = False) -> Any:
        input_dir = tmp_path / "input"
        input_dir.mkdir(exist_ok=True)
        if frame is not None:
            if csv:
                frame.to_csv(input_dir / "part-00000.csv", index=False)
            else:
                pq.write_table(pa.Table.from_pandas(frame), input_dir / "part-00000.parquet")
        return preprocess.main(preprocess_argv(input_dir, tmp_path / "output", *extra))

    return run


def _error(preprocess: ModuleType, run: Callable[[], Any]) -> str:
    with pytest.raises(preprocess.DataValidationError) as info:
        run()
    return str(info.value)


def test_no_input_files(preprocess: ModuleType, run_preprocess: Callable[..., Any]) -> None:
    message = _error(preprocess, lambda: run_preprocess(None))
    assert "no *.parquet or *.csv files under" in message


def test_input_without_rows(
    preprocess: ModuleType, run_preprocess: Callable[..., Any], tpch_frame: pd.DataFrame
) -> None:
    message = _error(preprocess, lambda: run_preprocess(tpch_frame.head(0)))
    assert message.startswith("input is empty: 1 file(s)")


def test_missing_columns_are_named(
    preprocess: ModuleType, run_preprocess: Callable[..., Any], tpch_frame: pd.DataFrame
) -> None:
    frame = tpch_frame.drop(columns=["avg_discount", "label"])
    message = _error(preprocess, lambda: run_preprocess(frame))
    assert message.startswith("missing required column(s): avg_discount, label;")
    assert "the input has columns: orderkey, orderdate, total_extended_price" in message


def test_nulls_are_counted_per_column(
    preprocess: ModuleType, run_preprocess: Callable[..., Any], tpch_frame: pd.DataFrame
) -> None:
    frame = tpch_frame.copy()
    frame.loc[[3, 7, 9], "total_quantity"] = np.nan
    frame["label"] = frame["label"].astype("float64")
    frame.loc[[5], "label"] = np.nan
    message = _error(preprocess, lambda: run_preprocess(frame))
    assert "null values in total_quantity (3 rows), label (1 row) of 15000 rows" in message


def test_single_class_label(
    preprocess: ModuleType, run_preprocess: Callable[..., Any], tpch_frame: pd.DataFrame
) -> None:
    frame = tpch_frame.assign(label=0)
    message = _error(preprocess, lambda: run_preprocess(frame))
    assert "label column label has only one class: class 0 has 15000 rows" in message
    assert "class 1 is missing (0 rows)" in message


def test_non_binary_label(
    preprocess: ModuleType, run_preprocess: Callable[..., Any], tpch_frame: pd.DataFrame
) -> None:
    frame = tpch_frame.copy()
    frame.loc[0, "label"] = 2
    message = _error(preprocess, lambda: run_preprocess(frame))
    assert "label column label must be binary (0/1); found other values: 2" in message


def test_non_numeric_feature(
    preprocess: ModuleType, run_preprocess: Callable[..., Any], tpch_frame: pd.DataFrame
) -> None:
    frame = tpch_frame.copy()
    frame["total_quantity"] = frame["total_quantity"].astype(str)
    frame.loc[4, "total_quantity"] = "abc"
    message = _error(preprocess, lambda: run_preprocess(frame, csv=True))
    assert message.startswith("feature column(s) must be numeric: total_quantity (dtype")
    assert "e.g. 'abc'" in message


def test_duplicate_keys(
    preprocess: ModuleType, run_preprocess: Callable[..., Any], tpch_frame: pd.DataFrame
) -> None:
    frame = pd.concat([tpch_frame, tpch_frame.head(2)], ignore_index=True)
    message = _error(preprocess, lambda: run_preprocess(frame))
    assert "key column orderkey must be unique: 2 key value(s) occur more than once" in message
    assert "e.g. 1, 2" in message


def test_bad_fractions(
    preprocess: ModuleType, run_preprocess: Callable[..., Any], tpch_frame: pd.DataFrame
) -> None:
    message = _error(
        preprocess,
        lambda: run_preprocess(
            tpch_frame, "--train-fraction", "0.9", "--validation-fraction", "0.1"
        ),
    )
    assert message.startswith("split fractions must be > 0 and leave room for the test split")


def test_empty_split(
    preprocess: ModuleType, run_preprocess: Callable[..., Any], tpch_frame: pd.DataFrame
) -> None:
    # Two rows of different classes cannot fill three splits.
    frame = pd.concat(
        [tpch_frame[tpch_frame.label == 0].head(1), tpch_frame[tpch_frame.label == 1].head(1)]
    )
    message = _error(preprocess, lambda: run_preprocess(frame))
    assert "would be empty with 2 input rows" in message


def _bad_input_dir(tmp_path: Path, tpch_frame: pd.DataFrame) -> Path:
    input_dir = tmp_path / "input"
    input_dir.mkdir()
    frame = tpch_frame.drop(columns=["avg_discount"])
    pq.write_table(pa.Table.from_pandas(frame), input_dir / "part-00000.parquet")
    return input_dir


def _run_script(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``python <args>`` in ``cwd``, with ``env`` replacing any inherited failure-file settings."""
    inherited = {
        k: v for k, v in os.environ.items() if k not in ("SM_FAILURE_FILE", "SAGEMAKER_BASE_DIR")
    }
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env={**inherited, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_script_writes_the_failure_file_and_exits_1(
    tmp_path: Path,
    tpch_frame: pd.DataFrame,
    step_code_dir: Path,
    preprocess_argv: Callable[..., list[str]],
) -> None:
    input_dir = _bad_input_dir(tmp_path, tpch_frame)
    failure = tmp_path / "failure-file"
    done = _run_script(
        ["preprocess.py", *preprocess_argv(input_dir, tmp_path / "out")],
        cwd=step_code_dir,
        SM_FAILURE_FILE=str(failure),
    )
    assert done.returncode == 1
    expected = "preprocess.py: missing required column(s): avg_discount;"
    assert failure.read_text().startswith(expected)
    assert expected in done.stderr
    assert "Traceback" not in done.stderr  # a validation error is not a crash


def _processing_code_dir(tmp_path: Path, step_code_dir: Path) -> Path:
    """What a processing job receives: every ``*.py`` of the step-code folder, nothing else."""
    code = tmp_path / "opt" / "ml" / "processing" / "input" / "code"
    code.mkdir(parents=True)
    for script in step_code_dir.glob("*.py"):
        shutil.copy2(script, code / script.name)
    return code


def test_script_failure_file_follows_sagemaker_base_dir(
    tmp_path: Path, step_code_dir: Path
) -> None:
    base = tmp_path / "opt-ml"
    code = _processing_code_dir(tmp_path, step_code_dir)
    work = tmp_path / "elsewhere"  # the container's working directory is not the code folder
    work.mkdir()
    done = _run_script(
        [str(code / "preprocess.py"), "--key-column", "orderkey"],
        cwd=work,
        SAGEMAKER_BASE_DIR=str(base),
    )
    assert done.returncode == 1
    # Processing jobs show output/message as ExitMessage; failure is kept for training parity.
    for name in ("message", "failure"):
        text = (base / "output" / name).read_text()
        assert text.startswith("preprocess.py: invalid arguments: the following arguments are")
        assert "--label-column" in text and "--feature-columns" in text


def test_evaluate_script_reports_through_the_failure_file(
    tmp_path: Path, step_code_dir: Path
) -> None:
    base = tmp_path / "opt-ml"
    code = _processing_code_dir(tmp_path, step_code_dir)
    missing = tmp_path / "no-model"
    done = _run_script(
        [str(code / "evaluate.py"), "--model-dir", str(missing)],
        cwd=tmp_path,
        SAGEMAKER_BASE_DIR=str(base),
    )
    assert done.returncode == 1
    expected = f"evaluate.py: model directory {missing} does not exist"
    for name in ("message", "failure"):
        assert (base / "output" / name).read_text() == expected
    assert expected in done.stderr
    assert "Traceback" not in done.stderr


# ----------------------------------------------------------------------------- train


@pytest.fixture(scope="module")
def splits(
    tmp_path_factory: pytest.TempPathFactory,
    tpch_input_dir: Path,
    preprocess: ModuleType,
    preprocess_argv: Callable[..., list[str]],
) -> Path:
    output = tmp_path_factory.mktemp("splits")
    preprocess.main(preprocess_argv(tpch_input_dir, output))
    return output


def test_training_with_an_empty_channel_reports_through_the_toolkit(
    tmp_path: Path,
    splits: Path,
    step_code_dir: Path,
    hyperparameters: Callable[..., dict[str, str]],
) -> None:
    empty = tmp_path / "empty-train"
    empty.mkdir()
    result = run_training_job(
        tmp_path / "job",
        str(step_code_dir),
        "train.py",
        hyperparameters(),
        {"train": empty, "validation": splits / "validation"},
        timeout=300,
    )
    assert not result.succeeded and result.returncode != 0
    assert result.failure_message is not None
    assert result.failure_message.startswith("train.py: train channel is empty: no *.csv files")
    assert "check the S3 prefix" in result.failure_message
    assert (result.output_dir / "failure").read_text().strip() == result.failure_message
    assert not (result.output_dir / "success").exists()
    assert "train channel is empty" in result.output  # also in the job log (stderr)


def _train_argv(train: Path, validation: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--n_estimators",
        "5",
        "--feature_columns",
        ",".join(FEATURES),
        "--label_column",
        LABEL,
        "--train",
        str(train),
        "--validation",
        str(validation),
        "--model_dir",
        str(out / "model"),
        "--output_data_dir",
        str(out / "data"),
        *extra,
    ]


def test_training_channel_missing_a_feature(
    tmp_path: Path, splits: Path, step_module: Callable[[str], ModuleType]
) -> None:
    train = step_module("train")
    broken = tmp_path / "train"
    broken.mkdir()
    frame = pd.read_csv(splits / "train" / "train.csv").drop(columns=["avg_discount"])
    frame.to_csv(broken / "train.csv", index=False)
    with pytest.raises(train.DataValidationError) as info:
        train.main(_train_argv(broken, splits / "validation", tmp_path))
    assert str(info.value).startswith("train channel is missing column(s): avg_discount;")


def test_training_rejects_a_bad_hyperparameter(
    tmp_path: Path, splits: Path, step_module: Callable[[str], ModuleType]
) -> None:
    train = step_module("train")
    with pytest.raises(train.DataValidationError) as info:
        train.main(
            _train_argv(splits / "train", splits / "validation", tmp_path, "--max_features", "all")
        )
    assert str(info.value).startswith(
        "invalid hyperparameters/arguments: argument --max_features: invalid choice: 'all'"
    )


def test_training_needs_both_classes_in_validation(
    tmp_path: Path, splits: Path, step_module: Callable[[str], ModuleType]
) -> None:
    train = step_module("train")
    single = tmp_path / "validation"
    single.mkdir()
    frame = pd.read_csv(splits / "validation" / "validation.csv")
    frame[frame.label == 0].to_csv(single / "validation.csv", index=False)
    with pytest.raises(train.DataValidationError) as info:
        train.main(_train_argv(splits / "train", single, tmp_path))
    assert "validation channel has only class 0" in str(info.value)


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_test_split_missing_a_feature(
    tmp_path: Path, splits: Path, step_module: Callable[[str], ModuleType]
) -> None:
    step_module("train").main(_train_argv(splits / "train", splits / "validation", tmp_path))
    evaluate = step_module("evaluate")
    test_dir = tmp_path / "test"
    test_dir.mkdir()
    frame = pd.read_csv(splits / "test" / "test.csv").drop(columns=["total_payable_tax"])
    frame.to_csv(test_dir / "test.csv", index=False)
    argv = ["--model-dir", str(tmp_path / "model"), "--test-dir", str(test_dir)]
    with pytest.raises(evaluate.DataValidationError) as info:
        evaluate.main([*argv, "--output-dir", str(tmp_path / "evaluation")])
    assert str(info.value).startswith(
        "test split is missing column(s) the model needs: total_payable_tax;"
    )


def test_evaluate_without_a_model(
    tmp_path: Path, splits: Path, step_module: Callable[[str], ModuleType]
) -> None:
    evaluate = step_module("evaluate")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "README").write_text("not a model")
    with pytest.raises(evaluate.DataValidationError) as info:
        evaluate.main(["--model-dir", str(tmp_path / "model"), "--test-dir", str(splits / "test")])
    assert "no model.tar.gz or model.joblib in" in str(info.value)
    assert "(it contains: README)" in str(info.value)
