"""Step code shipped to SageMaker: a deterministic, content-addressed source bundle.

The training and inference containers take a ``sourcedir.tar.gz`` (``sagemaker_submit_directory``
/ ``SAGEMAKER_SUBMIT_DIRECTORY``); processing jobs take the scripts themselves. The bundle's bytes
depend only on the files' names and contents (sorted entries, zeroed times and owners), so its
SHA-256 is the code version recorded on every model version and used in S3 keys.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CodeBundle:
    """The step-code files and their deterministic tarball."""

    files: dict[str, bytes]
    tarball: bytes

    @property
    def version(self) -> str:
        """First 12 hex digits of the tarball's SHA-256."""
        return hashlib.sha256(self.tarball).hexdigest()[:12]


def build_bundle(step_code_dir: Path) -> CodeBundle:
    """Read every ``*.py`` of ``step_code_dir`` (not recursive) into a reproducible bundle."""
    paths = sorted(p for p in Path(step_code_dir).glob("*.py") if p.is_file())
    if not paths:
        raise FileNotFoundError(f"no step code (*.py) in {step_code_dir}")
    files = {p.name: p.read_bytes() for p in paths}
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(content))
    packed = io.BytesIO()
    # mtime=0 and no file name keep the gzip header stable too.
    with gzip.GzipFile(fileobj=packed, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    return CodeBundle(files=files, tarball=packed.getvalue())
