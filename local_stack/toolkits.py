"""Drive the real SageMaker container toolkits outside a container.

Two entry points, both used by the tests of ``include/step_code`` and meant to be reused by the
local SageMaker runtime:

* :func:`run_training_job` runs a training script the way the SageMaker scikit-learn container
  does: it lays out a folder like ``/opt/ml`` (``input/config/*.json``, ``input/data/<channel>``,
  ``model``, ``output``, ``code``) and starts the ``sagemaker-training`` toolkit
  (``python -m sagemaker_training.cli.train``, the container's ``train`` command) in a
  subprocess with ``SAGEMAKER_BASE_DIR`` pointing at that folder. The toolkit copies the code,
  turns hyperparameters into ``--name value`` arguments, sets the ``SM_*`` variables, runs the
  script with the toolkit's interpreter (``python``: an image venv's, see
  ``local_stack/images.py``; default this one) and writes ``output/failure`` or
  ``output/success``. For callers
  with their own process runner, the steps are available separately:
  :func:`prepare_training_dir`, :func:`training_command`, :func:`training_environment`,
  :func:`collect_training_result`.
* :class:`InferenceSession` loads a serving script (``model_fn``/``input_fn``/``predict_fn``/
  ``output_fn``) through the ``sagemaker-inference`` toolkit's ``Transformer`` exactly as the
  serving container does, and answers invocations with ``(status, content type, body)``.

This module runs inside the image venvs too (the serving worker and the step-code tests
import it there), so it must stay compatible with the oldest image's Python (3.9).

Facts about the toolkits that shape this module (sagemaker-training 4.8.0 and
sagemaker-inference 1.2.0 as the images ship them; also checked with 5.1 and 1.10):

* ``sagemaker_training.environment`` reads ``SAGEMAKER_BASE_DIR`` once, at import time (and
  creates a folder under ``~/sagemaker_local`` when neither it nor ``/opt/ml`` exists): one job
  per process, hence the subprocess.
* Before running the script the toolkit resolves every host of ``resourceconfig.json`` by DNS,
  retrying for 15 minutes: the hosts must be ``localhost``, not ``algo-1``.
* ``hyperparameters.json`` values are strings that the toolkit ``json.loads`` one by one (what
  the SDK writes is ``json.dumps(value)``); a string that is not JSON is kept as it is.
  Decoded values are turned back into arguments with ``str()``: ``"true"`` arrives as
  ``True``, ``"1e-3"`` as ``0.001``.
* ``sagemaker_submit_directory`` (local folder, local ``.tar.gz`` or ``s3://`` URI, downloaded
  with boto3 honouring ``S3_ENDPOINT_URL``) is copied to ``<base>/code`` only when that folder
  is empty, and the script runs there. A ``setup.py`` in it makes the toolkit ``pip install``
  the folder and a ``requirements.txt`` makes it ``pip install -r``: keep both out of the
  step-code folder.
* ``output/failure`` is written by the toolkit only if it does not exist yet, so a script that
  writes its own message there wins over the toolkit's generic ``ExecuteUserScriptError``.
* The inference ``Transformer`` imports the user module by the name in ``SAGEMAKER_PROGRAM``
  (``inference.py`` -> ``inference``) through ``sys.path``/``sys.modules``, once, at the first
  request; it decodes the body to ``str`` only for exactly ``application/json`` and
  ``text/csv``; it maps a ``BaseInferenceToolkitError`` to its ``status_code`` and any other
  exception to 500 (1.10 adds the traceback to the body). ``validate_and_initialize`` takes a
  ``context`` from 1.10 on; 1.2.0 takes ``model_dir`` only.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib
import inspect
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

__all__ = [
    "InferenceSession",
    "InvocationResult",
    "ModelLoadError",
    "TrainingLayout",
    "TrainingRunResult",
    "collect_training_result",
    "extract_model_tarball",
    "make_model_tarball",
    "prepare_training_dir",
    "run_training_job",
    "training_command",
    "training_environment",
]

LOCAL_HOST = "localhost"
_DEFAULT_CHANNEL_CONFIG = {
    "TrainingInputMode": "File",
    "S3DistributionType": "FullyReplicated",
    "RecordWrapperType": "None",
}
# Variables of the calling process that must not leak into a job (they steer the toolkits).
_LEAKY_PREFIXES = ("SM_", "SAGEMAKER_")
_LEAKY_NAMES = ("TRAINING_JOB_NAME", "CURRENT_HOST")
_OUTPUT_TAIL_CHARS = 2000


# =========================================================================== training


@dataclass(frozen=True)
class TrainingLayout:
    """The ``/opt/ml`` stand-in of one training job."""

    base_dir: Path

    @property
    def config_dir(self) -> Path:
        """``input/config``: hyperparameters, input data config, resource config."""
        return self.base_dir / "input" / "config"

    @property
    def data_dir(self) -> Path:
        """``input/data``: one folder per channel."""
        return self.base_dir / "input" / "data"

    @property
    def code_dir(self) -> Path:
        """``code``: where the toolkit copies the submitted code and runs the script."""
        return self.base_dir / "code"

    @property
    def model_dir(self) -> Path:
        """``model``: what the script saves (``SM_MODEL_DIR``), packed into model.tar.gz."""
        return self.base_dir / "model"

    @property
    def output_dir(self) -> Path:
        """``output``: ``failure``/``success`` files and ``data``."""
        return self.base_dir / "output"

    @property
    def output_data_dir(self) -> Path:
        """``output/data`` (``SM_OUTPUT_DATA_DIR``), packed into output.tar.gz."""
        return self.output_dir / "data"

    @property
    def failure_file(self) -> Path:
        """The file whose content SageMaker reports as the job's FailureReason."""
        return self.output_dir / "failure"


