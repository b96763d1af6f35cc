"""``local_stack.toolkits``: what the real toolkits do with our layout, beyond the pipeline."""

from __future__ import annotations

import json
import tarfile
import time
from pathlib import Path

import pytest

from local_stack.toolkits import InferenceSession, ModelLoadError, run_training_job

ECHO_SCRIPT = """
import json, os, sys
from pathlib import Path
model_dir = Path(os.environ["SM_MODEL_DIR"])
names = ("SM_CHANNEL_TRAIN", "SAGEMAKER_BASE_DIR", "TRAINING_JOB_NAME", "SM_FAILURE_FILE", "EXTRA")
(model_dir / "seen.json").write_text(json.dumps({
    "argv": sys.argv[1:],
    "env": {name: os.environ.get(name) for name in names},
    "train_files": sorted(os.listdir(os.environ["SM_CHANNEL_TRAIN"])),
}))
"""

SLEEP_SCRIPT = "import time\ntime.sleep(60)\n"


def _sourcedir_tarball(tmp_path: Path, name: str, text: str) -> Path:
    """A ``sourcedir.tar.gz`` as the SageMaker SDK uploads it."""
    source = tmp_path / "src"
    source.mkdir()
    (source / name).write_text(text)
    archive = tmp_path / "sourcedir.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / name, arcname=name)
    return archive


def test_hyperparameters_channels_and_environment_reach_the_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SM_FAILURE_FILE", "/nowhere/failure")  # must not leak into the job
    data = tmp_path / "data.csv"
    data.write_text("a,b\n1,2\n")
    result = run_training_job(
        tmp_path / "job",
        str(_sourcedir_tarball(tmp_path, "echo.py", ECHO_SCRIPT)),
        "echo.py",
        {
            "plain": "sqrt",  # not JSON: passed as it is
            "encoded": '"sqrt"',  # JSON-encoded by the SDK: decoded once
            "number": 3,  # not a string: encoded like the SDK does
            "flag": "true",  # JSON true -> Python True -> "True"
            "columns": "a,b",
        },
        {"train": data},
        env={"EXTRA": "yes"},
        timeout=120,
        job_name="echo-job",
    )
    assert result.succeeded, result.output[-3000:]
    seen = json.loads((result.model_dir / "seen.json").read_text())
    assert seen["argv"] == [
        "--columns",
        "a,b",
        "--encoded",
        "sqrt",
        "--flag",
        "True",
        "--number",
        "3",
        "--plain",
        "sqrt",
    ]
    assert seen["env"] == {
        "SM_CHANNEL_TRAIN": str(tmp_path / "job" / "input" / "data" / "train"),
        "SAGEMAKER_BASE_DIR": str(tmp_path / "job"),
        "TRAINING_JOB_NAME": "echo-job",
        "SM_FAILURE_FILE": None,
        "EXTRA": "yes",
    }
    assert seen["train_files"] == ["data.csv"]  # a single-file channel becomes a folder
    config = tmp_path / "job" / "input" / "config"
    resources = json.loads((config / "resourceconfig.json").read_text())
    assert resources["hosts"] == [resources["current_host"]] == ["localhost"]


def test_a_run_past_its_timeout_is_stopped(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "sleep.py").write_text(SLEEP_SCRIPT)
    started = time.monotonic()
    result = run_training_job(tmp_path / "job", str(code), "sleep.py", {}, {}, timeout=3)
    assert time.monotonic() - started < 30
    assert result.timed_out and not result.succeeded
    assert result.failure_message is not None
    assert "did not finish within the time limit" in result.failure_message


def test_a_base_dir_is_used_once(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "noop.py").write_text("")
    assert run_training_job(tmp_path / "job", str(code), "noop.py", {}, {}, timeout=120).succeeded
    with pytest.raises(FileExistsError, match="use a fresh base_dir"):
        run_training_job(tmp_path / "job", str(code), "noop.py", {}, {}, timeout=120)


def test_a_model_that_cannot_load_is_reported(tmp_path: Path, step_code_dir: Path) -> None:
    (tmp_path / "model").mkdir()
    with pytest.raises(ModelLoadError) as info:
        InferenceSession(tmp_path / "model", step_code_dir)
    assert "lacks model.joblib, model_metadata.json" in str(info.value)
