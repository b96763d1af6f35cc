"""The serving handler before issue 11's speed-ups: ``include/step_code/inference.py`` of
commit fa6248a, its code kept verbatim below this docstring as the oracle of
``test_step_inference_equivalence.py`` (the fast handler must parse, answer and reject every
request exactly as this record-by-record one does). Nothing else uses it; do not edit it: a
behaviour change belongs in ``inference.py`` and in the contract tests of
``test_step_pipeline.py``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd

MODEL_FILE = "model.joblib"
METADATA_FILE = "model_metadata.json"
CSV = "text/csv"
JSON = "application/json"
JSONLINES = "application/jsonlines"
SUPPORTED_CONTENT_TYPES = (CSV, JSON, JSONLINES)
_ALIASES = {
    "application/x-jsonlines": JSONLINES,
    "application/jsonl": JSONLINES,
    "application/x-ndjson": JSONLINES,
}
MAX_EXAMPLES = 5

try:  # The serving containers ship the toolkit; its base class carries the HTTP status code.
    from sagemaker_inference.errors import BaseInferenceToolkitError as _ToolkitError
except ImportError:  # pragma: no cover - plain Python without the toolkit

    class _ToolkitError(Exception):  # type: ignore[no-redef]
        """Stand-in with the toolkit's attributes (status_code, message, phrase)."""

        def __init__(self, status_code: int, message: str, phrase: str) -> None:
            self.status_code = status_code
            self.message = message
            self.phrase = phrase
            super().__init__(status_code, message, phrase)


class InferenceRequestError(_ToolkitError):
    """A request the model cannot answer; ``status_code`` is the HTTP status to return."""

    def __init__(self, message: str, status_code: int = 400, phrase: str = "Bad Request") -> None:
        super().__init__(status_code, message, phrase)

    def __str__(self) -> str:
        return self.message


@dataclass
class LoadedModel:
    """What ``model_fn`` returns: the estimator and how to feed it."""

    estimator: Any
    feature_columns: list[str]
    positive_index: int
    threshold: float
    metadata: dict[str, Any] = field(default_factory=dict)


# input_fn does not receive the model, but needs the feature names to read headers and JSON
# objects: model_fn records them here (one model per serving process, as in the containers).
_FEATURE_COLUMNS: list[str] | None = None


# --------------------------------------------------------------------------- model


def model_fn(model_dir: str) -> LoadedModel:
    """Load ``model.joblib`` and ``model_metadata.json`` written by ``train.py``."""
    global _FEATURE_COLUMNS
    path = Path(model_dir)
    missing = [name for name in (MODEL_FILE, METADATA_FILE) if not (path / name).is_file()]
    if missing:
        found = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
        raise FileNotFoundError(
            f"model directory {path} lacks {', '.join(missing)} (found: "
            f"{', '.join(found) or 'nothing'}); was the model trained by train.py?"
        )
    metadata = json.loads((path / METADATA_FILE).read_text(encoding="utf-8"))
    estimator = joblib.load(path / MODEL_FILE)
    features = [str(c) for c in metadata["feature_columns"]]
    positive_index = list(estimator.classes_).index(metadata.get("positive_class", 1))
    _FEATURE_COLUMNS = features
    return LoadedModel(
        estimator=estimator,
        feature_columns=features,
        positive_index=positive_index,
        threshold=float(metadata.get("decision_threshold", 0.5)),
        metadata=metadata,
    )


# --------------------------------------------------------------------------- input