@dataclass(frozen=True)
class TrainingRunResult:
    """How a training run ended and where its artifacts are."""

    returncode: int
    output: str
    failure_message: str | None
    model_dir: Path
    output_dir: Path
    output_data_dir: Path
    base_dir: Path
    timed_out: bool = False

    @property
    def succeeded(self) -> bool:
        """True when the toolkit exited 0 (it then wrote ``output/success``)."""
        return self.returncode == 0 and not self.timed_out


def _encode_hyperparameter(value: Any) -> str:
    # The service passes the request's strings through; other values are encoded like the SDK.
    return value if isinstance(value, str) else json.dumps(value)


def _write_json(path: Path, document: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def _place_channel(source: Path, target: Path, link: bool) -> None:
    source = source.resolve()
    if not source.exists():
        raise FileNotFoundError(f"channel source {source} does not exist")
    if target.exists() or target.is_symlink():
        if target.resolve() == source:
            return  # the caller already put the data in place
        raise FileExistsError(f"channel folder {target} already exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    if link and source.is_dir():
        target.symlink_to(source, target_is_directory=True)
    elif source.is_dir():
        shutil.copytree(source, target)
    else:  # a single file becomes the only file of the channel
        target.mkdir()
        if link:
            (target / source.name).symlink_to(source)
        else:
            shutil.copy2(source, target)


def prepare_training_dir(
    base_dir: Path,
    code_dir_or_uri: str | None,
    entry_point: str | None,
    hyperparameters: Mapping[str, Any],
    channels: Mapping[str, Path],
    *,
    job_name: str | None = None,
    channel_config: Mapping[str, Mapping[str, Any]] | None = None,
    link_channels: bool = False,
    instance_type: str = "local",
) -> TrainingLayout:
    """Lay out ``base_dir`` like ``/opt/ml`` for one training run.

    ``hyperparameters`` are the request's ``HyperParameters`` (strings, written as they are;
    other values are JSON-encoded). ``code_dir_or_uri``/``entry_point`` set
    ``sagemaker_submit_directory``/``sagemaker_program`` JSON-encoded as the SageMaker SDK does;
    pass ``None`` to keep the values already in ``hyperparameters``. Channels are copied (File
    mode) or, with ``link_channels``, symlinked; a channel already at
    ``input/data/<name>`` is left as it is. ``base_dir`` must not hold an earlier run.
    """
    layout = TrainingLayout(Path(base_dir).absolute())
    for leftover in (layout.config_dir, layout.model_dir, layout.output_dir, layout.code_dir):
        if leftover.exists() and any(leftover.iterdir()):
            raise FileExistsError(f"{leftover} is not empty: use a fresh base_dir for each run")

    hps = {str(k): _encode_hyperparameter(v) for k, v in hyperparameters.items()}
    if code_dir_or_uri is not None:
        location = str(code_dir_or_uri)
        if "://" not in location:
            location = str(Path(location).absolute())
        hps["sagemaker_submit_directory"] = json.dumps(location)
    if entry_point is not None:
        hps["sagemaker_program"] = json.dumps(entry_point)
    if job_name is not None:
        hps.setdefault("sagemaker_job_name", json.dumps(job_name))
    for required in ("sagemaker_program", "sagemaker_submit_directory"):
        if required not in hps:
            raise ValueError(f"no {required}: pass it as an argument or in hyperparameters")

    for name, source in channels.items():
        _place_channel(Path(source), layout.data_dir / name, link_channels)
    channel_config = channel_config or {}
    input_data_config = {
        name: {**_DEFAULT_CHANNEL_CONFIG, **dict(channel_config.get(name, {}))} for name in channels
    }
    group = "homogeneousCluster"
    resource_config = {
        "current_host": LOCAL_HOST,
        "hosts": [LOCAL_HOST],
        "current_instance_type": instance_type,
        "current_group_name": group,
        "instance_groups": [
            {"instance_group_name": group, "instance_type": instance_type, "hosts": [LOCAL_HOST]}
        ],
        "network_interface_name": "eth0",
    }
    _write_json(layout.config_dir / "hyperparameters.json", hps)
    _write_json(layout.config_dir / "inputdataconfig.json", input_data_config)
    _write_json(layout.config_dir / "resourceconfig.json", resource_config)
    for folder in (layout.model_dir, layout.output_data_dir, layout.code_dir):
        folder.mkdir(parents=True, exist_ok=True)
    return layout


def training_command(python: str | Path | None = None) -> list[str]:
    """The container's ``train`` command: the toolkit's CLI on ``python`` (the image venv's
    interpreter; default: this one)."""
    return [str(python or sys.executable), "-m", "sagemaker_training.cli.train"]


def training_environment(
    layout: TrainingLayout,
    env: Mapping[str, str] | None = None,
    job_name: str | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment of the toolkit process: ``base`` (default: this process's), minus toolkit
    variables, plus ``SAGEMAKER_BASE_DIR`` and ``env`` (e.g. the request's ``Environment``, or
    ``S3_ENDPOINT_URL`` and credentials when the code is an ``s3://`` URI)."""
    result = {
        k: v
        for k, v in (os.environ if base is None else base).items()
        if not k.startswith(_LEAKY_PREFIXES) and k not in _LEAKY_NAMES
    }
    result["SAGEMAKER_BASE_DIR"] = str(layout.base_dir)
    result["PYTHONUNBUFFERED"] = "1"
    if job_name is not None:
        result["TRAINING_JOB_NAME"] = job_name
    result.update({str(k): str(v) for k, v in (env or {}).items()})
    return result


def collect_training_result(
    layout: TrainingLayout, returncode: int, output: str, timed_out: bool = False
) -> TrainingRunResult:
    """Read the failure file (if any) and describe the run."""
    failure: str | None = None
    if layout.failure_file.is_file():
        failure = layout.failure_file.read_text(encoding="utf-8", errors="replace").strip()
    if timed_out and not failure:
        failure = "training did not finish within the time limit (MaxRuntimeInSeconds)"
    elif returncode != 0 and not failure:
        tail = output[-_OUTPUT_TAIL_CHARS:].strip()
        failure = f"training process exited with code {returncode}: {tail}"
    return TrainingRunResult(
        returncode=returncode,
        output=output,
        failure_message=failure or None,
        model_dir=layout.model_dir,
        output_dir=layout.output_dir,
        output_data_dir=layout.output_data_dir,
        base_dir=layout.base_dir,
        timed_out=timed_out,
    )


def run_training_job(
    base_dir: Path,
    code_dir_or_uri: str | None,
    entry_point: str | None,
    hyperparameters: Mapping[str, Any],
    channels: Mapping[str, Path],
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    *,
    job_name: str | None = None,
    channel_config: Mapping[str, Mapping[str, Any]] | None = None,
    link_channels: bool = False,
    python: str | Path | None = None,
) -> TrainingRunResult:
    """Run one training job through the real ``sagemaker-training`` toolkit; wait for it.

    Returns the exit code, the combined stdout/stderr, the failure message (from
    ``output/failure``) and the artifact folders; the model files are in ``model_dir``
    (pack them with :func:`make_model_tarball`). On ``timeout`` (seconds) the process group is
    terminated and ``timed_out`` is set. ``python`` runs the toolkit (default: this
    interpreter).
    """
    layout = prepare_training_dir(
        base_dir,
        code_dir_or_uri,
        entry_point,
        hyperparameters,
        channels,
        job_name=job_name,
        channel_config=channel_config,
        link_channels=link_channels,
    )
    process = subprocess.Popen(
        training_command(python),
        cwd=layout.base_dir,
        env=training_environment(layout, env, job_name),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    timed_out = False
    try:
        raw, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(process)
        raw, _ = process.communicate()
    output = raw.decode("utf-8", errors="replace")
    return collect_training_result(layout, process.returncode, output, timed_out)


def _kill_group(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM the job's process group (toolkit and script), SIGKILL after ``grace`` s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def make_model_tarball(model_dir: Path, dest: Path) -> Path:
    """Pack the files of ``model_dir`` into ``dest`` (``model.tar.gz``), paths relative to it.

    The archive is reproducible: sorted entries, zeroed times and owners, so the same model
    files give the same bytes.
    """
    model_dir, dest = Path(model_dir), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(model_dir.rglob("*")):
            info = tar.gettarinfo(path, arcname=path.relative_to(model_dir).as_posix())
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if info.isfile():
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
    with dest.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(buffer.getvalue())
    return dest


def extract_model_tarball(archive: Path, dest: Path) -> Path:
    """Extract ``model.tar.gz`` into ``dest`` (safe member paths only); returns ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:*") as tar:
        tar.extractall(dest, filter="data")
    return dest


# =========================================================================== inference


class InvocationResult(NamedTuple):
    """An invocation's answer as the container gives it."""

    status: int
    content_type: str
    body: bytes


class ModelLoadError(RuntimeError):
    """The serving script could not be imported or its ``model_fn`` failed."""


class _RequestProcessor:
    """The part of the model server's request processor the toolkit reads."""

    def __init__(self, properties: dict[str, str]) -> None:
        self._properties = properties

    def get_request_properties(self) -> dict[str, str]:
        return self._properties

    def get_request_property(self, key: str) -> str | None:
        return self._properties.get(key)


class _ServingContext:
    """The subset of the model server's per-request ``Context`` the ``Transformer`` uses."""

    def __init__(self, model_dir: Path, properties: dict[str, str]) -> None:
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None, "batch_size": 1}
        self.request_processor = [_RequestProcessor(properties)]
        self.status = 200
        self.phrase = "OK"
        self.response_content_type: str | None = None

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.response_content_type = value

    def get_response_content_type(self, idx: int) -> str | None:
        return self.response_content_type

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.status = int(code)
        self.phrase = phrase

    def get_request_header(self, idx: int, key: str) -> str | None:
        return self.request_processor[0].get_request_property(key)


# One lock for every session: module swapping touches the process-wide sys.modules/sys.path.
_SCOPE_LOCK = threading.RLock()
_INSTALLED_PREFIXES = tuple(
    str(Path(p).resolve())
    for key in ("stdlib", "platstdlib", "purelib", "platlib")
    if (p := sysconfig.get_paths().get(key))
)


def _module_file(module: ModuleType) -> Path | None:
    file = getattr(module, "__file__", None)
    return Path(file).resolve() if file else None


class InferenceSession:
    """A serving script loaded through the ``sagemaker-inference`` toolkit's ``Transformer``.

    ``model_dir`` is the extracted ``model.tar.gz``; ``code_dir`` holds ``program`` (default:
    ``<model_dir>/code``, where the SDK repacks the code). ``env`` is the model's
    ``Environment`` (for instance ``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT``); it is applied
    while the script is imported and called.

    Several sessions can live in one process: each imports its own copy of the script (and of
    the helper modules next to it). While a session imports or calls the script, its modules
    are swapped into ``sys.modules`` and its ``code_dir`` is put first on ``sys.path``; this is
    done under a process-wide lock, so invocations of all sessions run one at a time.
    """

    def __init__(
        self,
        model_dir: Path,
        code_dir: Path | None = None,
        program: str = "inference.py",
        env: Mapping[str, str] | None = None,
        *,
        load: bool = True,
    ) -> None:
        from sagemaker_inference.default_inference_handler import DefaultInferenceHandler
        from sagemaker_inference.transformer import Transformer

        self.model_dir = Path(model_dir).resolve()
        self.code_dir = Path(code_dir).resolve() if code_dir else self.model_dir / "code"
        if "/" in program or not program.endswith(".py"):
            raise ValueError(f"program must be a .py file name in code_dir, got {program!r}")
        if not (self.code_dir / program).is_file():
            raise FileNotFoundError(f"serving script {self.code_dir / program} does not exist")
        self.program = program
        self.module_name = program[: -len(".py")]
        self.env = {
            "SAGEMAKER_PROGRAM": program,
            **{str(k): str(v) for k, v in (env or {}).items()},
        }
        self._modules: dict[str, ModuleType] = {}
        self._transformer = Transformer(default_inference_handler=DefaultInferenceHandler())
        self._loaded = False
        if load:
            self.load()

    # ----------------------------------------------------------------- module isolation

    def _local_names(self) -> set[str]:
        names = {self.module_name}
        for path in self.code_dir.iterdir():
            if path.suffix == ".py":
                names.add(path.stem)
            elif path.is_dir() and (path / "__init__.py").is_file():
                names.add(path.name)
        return names

    def _owns(self, module: ModuleType) -> bool:
        file = _module_file(module)
        return file is not None and file.is_relative_to(self.code_dir)

    def _foreign(self, name: str, module: ModuleType) -> bool:
        """A module that would shadow ours: same name, not ours, not an installed library."""
        if name == self.module_name:
            return True
        file = _module_file(module)
        return file is not None and not str(file).startswith(_INSTALLED_PREFIXES)

    @contextlib.contextmanager
    def _scope(self) -> Iterator[None]:
        """Make this session's modules, code dir and environment current."""
        with _SCOPE_LOCK:
            local = self._local_names()
            displaced: dict[str, ModuleType] = {}  # whatever our modules shadow, put back later
            for name, module in list(sys.modules.items()):
                if name in self._modules or (
                    name.split(".", 1)[0] in local and self._foreign(name, module)
                ):
                    if module is not self._modules.get(name):
                        displaced[name] = module
                    del sys.modules[name]
            sys.modules.update(self._modules)
            code_dir = str(self.code_dir)
            sys.path.insert(0, code_dir)
            saved_env = {key: os.environ.get(key) for key in self.env}
            os.environ.update(self.env)
            importlib.invalidate_caches()
            try:
                yield
            finally:
                for name, module in list(sys.modules.items()):
                    if name in self._modules or (
                        name.split(".", 1)[0] in local and self._owns(module)
                    ):
                        self._modules[name] = module
                        del sys.modules[name]
                sys.modules.update(displaced)
                with contextlib.suppress(ValueError):
                    sys.path.remove(code_dir)
                for key, value in saved_env.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value

    # ----------------------------------------------------------------- API

    def load(self) -> None:
        """Import the script and run its ``model_fn`` (the container does this at start-up)."""
        if self._loaded:
            return
        context = _ServingContext(self.model_dir, {})
        with self._scope():
            try:
                initialize = self._transformer.validate_and_initialize
                if "context" in inspect.signature(initialize).parameters:
                    initialize(model_dir=str(self.model_dir), context=context)
                else:
                    initialize(model_dir=str(self.model_dir))
            except Exception as exc:
                raise ModelLoadError(
                    f"loading {self.program} from {self.code_dir} with model {self.model_dir} "
                    f"failed: {type(exc).__name__}: {exc}"
                ) from exc
        self._loaded = True

    @property
    def module(self) -> ModuleType | None:
        """The session's own copy of the serving script (after :meth:`load`)."""
        return self._modules.get(self.module_name)

    def invoke(
        self, body: bytes | str, content_type: str, accept: str | None = None
    ) -> InvocationResult:
        """Send one request through ``Transformer.transform``.

        Errors of the script come back as a status >= 400 with the message (and the
        toolkit's traceback) in the body, never as an exception.
        """
        payload = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        properties = {"Content-Type": content_type}
        if accept:
            properties["Accept"] = accept
        context = _ServingContext(self.model_dir, properties)
        try:
            self.load()
            with self._scope():
                response = self._transformer.transform([{"body": payload}], context)
        except Exception as exc:  # the toolkit catches script errors itself; this is a guard
            message = f"{type(exc).__name__}: {exc}"
            return InvocationResult(500, "text/plain", message.encode("utf-8"))
        answer: Any = response[0] if response else b""
        if isinstance(answer, str):
            answer = answer.encode("utf-8")
        elif not isinstance(answer, (bytes, bytearray)):
            answer = str(answer).encode("utf-8")
        if context.status >= 400:
            return InvocationResult(context.status, "text/plain", bytes(answer))
        content = context.response_content_type or accept or "application/json"
        return InvocationResult(context.status, content, bytes(answer))
