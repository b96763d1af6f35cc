"""Named types for what our tasks hand each other through XCom.

XCom stores JSON. Each payload is a frozen dataclass with ``as_xcom()`` (what the task returns)
and ``from_xcom()`` (what the next task reads, failing with the payload's name and the missing
field instead of a ``KeyError`` deep in a request builder). Airflow's own XCom serialisation of
custom classes is not used on purpose: it needs ``[core] allowed_deserialization_classes`` set
in every deployment that imports the package. The describe outputs the provider operators push
(``{"Processing": ...}``, ``{"Tuning": ...}``, ``{"Transform": ...}``) stay as AWS shapes them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Self

# The XCom key under which a task leaves the extra of the Asset event that its ``announce`` task
# (``dag_kit.announce_task``) adds; no value there means no event.
ASSET_EVENT_KEY = "asset_event"


class PayloadError(ValueError):
    """An XCom value does not have the fields of the payload a task expects."""


class Payload:
    """JSON round trip shared by every payload dataclass."""

    def as_xcom(self) -> dict[str, Any]:
        """The JSON-friendly dict pushed to XCom."""
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_xcom(cls, value: Mapping[str, Any] | None) -> Self:
        """Rebuild the payload from its XCom dict (unknown keys are ignored)."""
        if not isinstance(value, Mapping):
            raise PayloadError(f"{cls.__name__}: expected a mapping from XCom, got {value!r}")
        fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        required = {
            f.name
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - set(value))
        if missing:
            raise PayloadError(f"{cls.__name__}: XCom value lacks {', '.join(missing)}")
        return cls(**{k: v for k, v in value.items() if k in fields})


@dataclass(frozen=True)
class StagedCode(Payload):
    """Where the content-addressed step code is, and the image and region to run it with."""

    version: str
    scripts_uri: str
    sourcedir_uri: str
    image_uri: str
    region: str


@dataclass(frozen=True)
class BestModel(Payload):
    """The tuning job's best training job and its model artifact."""

    training_job_name: str
    objective: dict[str, Any]
    hyperparameters: dict[str, Any]
    model_data_url: str
    tuning_job_name: str
    training_jobs: dict[str, Any]


@dataclass(frozen=True)
class GateResult(Payload):
    """The quality gate's verdict on the evaluated model (only passing results exist)."""

    metric: str
    value: float
    threshold: float
    baseline: dict[str, Any]
    evaluation_uri: str


@dataclass(frozen=True)
class ExtractManifest(Payload):
    """What ``extract`` wrote (``extract.extract_to_s3``'s manifest, also in S3 next to the
    parts): format, where the parts are, rows, schema and provenance."""

    data_uri: str
    row_count: int
    parts: list[dict[str, Any]]
    columns: list[dict[str, str]]
    format: str = "parquet"
    part_count: int = 0
    sql_sha256: str = ""
    presto_query_id: str | None = None
    context_label: str = ""
    started_at: str = ""
    finished_at: str = ""

    @property
    def column_names(self) -> list[str]:
        """The extracted columns, in query order."""
        return [column["name"] for column in self.columns]

    def data_fingerprint(self) -> str:
        """A hash of the extracted data (rows, parts with their checksums, schema): a job fed
        with it changes name exactly when the data changes.

        Parts that Presto wrote itself (``unload.py``) have no sha256 and names that change
        with every write (``<query id>_<uuid>``): their content is identified by S3's ETag, and
        the names are left out, so a re-run that writes the same bytes keeps the jobs' names."""
        from mlops_sagemaker.naming import fingerprint

        parts: list[Any] = self.parts
        if parts and all(part.get("sha256") is None and "etag" in part for part in parts):
            parts = sorted([p["etag"], p["bytes"], p["rows"]] for p in parts)
        return fingerprint({"rows": self.row_count, "parts": parts, "schema": self.columns})
