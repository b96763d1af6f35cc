"""The model artifact of a network-isolated model: ``model.tar.gz`` repacked with the step code
under ``code/`` (``mlops_sagemaker.model_artifact``), and the registration that serves it.

Archives are built and read with ``tarfile``; S3 is a moto server reached with real boto3, the
registration's client through the Airflow connection as the DAG gets it (``S3Hook.get_conn()``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from local_stack.sagemaker_runtime import validation
from mlops_sagemaker import tasks
from mlops_sagemaker.code_bundle import build_bundle
from mlops_sagemaker.config import UseCase, load_use_case
from mlops_sagemaker.failures import ClassifiedError, Kind, classify
from mlops_sagemaker.model_artifact import (
    ModelArtifactError,
    ensure_model_with_code,
    repack,
    repacked_key,
)
from mlops_sagemaker.payloads import BestModel, ExtractManifest, GateResult, StagedCode
from mlops_sagemaker.sagemaker_requests import RunInfo

ROOT = Path(__file__).resolve().parents[2]
CONFIG = load_use_case(ROOT / "include/config/tpch_orders.yaml")
BUNDLE = build_bundle(ROOT / "include/step_code")
BUCKET = CONFIG.storage.bucket
IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"
KMS_KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
RUN = RunInfo("1996-02-29", "1996-02-29T00:00:00+00:00", "1996-03-01T00:00:00+00:00", "manual")
TRAINING = "mlops/tpch_orders/training/1996-02-29/tuning/tpch-19960229-tuning-ab12-003-0a1b2c3d"
MODEL_KEY = f"{TRAINING}/output/model.tar.gz"
CODE_KEY = f"mlops/tpch_orders/code/{BUNDLE.version}/sourcedir.tar.gz"


def _tar(entries: dict[str, bytes | None], **infos: dict) -> bytes:
    """A gzip tar of files (bytes) and folders (``None``); ``infos`` overrides TarInfo fields."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            info.uname = "sagemaker"
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            else:
                info.size, info.mode = len(data), 0o600
            for field, value in infos.get(name, {}).items():
                setattr(info, field, value)
            tar.addfile(info, None if data is None else io.BytesIO(data))
    return buffer.getvalue()


MODEL_TAR = _tar(
    {
        "./model.joblib": b"fitted forest",
        "./model_metadata.json": b'{"threshold": 0.5}',
        "./code": None,
        "./code/inference.py": b"stale code from training",
        "./code/old_helper.py": b"stale helper",
    }
)


def _repack(model: bytes, code: bytes) -> tuple[bytes, str]:
    out = io.BytesIO()
    digest = repack(io.BytesIO(model), io.BytesIO(code), out)
    return out.getvalue(), digest


def _members(archive: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}


