"""The SageMaker scikit-learn images the local runtime can run, as project-managed virtualenvs.

The table of images (framework version -> Python version and the image's exact Python
packages, with its sources) is ``plugins/mlops_sagemaker/sklearn_images.toml``: the config
validates ``sagemaker.sklearn_framework_version`` against the same file. For each image this
module builds ``.venv-images/sklearn-<version>`` with that Python (from pyenv) and those
packages, so step code runs locally on what the image ships, not on the host's Python 3.11.

``python -m local_stack.images build [VERSION ...]`` builds what is missing or stale (a stamp
file in each venv holds the fingerprint of its table entry); ``make install`` runs it.
``python -m local_stack.images python VERSION`` prints the interpreter of a built image.

The base interpreter of Python ``3.X`` is ``$LOCAL_STACK_PYTHON_3_X`` if set, else the newest
``3.X.*`` under ``$(pyenv root)/versions``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLE_PATH = ROOT / "plugins" / "mlops_sagemaker" / "sklearn_images.toml"
VENVS_DIR = ROOT / ".venv-images"
STAMP_NAME = ".image-stamp"

# How the SageMaker SDK (image_uris.retrieve) and the AWS docs spell a scikit-learn image:
# <account>.dkr.ecr.<region>.amazonaws.com[.cn]/sagemaker-scikit-learn:<version>[-cpu-py3].
_IMAGE_RE = re.compile(
    r"^(?:\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(?:\.cn)?/)?"
    r"sagemaker-scikit-learn:(?P<version>\d+\.\d+-\d+)(?:-cpu-py3)?$"
)


class UnknownImage(ValueError):
    """An image URI that is not one of the table's scikit-learn images."""


class ImageNotBuilt(RuntimeError):
    """The image's virtualenv is missing or was built from another table entry."""


@dataclass(frozen=True)
class ImageSpec:
    """One image of the table."""

    version: str
    python: str
    source: str
    resolve_as_of: str
    requirements: tuple[str, ...]
    test_requirements: tuple[str, ...]

    @property
    def venv_dir(self) -> Path:
        """``.venv-images/sklearn-<version>``."""
        return VENVS_DIR / f"sklearn-{self.version}"

    @property
    def interpreter(self) -> Path:
        """The venv's ``python`` (the image's ``python``/``python3``)."""
        return self.venv_dir / "bin" / "python"

    @property
    def fingerprint(self) -> str:
        """Changes whenever anything that goes into the venv changes."""
        text = json.dumps(
            [self.python, self.resolve_as_of, self.requirements, self.test_requirements]
        )
        return hashlib.sha256(text.encode()).hexdigest()

    def is_built(self) -> bool:
        """The venv exists and was built from this exact entry."""
        stamp = self.venv_dir / STAMP_NAME
        return (
            self.interpreter.exists()
            and stamp.is_file()
            and stamp.read_text().strip() == self.fingerprint
        )


@functools.cache
def load_images(path: Path = TABLE_PATH) -> dict[str, ImageSpec]:
    """The table, by framework version."""
    table = tomllib.loads(path.read_text(encoding="utf-8"))
    tests = tuple(table.get("test_requirements", ()))
    return {
        version: ImageSpec(
            version=version,
            python=entry["python"],
            source=entry["source"],
            resolve_as_of=entry["resolve_as_of"],
            requirements=tuple(entry["requirements"]),
            test_requirements=tests,
        )
        for version, entry in table["images"].items()
    }


def framework_version(image_uri: str) -> str | None:
    """``1.2-1`` for ``...sagemaker-scikit-learn:1.2-1-cpu-py3``; None for other images."""
    match = _IMAGE_RE.match(image_uri.strip())
    return match.group("version") if match else None