def _media_type(content_type: str | None) -> str:
    """``"Text/CSV; charset=utf-8"`` -> ``"text/csv"``, with JSON-lines aliases folded."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return _ALIASES.get(media, media)


def _to_text(body: bytes | bytearray | str) -> str:
    if isinstance(body, str):
        return body
    try:
        return bytes(body).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InferenceRequestError(f"request body is not valid UTF-8: {exc}") from None


def _names(items: Sequence[str]) -> str:
    shown = ", ".join(items[:MAX_EXAMPLES])
    return shown + (f", ... ({len(items)} in all)" if len(items) > MAX_EXAMPLES else "")


def _to_float(value: Any, feature: str, record: int) -> float:
    where = f"feature {feature} in record {record}"
    if value is None:
        raise InferenceRequestError(f"missing value (null) for {where}")
    if isinstance(value, (bool, dict, list)):
        raise InferenceRequestError(f"non-numeric value {value!r} for {where}")
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise InferenceRequestError(f"empty value for {where}")
        try:
            number = float(text)
        except ValueError:
            raise InferenceRequestError(f"non-numeric value {value!r} for {where}") from None
    elif isinstance(value, (int, float)):
        number = float(value)
    else:
        raise InferenceRequestError(f"non-numeric value {value!r} for {where}")
    if not math.isfinite(number):
        raise InferenceRequestError(f"non-finite value {value!r} for {where}")
    return number


def _row_from_list(values: Sequence[Any], features: Sequence[str], record: int) -> list[float]:
    if len(values) != len(features):
        raise InferenceRequestError(
            f"record {record} has {len(values)} values; expected {len(features)} features in "
            f"training order: {', '.join(features)} (or name the columns: CSV header or JSON "
            "objects)"
        )
    return [_to_float(values[i], f, record) for i, f in enumerate(features)]


def _row_from_dict(values: dict[str, Any], features: Sequence[str], record: int) -> list[float]:
    missing = [f for f in features if f not in values]
    if missing:
        raise InferenceRequestError(
            f"record {record} is missing feature(s): {_names(missing)} (the model needs: "
            f"{', '.join(features)})"
        )
    return [_to_float(values[f], f, record) for f in features]


def _rows_from_records(records: Sequence[Any], features: Sequence[str]) -> list[list[float]]:
    rows = []
    for number, record in enumerate(records, start=1):
        if isinstance(record, dict):
            rows.append(_row_from_dict(record, features, number))
        elif isinstance(record, list):
            rows.append(_row_from_list(record, features, number))
        else:
            raise InferenceRequestError(
                f"record {number} must be an object of feature values or a list in training "
                f"order, got {type(record).__name__}"
            )
    return rows


def _parse_csv(text: str, features: Sequence[str]) -> list[list[float]]:
    lines = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    if not lines:
        raise InferenceRequestError("CSV body has no records")
    first = [cell.strip() for cell in lines[0]]
    if not set(first) & set(features):
        return [_row_from_list(row, features, n) for n, row in enumerate(lines, start=1)]
    missing = [f for f in features if f not in first]
    if missing:
        raise InferenceRequestError(
            f"CSV header is missing feature(s): {_names(missing)} (header: {', '.join(first)})"
        )
    if len(lines) == 1:
        raise InferenceRequestError("CSV body has a header row but no records")
    positions = {name: first.index(name) for name in features}
    rows = []
    for number, row in enumerate(lines[1:], start=1):
        if len(row) != len(first):
            raise InferenceRequestError(
                f"CSV record {number} has {len(row)} values but the header has {len(first)} columns"
            )
        rows.append([_to_float(row[positions[f]], f, number) for f in features])
    return rows


def _json_records(document: Any) -> list[Any]:
    if isinstance(document, dict):
        if "instances" not in document:
            return [document]
        instances = document["instances"]
        if not isinstance(instances, list):
            raise InferenceRequestError('"instances" must be a list of objects or lists')
        return instances
    if isinstance(document, list):
        if document and all(not isinstance(item, (dict, list)) for item in document):
            return [document]  # a single record as a flat list of values in training order
        return document
    raise InferenceRequestError(
        'JSON body must be an object, a list of objects or lists, or {"instances": [...]}'
    )


def _parse_json(text: str) -> list[Any]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InferenceRequestError(f"invalid JSON: {exc}") from None
    return _json_records(document)


def _parse_jsonlines(text: str) -> list[Any]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise InferenceRequestError(f"invalid JSON on line {number}: {exc}") from None
    return records


def input_fn(input_data: bytes | str, content_type: str) -> pd.DataFrame:
    """Deserialize a request into a float frame holding the features in training order."""
    if _FEATURE_COLUMNS is None:
        raise InferenceRequestError("no model loaded: model_fn must run first", 500, "Error")
    features = _FEATURE_COLUMNS
    media = _media_type(content_type)
    if media not in SUPPORTED_CONTENT_TYPES:
        raise InferenceRequestError(
            f"unsupported content type {content_type!r}; supported: "
            f"{', '.join(SUPPORTED_CONTENT_TYPES)}",
            415,
            "Unsupported Media Type",
        )
    text = _to_text(input_data)
    if not text.strip():
        raise InferenceRequestError("request body is empty")
    if media == CSV:
        rows = _parse_csv(text, features)
    else:
        records = _parse_json(text) if media == JSON else _parse_jsonlines(text)
        if not records:
            raise InferenceRequestError("request has no records")
        rows = _rows_from_records(records, features)
    return pd.DataFrame(rows, columns=list(features), dtype="float64")


# --------------------------------------------------------------------------- predict / output


def predict_fn(input_data: pd.DataFrame, model: LoadedModel) -> pd.DataFrame:
    """Predict the class and the positive-class probability of every record."""
    frame = input_data
    if not isinstance(frame, pd.DataFrame):
        frame = pd.DataFrame(np.asarray(frame, dtype="float64"), columns=model.feature_columns)
    probability = model.estimator.predict_proba(frame[model.feature_columns])[
        :, model.positive_index
    ]
    prediction = (probability >= model.threshold).astype("int64")
    return pd.DataFrame({"prediction": prediction, "probability": probability})


def _choose_accept(accept: str | None) -> str:
    candidates = [_media_type(part) for part in (accept or "").split(",")]
    for media in candidates:
        if media in SUPPORTED_CONTENT_TYPES:
            return media
        if media in ("", "*/*", "application/*"):
            return JSON
        if media == "text/*":
            return CSV
    raise InferenceRequestError(
        f"unsupported accept type {accept!r}; supported: {', '.join(SUPPORTED_CONTENT_TYPES)}",
        406,
        "Not Acceptable",
    )


def output_fn(prediction: pd.DataFrame, accept: str) -> tuple[str, str]:
    """Serialize predictions; returns ``(body, content_type)`` as the toolkit expects."""
    media = _choose_accept(accept)
    pairs = [
        (int(p), float(q))
        for p, q in prediction[["prediction", "probability"]].itertuples(index=False)
    ]
    if media == CSV:
        body = "".join(f"{p},{q!r}\n" for p, q in pairs)
    elif media == JSON:
        body = json.dumps({"predictions": [{"prediction": p, "probability": q} for p, q in pairs]})
    else:
        body = "".join(json.dumps({"prediction": p, "probability": q}) + "\n" for p, q in pairs)
    return body, media
