"""S3 transfers of the local SageMaker runtime: what the job instances download and upload.

Semantics follow SageMaker's data channels:

* ``S3Prefix``: every object whose key starts with the prefix; its local path is the key with
  the prefix cut off (a key equal to the prefix, i.e. a single-object URI, keeps its base name).
  "Folder" marker keys ending in ``/`` are skipped.
* ``ManifestFile``: the URI names a JSON manifest ``[{"prefix": "s3://b/p/"}, "rel/a", ...]``;
  each relative key is downloaded to ``<local>/<rel>``.
* ``ShardedByS3Key``: the sorted object list is dealt round-robin to the instances, so every
  instance gets a disjoint share (instance ``i`` of ``n`` gets objects ``i, i+n, i+2n, ...``);
  ``FullyReplicated`` gives every instance all objects.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_S3_URI = re.compile(r"^(?:s3|https)://(?P<bucket>[^/]+)/?(?P<key>.*)$")
_TRANSFER_THREADS = 8


class S3TransferError(Exception):
    """An S3 location a job needs is missing or unusable; the message is the FailureReason."""


@dataclass(frozen=True)
class S3Object:
    """One object to download: where it is and where it goes, relative to the local dir."""

    bucket: str
    key: str
    relative_path: str


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key/prefix`` -> ``("bucket", "key/prefix")``."""
    match = _S3_URI.match(uri)
    if not match:
        raise S3TransferError(f"{uri} is not an S3 URI")
    return match.group("bucket"), match.group("key")


def _list_keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    try:
        paginator = s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
    except s3.exceptions.NoSuchBucket as err:
        raise S3TransferError(f"S3 bucket {bucket} does not exist") from err
    return sorted(k for k in keys if not k.endswith("/"))


def _relative(key: str, prefix: str) -> str:
    if key == prefix:
        return key.rsplit("/", 1)[-1]
    return key[len(prefix) :].lstrip("/")


def resolve_objects(s3: Any, uri: str, data_type: str = "S3Prefix") -> list[S3Object]:
    """The objects an input names, sorted by key; raises if there are none."""
    bucket, key = parse_s3_uri(uri)
    if data_type == "S3Prefix":
        objects = [S3Object(bucket, k, _relative(k, key)) for k in _list_keys(s3, bucket, key)]
    elif data_type == "ManifestFile":
        objects = _manifest_objects(s3, bucket, key, uri)
    else:
        raise S3TransferError(f"S3DataType {data_type} is not supported by the local runtime")
    if not objects:
        raise S3TransferError(
            f'No S3 objects found under S3 URL "{uri}" given in input data source.'
        )
    return objects


def _manifest_objects(s3: Any, bucket: str, key: str, uri: str) -> list[S3Object]:
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        manifest = json.loads(body)
    except Exception as err:
        raise S3TransferError(f"Could not read the manifest file {uri}: {err}") from err
    if not (isinstance(manifest, list) and manifest and isinstance(manifest[0], dict)):
        raise S3TransferError(f"Manifest {uri} must be a JSON list starting with a prefix entry")
    prefix_bucket, prefix_key = parse_s3_uri(manifest[0]["prefix"])
    return sorted(
        (S3Object(prefix_bucket, prefix_key + rel, rel) for rel in manifest[1:]),
        key=lambda o: o.key,
    )


def shard(objects: list[S3Object], distribution: str, index: int, count: int) -> list[S3Object]:
    """The share of ``objects`` instance ``index`` (0-based) of ``count`` downloads."""
    if distribution == "ShardedByS3Key" and count > 1:
        return objects[index::count]
    return list(objects)


def download(s3: Any, objects: list[S3Object], local_dir: Path) -> int:
    """Download ``objects`` under ``local_dir``; returns the number of bytes written."""
    local_dir.mkdir(parents=True, exist_ok=True)

    def fetch(obj: S3Object) -> int:
        target = local_dir / obj.relative_path
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(obj.bucket, obj.key, str(target))
        return target.stat().st_size

    if len(objects) <= 1:
        return sum(fetch(o) for o in objects)
    with ThreadPoolExecutor(min(_TRANSFER_THREADS, len(objects))) as pool:
        return sum(pool.map(fetch, objects))


def local_files(local_dir: Path) -> dict[str, Path]:
    """Relative POSIX path -> file, for every regular file under ``local_dir``."""
    if not local_dir.is_dir():
        return {}
    files = {}
    for dirpath, _dirs, names in os.walk(local_dir):
        for name in names:
            path = Path(dirpath, name)
            if path.is_file():
                files[path.relative_to(local_dir).as_posix()] = path
    return dict(sorted(files.items()))


def upload_files(s3: Any, files: dict[str, Path], uri: str) -> None:
    """Upload ``{relative path: file}`` under the S3 prefix ``uri``."""
    bucket, prefix = parse_s3_uri(uri)
    prefix = prefix.rstrip("/")

    def put(item: tuple[str, Path]) -> None:
        rel, path = item
        key = f"{prefix}/{rel}" if prefix else rel
        s3.upload_file(str(path), bucket, key)

    with ThreadPoolExecutor(max(1, min(_TRANSFER_THREADS, len(files)))) as pool:
        list(pool.map(put, files.items()))


def upload_file(s3: Any, path: Path, uri: str) -> None:
    """Upload one file to the exact S3 URI ``uri``."""
    bucket, key = parse_s3_uri(uri)
    s3.upload_file(str(path), bucket, key)


def download_and_extract_tar(s3: Any, uri: str, target: Path) -> None:
    """Download a ``.tar.gz`` (e.g. ``sagemaker_submit_directory``) and unpack it in ``target``."""
    bucket, key = parse_s3_uri(uri)
    target.mkdir(parents=True, exist_ok=True)
    archive = target.parent / f".{target.name}.download.tar.gz"
    try:
        s3.download_file(bucket, key, str(archive))
    except Exception as err:
        raise S3TransferError(f"Could not download {uri}: {err}") from err
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    except tarfile.TarError as err:
        raise S3TransferError(f"{uri} is not a tar.gz archive: {err}") from err
    finally:
        archive.unlink(missing_ok=True)
