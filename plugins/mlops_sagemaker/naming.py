"""SageMaker resource names and S3 locations derived from use case + run date.

Names follow ``<short_name>-<YYYYMMDD>-<step>-<fingerprint>-<attempt>``:

* the fingerprint is a hash of the job request (and so of its inputs): re-running a task with
  the same inputs finds the job it already ran instead of starting a copy, while new inputs
  (a re-extraction that changed the data, a new code version) get a new name;
* the attempt is one base-36 character, bumped only when the previous job of the same name
  failed or was stopped, because SageMaker never frees a job name.

Every name fits SageMaker's limits (63 characters; tuning jobs 32).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from mlops_sagemaker.failures import ClassifiedError

MAX_NAME = 63
MAX_TUNING_NAME = 32
_ATTEMPTS = "123456789abcdefghijklmnopqrstuvwxyz"
_NAME_RULE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")

STEP_CODES = {
    "split": "prep",
    "baseline": "base",  # presto_unload: one instance over the sharded split's outputs
    "tuning": "hpo",
    "evaluation": "eval",
    "transform": "bt",
}


def fingerprint(payload: Any, length: int = 6) -> str:
    """A short, stable hex hash of a JSON-serialisable payload (key order does not matter)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def job_base_name(short_name: str, ds_nodash: str, step: str, request_fingerprint: str) -> str:
    """The attempt-less part of a job name; ``attempt_name`` completes it."""
    return f"{short_name}-{ds_nodash}-{STEP_CODES[step]}-{request_fingerprint}"


class NamingError(ClassifiedError):
    """No valid SageMaker name is left for a request (permanent: a retry gets the same name)."""

    category = "request"


def attempt_name(base_name: str, attempt: int, limit: int = MAX_NAME) -> str:
    """``base_name`` plus the attempt character; ``NamingError`` if the attempts are used up or
    the name does not fit the API limits."""
    if not 1 <= attempt <= len(_ATTEMPTS):
        raise NamingError(
            f"{base_name}: attempt {attempt} is past the {len(_ATTEMPTS)} allowed for one run "
            "date and input; investigate the failures before clearing the task again"
        )
    name = f"{base_name}-{_ATTEMPTS[attempt - 1]}"
    if len(name) > limit or not _NAME_RULE.match(name):
        raise NamingError(f"SageMaker name {name!r} breaks the naming rule or limit {limit}")
    return name


def attempt_of(base_name: str, name: str) -> int | None:
    """The attempt number of ``name`` if it is an attempt of ``base_name``, else None."""
    if not name.startswith(base_name + "-") or len(name) != len(base_name) + 2:
        return None
    index = _ATTEMPTS.find(name[-1])
    return index + 1 if index >= 0 else None


@dataclass(frozen=True)
class RunPaths:
    """The S3 layout of one pipeline run: s3://<bucket>/<prefix>/<use_case>/<pipeline>/<ds>/."""

    bucket: str
    prefix: str
    use_case: str
    pipeline: str
    ds: str

    @property
    def run_key(self) -> str:
        """Key prefix of the run (no trailing slash)."""
        return f"{self.prefix}/{self.use_case}/{self.pipeline}/{self.ds}"

    def key(self, step: str, *parts: str) -> str:
        """Key under the step's folder."""
        return "/".join([self.run_key, step, *parts])

    def uri(self, step: str, *parts: str) -> str:
        """``s3://`` URI under the step's folder (a trailing ``""`` part gives a trailing slash)."""
        return f"s3://{self.bucket}/{self.key(step, *parts)}"


def code_key(prefix: str, use_case: str, code_version: str, filename: str) -> str:
    """Content-addressed key of step code: shared by all run dates, immutable once written."""
    return f"{prefix}/{use_case}/code/{code_version}/{filename}"
