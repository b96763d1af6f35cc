"""The model artifact a network-isolated model serves: the training job's ``model.tar.gz`` with
the step code under ``code/``.

A model created with ``EnableNetworkIsolation`` cannot download ``SAGEMAKER_SUBMIT_DIRECTORY``
from S3. The SageMaker Python SDK therefore repacks the code into the model artifact and points
the container at ``/opt/ml/model/code``, where SageMaker unpacks ``model.tar.gz``
(aws/sagemaker-python-sdk v2: ``utils.repack_model``, ``Model._upload_code(repack=True)``,
``Model._framework_env_vars``). This module does the same, reproducibly: the model's entries keep
their order, the code's entries are sorted, times and owners are zeroed and the gzip header is
fixed. The object's key carries a hash of the *uncompressed* tar, so a re-run lands on the object
it uploaded before, even on a worker whose zlib compresses differently.
"""

from __future__ import annotations

import gzip
import hashlib
import tarfile
import tempfile
import zlib
from pathlib import PurePosixPath
from typing import IO, Any

from mlops_sagemaker.failures import ClassifiedError

# The folder of model.tar.gz holding the code; SageMaker unpacks the archive into /opt/ml/model.
CODE_DIR = "code"
REPACKED_PREFIX = "model-with-code-"
DIGEST_LENGTH = 16


class ModelArtifactError(ClassifiedError):
    """The model artifact or the step code cannot be repacked as they are (permanent)."""

    category = "model-artifact"


class _HashingWriter:
    """Passes the uncompressed tar through to the gzip stream and hashes it on the way."""

    def __init__(self, target: IO[bytes]) -> None:
        self._target = target
        self._hash = hashlib.sha256()
        self._size = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self._size += len(data)
        return self._target.write(data)

    def tell(self) -> int:
        return self._size

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _split_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not uri.startswith("s3://") or not bucket or not key or key.endswith("/"):
        raise ModelArtifactError(f"{uri!r} is not the S3 URI of an object (s3://bucket/key)")
    return bucket, key


def _entries(tar: tarfile.TarFile, label: str) -> dict[str, tarfile.TarInfo]:
    """Files and folders by normalised name, in archive order; a later entry of the same name
    wins, as it does when the archive is unpacked."""
    entries: dict[str, tarfile.TarInfo] = {}
    for member in tar.getmembers():
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts:
            raise ModelArtifactError(
                f"{label} holds {member.name!r}, a path outside the archive's folder: "
                "rebuild it with relative member names"
            )
        if not (member.isfile() or member.isdir()):
            raise ModelArtifactError(
                f"{label} holds {member.name!r}, which is neither a file nor a folder (a link "
                "or device): only files and folders can be repacked; write plain files"
            )
        name = path.as_posix()
        if name != ".":
            entries.pop(name, None)
            entries[name] = member
    return entries


def _add(out: tarfile.TarFile, name: str, member: tarfile.TarInfo, source: tarfile.TarFile) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if member.isdir() else tarfile.REGTYPE
    info.mode = member.mode & 0o777
    info.size = 0 if member.isdir() else member.size
    # mtime, uid, gid and owner names stay at TarInfo's defaults (0 and ""): reproducible bytes.
    out.addfile(info, None if member.isdir() else source.extractfile(member))


def repack(model_tar: IO[bytes], sourcedir_tar: IO[bytes], out: IO[bytes]) -> str:
    """Write ``model_tar``'s files with ``sourcedir_tar``'s under ``code/`` to ``out`` (gzip tar).

    A ``code/`` folder already in the model is replaced, so the model serves exactly the code in
    ``sourcedir_tar``. Returns the SHA-256 (hex) of the uncompressed tar written.
    """
    try:
        with (
            tarfile.open(fileobj=model_tar, mode="r:*") as model,
            tarfile.open(fileobj=sourcedir_tar, mode="r:*") as code,
        ):
            return _write(model, code, out)
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise ModelArtifactError(f"not a readable (gzip) tar archive: {err}") from err


def _write(model: tarfile.TarFile, code: tarfile.TarFile, out: IO[bytes]) -> str:
    model_entries = {
        name: member
        for name, member in _entries(model, "the model artifact").items()
        if name != CODE_DIR and not name.startswith(f"{CODE_DIR}/")
    }
    code_entries = _entries(code, "the step code tarball")
    if not any(member.isfile() for member in code_entries.values()):
        raise ModelArtifactError("the step code tarball holds no file: stage the code again")
    code_dir = tarfile.TarInfo(CODE_DIR)
    code_dir.type, code_dir.mode = tarfile.DIRTYPE, 0o755
    # mtime=0 and no file name keep the gzip header stable.
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="") as packed:
        hashing = _HashingWriter(packed)
        with tarfile.open(fileobj=hashing, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, member in model_entries.items():
                _add(tar, name, member, model)
            _add(tar, CODE_DIR, code_dir, code)
            for name in sorted(code_entries):
                _add(tar, f"{CODE_DIR}/{name}", code_entries[name], code)
    return hashing.hexdigest()


def repacked_key(model_key: str, digest: str) -> str:
    """``<folder of model_key>/model-with-code-<digest[:16]>.tar.gz``: next to the original."""
    folder, _, _ = model_key.rpartition("/")
    name = f"{REPACKED_PREFIX}{digest[:DIGEST_LENGTH]}.tar.gz"
    return f"{folder}/{name}" if folder else name


def _is_missing(err: Exception) -> bool:
    error = getattr(err, "response", {}).get("Error", {})
    return str(error.get("Code", "")) in {"404", "NoSuchKey", "NotFound"}


def _download(s3: Any, uri: str, target: IO[bytes], what: str) -> None:
    bucket, key = _split_uri(uri)
    try:
        s3.download_fileobj(bucket, key, target)
    except s3.exceptions.ClientError as err:
        if _is_missing(err):
            raise ModelArtifactError(
                f"{what} {uri} does not exist: re-run the task that produced it"
            ) from err
        raise  # throttling, access denied, ...: the failure policy classifies the AWS error
    target.seek(0)


def _exists(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except s3.exceptions.ClientError as err:
        if _is_missing(err):
            return False
        raise
    return True


def ensure_model_with_code(
    s3: Any, model_data_url: str, sourcedir_uri: str, kms_key_id: str = ""
) -> str:
    """S3 URI of ``model_data_url`` repacked with the code of ``sourcedir_uri`` under ``code/``.

    ``s3`` is a boto3 S3 client (``S3Hook(...).get_conn()``). The object goes next to the
    original, named by the content's hash; an existing object of that name already holds this
    content and is reused. With ``kms_key_id`` the upload is encrypted with that key, as the SDK
    does with ``model_kms_key``. Works on temporary files, never the whole model in memory.
    """
    bucket, model_key = _split_uri(model_data_url)
    with (
        tempfile.TemporaryFile() as model_tar,
        tempfile.TemporaryFile() as code_tar,
        tempfile.TemporaryFile() as out,
    ):
        _download(s3, model_data_url, model_tar, "The model artifact")
        _download(s3, sourcedir_uri, code_tar, "The step code tarball")
        try:
            digest = repack(model_tar, code_tar, out)
        except ModelArtifactError as err:
            raise ModelArtifactError(
                f"Cannot repack {model_data_url} with {sourcedir_uri}: {err}"
            ) from err
        key = repacked_key(model_key, digest)
        if not _exists(s3, bucket, key):
            out.seek(0)
            extra = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_id}
            s3.upload_fileobj(out, bucket, key, ExtraArgs=extra if kms_key_id else None)
    return f"s3://{bucket}/{key}"
