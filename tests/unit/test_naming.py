"""Job naming, attempts on re-runs, and the content-addressed code bundle."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlops_sagemaker.code_bundle import build_bundle
from mlops_sagemaker.failures import Kind, classify
from mlops_sagemaker.naming import NamingError, attempt_name, attempt_of, job_base_name
from mlops_sagemaker.operators import resolve_attempt

BASE = job_base_name("tpch-ord", "19960229", "split", "a1b2c3")
FIRST = attempt_name(BASE, 1)


def summaries(*pairs: tuple[int, str]) -> list[dict]:
    return [{"Name": attempt_name(BASE, a), "Status": s} for a, s in pairs]


def resolve(*pairs: tuple[int, str]) -> tuple[str, str | None]:
    return resolve_attempt(FIRST, iter(summaries(*pairs)), "Name", "Status", 63)


def test_first_run_creates_attempt_one() -> None:
    assert resolve() == (FIRST, None)


def test_completed_job_is_reused_not_rerun() -> None:
    assert resolve((1, "Failed"), (2, "Completed")) == (attempt_name(BASE, 2), "Completed")


def test_running_job_is_waited_for() -> None:
    assert resolve((1, "Failed"), (2, "InProgress")) == (attempt_name(BASE, 2), "InProgress")


def test_failed_or_stopped_jobs_lead_to_next_attempt() -> None:
    assert resolve((1, "Failed"), (2, "Stopped")) == (attempt_name(BASE, 3), None)


def test_other_names_sharing_the_prefix_are_ignored() -> None:
    foreign = [{"Name": BASE + "-1-timestamp", "Status": "Completed"}]
    assert resolve_attempt(FIRST, iter(foreign), "Name", "Status", 63) == (FIRST, None)


def test_attempt_round_trip_and_limits() -> None:
    assert attempt_of(BASE, attempt_name(BASE, 12)) == 12
    assert attempt_of(BASE, BASE) is None
    with pytest.raises(NamingError, match="past the 35 allowed") as used_up:
        attempt_name(BASE, 36)
    with pytest.raises(NamingError, match="limit 20"):
        attempt_name(BASE, 1, limit=20)
    # Permanent: a retry would compute the same name and fail the same way.
    assert classify(used_up.value).kind is Kind.PERMANENT


def test_code_bundle_is_reproducible(tmp_path: Path) -> None:
    (tmp_path / "b.py").write_text("print('b')\n")
    (tmp_path / "a.py").write_text("print('a')\n")
    first = build_bundle(tmp_path)
    (tmp_path / "a.py").touch()  # a new mtime must not change the bundle
    assert build_bundle(tmp_path).tarball == first.tarball
    (tmp_path / "a.py").write_text("print('A')\n")
    assert build_bundle(tmp_path).version != first.version


def test_code_bundle_needs_code(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no step code"):
        build_bundle(tmp_path)


def test_only_completed_jobs_feed_the_next_step() -> None:
    from mlops_sagemaker.failures import JobFailed, Kind
    from mlops_sagemaker.operators import require_completed

    require_completed("processing", "j", {"S": "Completed"}, "S")
    with pytest.raises(JobFailed, match="ended Stopped: MaxRuntimeExceeded") as stopped:
        require_completed(
            "processing", "j", {"S": "Stopped", "FailureReason": "MaxRuntimeExceeded"}, "S"
        )
    assert stopped.value.kind is Kind.TRANSIENT
    # The script's own error: retrying the same job cannot help, so no retries.
    with pytest.raises(JobFailed, match="AlgorithmError: label has one class") as script:
        require_completed(
            "processing",
            "j",
            {"S": "Failed", "FailureReason": "AlgorithmError: label has one class"},
            "S",
        )
    assert script.value.kind is Kind.PERMANENT
    with pytest.raises(JobFailed, match="InternalServerError") as server:
        require_completed(
            "tuning", "j", {"S": "Failed", "FailureReason": "InternalServerError"}, "S"
        )
    assert server.value.kind is Kind.TRANSIENT