def _files(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


# --- repack ------------------------------------------------------------------------------------
def test_repack_puts_the_step_code_under_code_and_keeps_the_model() -> None:
    archive, _ = _repack(MODEL_TAR, BUNDLE.tarball)
    files = _files(archive)
    assert files == {
        "model.joblib": b"fitted forest",
        "model_metadata.json": b'{"threshold": 0.5}',
        **{f"code/{name}": data for name, data in BUNDLE.files.items()},
    }
    # The training's own code/ is replaced: the model serves exactly the registered code.
    assert files["code/inference.py"] == (ROOT / "include/step_code/inference.py").read_bytes()
    assert {"code/inference.py", "code/step_common.py"} <= set(files)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        names = tar.getnames()
    assert len(names) == len(set(names))  # one entry per path, nothing hidden behind another
    members = _members(archive)
    assert members["code"].isdir()
    assert members["model.joblib"].mode == 0o600  # the model's permissions are kept


def test_repack_is_reproducible_and_its_digest_is_the_uncompressed_tar() -> None:
    first, digest = _repack(MODEL_TAR, BUNDLE.tarball)
    second, again = _repack(MODEL_TAR, BUNDLE.tarball)
    assert first == second and digest == again
    assert digest == hashlib.sha256(gzip.decompress(first)).hexdigest()
    assert first[4:8] == b"\0\0\0\0"  # gzip header MTIME: no time of the repack in the bytes
    for member in _members(first).values():
        assert (member.mtime, member.uid, member.gid, member.uname, member.gname) == (
            0,
            0,
            0,
            "",
            "",
        )
    other_code = _tar({"inference.py": b"print('v2')", "step_common.py": b""})
    assert _repack(MODEL_TAR, other_code)[1] != digest


def test_repacked_key_sits_next_to_the_model() -> None:
    digest = "0123456789abcdef" + "f" * 48
    assert repacked_key(MODEL_KEY, digest) == (
        f"{TRAINING}/output/model-with-code-0123456789abcdef.tar.gz"
    )
    assert repacked_key("model.tar.gz", digest) == "model-with-code-0123456789abcdef.tar.gz"


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (_tar({"../escape.txt": b"x"}), "a path outside the archive's folder"),
        (_tar({"/etc/model": b"x"}), "a path outside the archive's folder"),
        (
            _tar({"link": b""}, link={"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}),
            "neither a file nor a folder",
        ),
        (b"not a tarball at all", "not a readable (gzip) tar archive"),
    ],
)
def test_repack_refuses_what_it_cannot_repack_safely(model: bytes, message: str) -> None:
    with pytest.raises(ModelArtifactError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _repack(model, BUNDLE.tarball)


def test_repack_refuses_step_code_without_files() -> None:
    with pytest.raises(ModelArtifactError, match="holds no file"):
        _repack(MODEL_TAR, _tar({"empty": None}))


# --- S3 ----------------------------------------------------------------------------------------
@pytest.fixture
def s3(s3_bucket):
    """A fresh bucket holding the model artifact and the staged code; ``aws_default`` reaches it."""
    client = s3_bucket(BUCKET)
    client.put_object(Bucket=BUCKET, Key=MODEL_KEY, Body=MODEL_TAR)
    client.put_object(Bucket=BUCKET, Key=CODE_KEY, Body=BUNDLE.tarball)
    return client


def _uri(key: str) -> str:
    return f"s3://{BUCKET}/{key}"


def _body(s3, uri: str) -> bytes:
    return s3.get_object(Bucket=BUCKET, Key=uri.split("/", 3)[3])["Body"].read()


def test_ensure_uploads_the_repacked_model_once(s3) -> None:
    uri = ensure_model_with_code(s3, _uri(MODEL_KEY), _uri(CODE_KEY))
    expected, digest = _repack(MODEL_TAR, BUNDLE.tarball)
    assert uri == _uri(f"{TRAINING}/output/model-with-code-{digest[:16]}.tar.gz")
    assert _body(s3, uri) == expected
    assert "ServerSideEncryption" not in s3.head_object(Bucket=BUCKET, Key=uri.split("/", 3)[3])
    # A re-run finds the object by its content's name and does not upload again.
    key = uri.split("/", 3)[3]
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"marker: not overwritten")
    assert ensure_model_with_code(s3, _uri(MODEL_KEY), _uri(CODE_KEY)) == uri
    assert _body(s3, uri) == b"marker: not overwritten"


def test_ensure_encrypts_with_the_configured_kms_key(s3) -> None:
    uri = ensure_model_with_code(s3, _uri(MODEL_KEY), _uri(CODE_KEY), kms_key_id=KMS_KEY)
    head = s3.head_object(Bucket=BUCKET, Key=uri.split("/", 3)[3])
    assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", KMS_KEY)


def test_ensure_names_a_missing_artifact_as_a_permanent_error(s3) -> None:
    missing = _uri(f"{TRAINING}/output/missing.tar.gz")
    with pytest.raises(ModelArtifactError) as err:
        ensure_model_with_code(s3, missing, _uri(CODE_KEY))
    verdict = classify(err.value)
    assert verdict.kind is Kind.PERMANENT
    assert verdict.message.startswith(f"The model artifact {missing} does not exist")


def test_ensure_says_which_archive_is_broken(s3) -> None:
    s3.put_object(Bucket=BUCKET, Key=MODEL_KEY, Body=b"truncated")
    with pytest.raises(ModelArtifactError, match=f"Cannot repack {_uri(MODEL_KEY)} with"):
        ensure_model_with_code(s3, _uri(MODEL_KEY), _uri(CODE_KEY))


# --- registration ------------------------------------------------------------------------------
def _config(isolated: bool) -> UseCase:
    network = CONFIG.sagemaker.network.model_copy(
        update={"enable_network_isolation": isolated, "kms_key_id": KMS_KEY if isolated else ""}
    )
    sagemaker = CONFIG.sagemaker.model_copy(update={"network": network})
    return CONFIG.model_copy(update={"sagemaker": sagemaker})


def _plan(config: UseCase, s3_client=None) -> dict:
    staged = StagedCode(
        BUNDLE.version, _uri(f"mlops/tpch_orders/code/{BUNDLE.version}/scripts/"),
        _uri(CODE_KEY), IMAGE, "us-east-1",
    )  # fmt: skip
    model = BestModel("job-003", {"Value": 0.8}, {}, _uri(MODEL_KEY), "tuning", {})
    gate = GateResult("auc", 0.8, 0.7, {}, _uri("mlops/eval/evaluation.json"))
    manifest = ExtractManifest(_uri("mlops/extract/"), 10, [], [])
    return tasks.plan_registration(
        config, RUN, staged, model, gate, manifest, _uri("mlops/baseline.json"), {"train": 7},
        s3_client=s3_client,
    )  # fmt: skip


def test_isolated_registration_serves_the_repacked_model_from_opt_ml_model_code(s3) -> None:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    plan = _plan(_config(True), S3Hook(aws_conn_id="aws_default").get_conn())
    request = plan["extras"]
    assert not validation.violations("CreateModelPackage", request)
    (container,) = request["InferenceSpecification"]["Containers"]
    _, digest = _repack(MODEL_TAR, BUNDLE.tarball)
    repacked = _uri(f"{TRAINING}/output/model-with-code-{digest[:16]}.tar.gz")
    assert container["ModelDataUrl"] == plan["model_url"] == repacked
    assert container["Environment"]["SAGEMAKER_SUBMIT_DIRECTORY"] == "/opt/ml/model/code"
    assert container["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    assert set(_files(_body(s3, repacked))) >= {"model.joblib", "code/inference.py"}
    # The registration key names the training artifact: a re-run finds the same version.
    plain = _plan(_config(False))["extras"]
    assert request["ClientToken"] == plain["ClientToken"]
    assert plain["InferenceSpecification"]["Containers"][0]["ModelDataUrl"] == _uri(MODEL_KEY)
    assert plain["InferenceSpecification"]["Containers"][0]["Environment"][
        "SAGEMAKER_SUBMIT_DIRECTORY"
    ] == _uri(CODE_KEY)


def test_isolated_registration_without_an_s3_client_fails_with_what_to_pass() -> None:
    with pytest.raises(ClassifiedError, match="plan_registration got no s3_client"):
        _plan(_config(True))
