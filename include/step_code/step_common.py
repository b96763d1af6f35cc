"""Failure reporting shared by the step scripts (``preprocess.py``, ``train.py``, ``evaluate.py``).

Every SageMaker job receives the whole step-code folder: processing jobs under
``/opt/ml/processing/input/code/``, training and serving containers as ``sourcedir.tar.gz``.
The scripts run with that folder first on ``sys.path`` (``python <folder>/preprocess.py``, or
``python train.py`` from the code dir), so they import this module as ``step_common``. It uses
the standard library only and has no dependency on Airflow.

A script raises :class:`DataValidationError` for input it cannot use, parses its arguments
with :class:`StepArgumentParser`, and ends with ``sys.exit(run_as_script(main, ...))``: the
error message is printed to stderr and written where SageMaker shows it (the processing job's
ExitMessage, the training job's FailureReason), and the exit code is 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "DataValidationError",
    "StepArgumentParser",
    "failure_files",
    "report_failure",
    "run_as_script",
]


class DataValidationError(Exception):
    """The input data or the arguments cannot be used; the message says what to fix."""


def failure_files(file_names: Sequence[str]) -> list[Path]:
    """Where to write a failure message so that SageMaker shows it.

    ``SM_FAILURE_FILE`` wins when set. Otherwise the files go to ``<base>/output/`` where
    ``<base>`` is ``SAGEMAKER_BASE_DIR`` (set by the local runtime and the training toolkit
    outside SageMaker) or ``/opt/ml``. Processing jobs report ``output/message`` as the job's
    ExitMessage; training jobs report ``output/failure`` as the FailureReason (the training
    toolkit does not overwrite a failure file that already exists).
    """
    explicit = os.environ.get("SM_FAILURE_FILE")
    if explicit:
        return [Path(explicit)]
    base = Path(os.environ.get("SAGEMAKER_BASE_DIR") or "/opt/ml")
    return [base / "output" / name for name in file_names]


def report_failure(message: str, file_names: Sequence[str]) -> None:
    """Print ``message`` to stderr and write it to the failure file(s); never raises."""
    print(message, file=sys.stderr)
    for path in failure_files(file_names):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(message, encoding="utf-8")
        except OSError as exc:  # a read-only /opt/ml outside a container must not hide the error
            print(f"(could not write failure file {path}: {exc})", file=sys.stderr)


def run_as_script(main_fn: Callable[[], Any], script: str, file_names: Sequence[str]) -> int:
    """Run ``main_fn`` and turn errors into a failure file and exit code 1.

    ``script`` prefixes the message (``"preprocess.py: ..."``); ``file_names`` are the files
    under ``<base>/output/`` to write (``("message", "failure")`` for processing jobs,
    ``("failure",)`` for training jobs). A :class:`DataValidationError` is reported by its
    message alone; any other exception also prints its traceback to the job log.
    """
    try:
        main_fn()
    except DataValidationError as exc:
        report_failure(f"{script}: {exc}", file_names)
        return 1
    except Exception as exc:
        traceback.print_exc()
        report_failure(
            f"{script}: unexpected error {type(exc).__name__}: {exc} (traceback in the job log)",
            file_names,
        )
        return 1
    return 0


class StepArgumentParser(argparse.ArgumentParser):
    """Argument errors become :class:`DataValidationError` so they reach the failure file.

    The message reads ``"<error_prefix>: <argparse's message>"``; ``error_prefix`` defaults to
    ``"invalid arguments"`` (``train.py`` says ``"invalid hyperparameters/arguments"``).
    """

    def __init__(self, *args: Any, error_prefix: str = "invalid arguments", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.error_prefix = error_prefix

    def error(self, message: str) -> None:  # type: ignore[override]
        raise DataValidationError(f"{self.error_prefix}: {message}")