def image_for(image_uri: str) -> ImageSpec:
    """The table entry of an image URI; :class:`UnknownImage` names the known ones."""
    images = load_images()
    version = framework_version(image_uri or "")
    if version in images:
        return images[version]
    known = ", ".join(f"sagemaker-scikit-learn:{v}-cpu-py3" for v in images)
    raise UnknownImage(
        f"The local SageMaker runtime cannot run image {image_uri!r}: it runs the SageMaker "
        f"scikit-learn images {known} (<account>.dkr.ecr.<region>.amazonaws.com/...; the tag "
        "without -cpu-py3 works too)."
    )


def interpreter_for(image_uri: str) -> Path:
    """The Python of the image's venv; raises :class:`UnknownImage` or :class:`ImageNotBuilt`."""
    spec = image_for(image_uri)
    if not spec.is_built():
        raise ImageNotBuilt(
            f"the virtualenv of image {spec.version} ({spec.venv_dir}) is missing or out of "
            "date: run `make install` (or `python -m local_stack.images build`)"
        )
    return spec.interpreter


def base_python(version: str) -> Path:
    """The interpreter to build a venv of Python ``version`` (``3.9``) from (see module doc)."""
    override = os.environ.get("LOCAL_STACK_PYTHON_" + version.replace(".", "_"))
    if override:
        if not Path(override).is_file():
            raise FileNotFoundError(f"LOCAL_STACK_PYTHON_{version} = {override}: no such file")
        return Path(override)
    root = os.environ.get("PYENV_ROOT") or _pyenv_root()
    candidates = sorted(
        (Path(root) / "versions").glob(f"{version}.*/bin/python{version}"),
        key=lambda p: tuple(int(n) for n in p.parents[1].name.split(".") if n.isdigit()),
    )
    if not candidates:
        raise FileNotFoundError(
            f"no Python {version} interpreter: install it with `pyenv install {version}` "
            f"(looked in {root}/versions) or set LOCAL_STACK_PYTHON_"
            f"{version.replace('.', '_')} to its path"
        )
    return candidates[-1]


def _pyenv_root() -> str:
    try:
        found = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=True)
        return found.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return str(Path.home() / ".pyenv")


def build(spec: ImageSpec, uv: str) -> float | None:
    """Build the image's venv unless it is up to date; returns the seconds it took (or None)."""
    if spec.is_built():
        return None
    python = base_python(spec.python)
    started = time.monotonic()
    shutil.rmtree(spec.venv_dir, ignore_errors=True)
    subprocess.run([uv, "venv", "--quiet", "--python", str(python), str(spec.venv_dir)], check=True)
    subprocess.run(
        [
            uv,
            "pip",
            "install",
            "--quiet",
            "--python",
            str(spec.interpreter),
            "--exclude-newer",
            spec.resolve_as_of,
            *spec.requirements,
            *spec.test_requirements,
        ],
        check=True,
    )
    (spec.venv_dir / STAMP_NAME).write_text(spec.fingerprint + "\n")
    return time.monotonic() - started


def main(argv: list[str]) -> int:
    """``build [VERSION ...]`` or ``python VERSION`` (see module doc)."""
    images = load_images()
    if len(argv) == 2 and argv[0] == "python":
        if argv[1] not in images:
            print(f"unknown image {argv[1]}; known: {', '.join(images)}", file=sys.stderr)
            return 2
        print(interpreter_for(f"sagemaker-scikit-learn:{argv[1]}"))
        return 0
    if not argv or argv[0] != "build":
        print(__doc__, file=sys.stderr)
        return 2
    unknown = [v for v in argv[1:] if v not in images]
    if unknown:
        print(f"unknown images {unknown}; known: {', '.join(images)}", file=sys.stderr)
        return 2
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or "uv"
    for version in argv[1:] or list(images):
        try:
            seconds = build(images[version], uv)
        except FileNotFoundError as err:
            print(f"image {version}: {err}", file=sys.stderr)
            return 1
        if seconds is not None:
            print(f"image {version}: built {images[version].venv_dir} in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
