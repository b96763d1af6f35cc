"""Serving handlers for the RandomForest model: ``model_fn``, ``input_fn``, ``predict_fn``,
``output_fn``.

Loaded by the SageMaker scikit-learn serving container (the ``sagemaker-inference`` toolkit's
``Transformer``) for real-time endpoints and batch transform. It has no dependency on Airflow
or on the other step scripts.

Requests (``Content-Type``):

* ``text/csv``: one record per line. With a header row (detected because it names at least one
  feature) columns are picked by name and extra columns are ignored; without one, every line
  holds exactly the features in training order (what batch transform sends after
  ``InputFilter``).
* ``application/json``: a list of objects, a single object, ``{"instances": [...]}`` whose items
  are objects or lists in training order, or a list of such lists.
* ``application/jsonlines``: one object (or list in training order) per line.

Responses (``Accept``): ``text/csv`` (``prediction,probability`` per record, no header),
``application/json`` (``{"predictions": [{"prediction": 1, "probability": 0.83}, ...]}``, the
default) or ``application/jsonlines`` (one such object per line). ``probability`` is the
probability of the positive class; ``prediction`` is 1 when it reaches the model's decision
threshold (0.5, from ``model_metadata.json``).

A bad request raises :class:`InferenceRequestError`, whose message names the problem (missing
feature, wrong column count, non-numeric value, unsupported content type). When the
``sagemaker-inference`` toolkit is installed (it is in the serving containers) the error derives
from its ``BaseInferenceToolkitError``, so the endpoint answers 4xx with that message instead
of a generic 500.

Speed: a well-formed request is parsed in one pass (NumPy's C reader for CSV, one JSON value
per line for JSON lines), checked with vectorised tests and serialised with one join. Anything
that pass is unsure about (quotes, blank lines, strings or booleans as values, a bad value) goes
through the record-by-record parser, which either gives the same rows or raises the precise
error; so answers and errors are those of the record-by-record code. Probabilities are written
as shortest round-trip doubles (Python's ``repr``). The forest gets a bare array (its column
names are checked against the features once, when the model loads, instead of on every
request), and requests of at most ``SINGLE_THREAD_MAX_ROWS`` rows are scored with ``n_jobs=1``:
starting the forest's thread pool costs more than it saves on them.
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
import json
import json.scanner
import math
import operator
from collections.abc import Callable, Sequence
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
# Up to this many rows a request is scored on one thread (see the module docstring).
SINGLE_THREAD_MAX_ROWS = 10_000

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
    # What predict_fn calls: views of the estimator sharing its fitted trees (_array_scorer).
    scorer: Any = field(init=False, repr=False)
    single_thread_scorer: Any = field(init=False, repr=False)
    takes_array: bool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.scorer, self.takes_array = _array_scorer(self.estimator, self.feature_columns)
        self.single_thread_scorer = _single_threaded(self.scorer)


# input_fn does not receive the model, but needs the feature names to read headers and JSON
# objects: model_fn records them here (one model per serving process, as in the containers).
_FEATURE_COLUMNS: list[str] | None = None
# The scanner json.loads decodes with (``json.decoder.JSONDecoder.raw_decode`` calls it),
# without json.loads' per-call checks: (text, index) -> (value, end), StopIteration if invalid.
_SCAN_JSON = json.scanner.make_scanner(json.JSONDecoder())


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


def _array_scorer(estimator: Any, features: list[str]) -> tuple[Any, bool]:
    """``(estimator to call, whether it takes a bare array)``.

    scikit-learn checks a frame's column names against the fitted ones on every call, which
    costs more than the whole prediction of a small request. When the fitted names are the
    features (checked here, once), a copy without ``feature_names_in_`` gets the bare array
    of the frame ``input_fn`` built in that order: the same numbers, the same trees. Fitted on
    an array, the estimator takes the array itself; other names keep the frame (and
    scikit-learn's error).
    """
    names = getattr(estimator, "feature_names_in_", None)
    if names is None:
        return estimator, True
    if list(names) != features:
        return estimator, False
    unnamed = copy.copy(estimator)  # shallow: shares the fitted trees
    del unnamed.feature_names_in_
    return unnamed, True


def _single_threaded(estimator: Any) -> Any:
    """A shallow copy with ``n_jobs=1`` (sharing the fitted trees), or the estimator itself."""
    if getattr(estimator, "n_jobs", None) in (None, 1):
        return estimator
    # A copy rather than switching n_jobs per request: requests may run in parallel threads.
    single = copy.copy(estimator)
    single.n_jobs = 1
    return single


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


def _record_values(features: Sequence[str]) -> Callable[[dict[str, Any]], Sequence[Any]]:
    """``record -> (values of features...)``; a KeyError when one is missing."""
    if len(features) == 1:  # itemgetter of one key returns the bare value
        only = features[0]
        return lambda record: (record[only],)
    return operator.itemgetter(*features)


def _records_matrix(records: Sequence[Any], features: Sequence[str]) -> np.ndarray | None:
    """The rows ``_rows_from_records`` would return, built in one pass; None when in doubt
    (mixed record kinds, a missing feature, a wrong length, a value that is not an int or a
    float, a non-finite value): ``_rows_from_records`` then names the problem."""
    kinds = set(map(type, records))
    try:
        if kinds == {dict}:
            rows: Sequence[Sequence[Any]] = list(map(_record_values(features), records))
        elif kinds == {list} and all(len(record) == len(features) for record in records):
            rows = records
        else:
            return None
    except KeyError:
        return None
    values = list(itertools.chain.from_iterable(rows))
    value_kinds = set(map(type, values))
    if not value_kinds <= {float, int}:  # bool, str, None, lists: the slow path decides
        return None
    if int in value_kinds:
        try:
            values = list(map(float, values))  # exactly _to_float's conversion of an int
        except OverflowError:
            return None
    matrix = np.array(values, dtype="float64").reshape(len(rows), len(features))
    return matrix if np.isfinite(matrix).all() else None


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


def _csv_matrix(text: str, features: Sequence[str]) -> np.ndarray | None:
    """The rows ``_parse_csv`` would return, parsed in one pass; None when in doubt.

    Only bodies where ``csv`` and ``str.split`` see the same cells qualify: no quotes, no NUL,
    no lone carriage return, no blank line. NumPy's reader accepts a subset of what ``float``
    accepts and rounds the same way, so anything it rejects (and any non-finite value) is left
    to ``_parse_csv``, which either reads it the same way or names the problem.
    """
    if '"' in text or "\x00" in text:
        return None
    if "\r" in text:
        text = text.replace("\r\n", "\n")
        if "\r" in text:
            return None
    lines = text.split("\n")
    if not lines[-1]:
        lines.pop()
    if not lines or "" in lines:
        return None
    first = [cell.strip() for cell in lines[0].split(",")]
    columns = None  # without a header: all, and loadtxt insists on the same count on every line
    if set(first) & set(features):
        if len(lines) == 1 or any(f not in first for f in features):
            return None
        lines, columns = lines[1:], [first.index(f) for f in features]
        if any(line.count(",") != len(first) - 1 for line in lines):
            return None
    try:
        matrix = np.loadtxt(
            lines, delimiter=",", comments=None, usecols=columns, dtype="float64", ndmin=2
        )
    except ValueError:
        return None
    if matrix.shape[1] != len(features) or not np.isfinite(matrix).all():
        return None
    return matrix


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


def _scan_jsonlines(text: str) -> list[Any] | None:
    """Every line decoded, or None unless each line is exactly one JSON value (no blank lines,
    no surrounding whitespace): the common case, without ``json.loads``' per-call cost."""
    records = []
    try:
        for line in text.splitlines():
            record, end = _SCAN_JSON(line, 0)
            if end != len(line):
                return None
            records.append(record)
    except (StopIteration, ValueError, RecursionError):
        return None
    return records


def _parse_jsonlines(text: str) -> list[Any]:
    scanned = _scan_jsonlines(text)
    if scanned is not None:
        return scanned
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
    features = list(_FEATURE_COLUMNS)
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
        matrix = _csv_matrix(text, features)
        if matrix is None:
            return pd.DataFrame(_parse_csv(text, features), columns=features, dtype="float64")
    else:
        records = _parse_json(text) if media == JSON else _parse_jsonlines(text)
        if not records:
            raise InferenceRequestError("request has no records")
        matrix = _records_matrix(records, features)
        if matrix is None:
            rows = _rows_from_records(records, features)
            return pd.DataFrame(rows, columns=features, dtype="float64")
    return pd.DataFrame(matrix, columns=features)


# --------------------------------------------------------------------------- predict / output


def predict_fn(input_data: pd.DataFrame, model: LoadedModel) -> pd.DataFrame:
    """Predict the class and the positive-class probability of every record."""
    frame = input_data
    if not isinstance(frame, pd.DataFrame):
        frame = pd.DataFrame(np.asarray(frame, dtype="float64"), columns=model.feature_columns)
    if frame.columns.tolist() != model.feature_columns:  # input_fn's frames never need this copy
        frame = frame[model.feature_columns]
    small = len(frame) <= SINGLE_THREAD_MAX_ROWS
    scorer = model.single_thread_scorer if small else model.scorer
    features = frame.to_numpy() if model.takes_array else frame
    probability = scorer.predict_proba(features)[:, model.positive_index]
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


# The start of each answer line by label (all our labels are 0 or 1); the probability's repr
# and the line end follow. json.dumps writes a finite float with float.__repr__ too.
_CSV_START = {0: "0,", 1: "1,"}
_JSON_START = {p: f'{{"prediction": {p}, "probability": ' for p in (0, 1)}


def _lines(
    starts: dict[int, str], template: str, labels: list[Any], values: list[float]
) -> list[str]:
    """``start + repr(value)`` per record (``template`` with ``str(int(label))`` for a label
    outside 0/1, as the record-by-record code wrote it)."""
    try:
        return list(map(operator.concat, map(starts.__getitem__, labels), map(repr, values)))
    except (KeyError, TypeError):
        return [template.format(int(p), q) for p, q in zip(labels, values)]


def output_fn(prediction: pd.DataFrame, accept: str) -> tuple[str, str]:
    """Serialize predictions; returns ``(body, content_type)`` as the toolkit expects."""
    media = _choose_accept(accept)
    labels = prediction["prediction"].tolist()
    probabilities = prediction["probability"].to_numpy(dtype="float64")
    values = probabilities.tolist()
    if not values:
        return ('{"predictions": []}' if media == JSON else ""), media
    if media == CSV:
        return "\n".join(_lines(_CSV_START, "{},{!r}", labels, values)) + "\n", media
    if not np.isfinite(probabilities).all():  # json writes NaN/Infinity where repr says nan/inf
        items = [{"prediction": int(p), "probability": q} for p, q in zip(labels, values)]
        if media == JSON:
            return json.dumps({"predictions": items}), media
        return "".join(json.dumps(item) + "\n" for item in items), media
    lines = _lines(_JSON_START, '{{"prediction": {}, "probability": {!r}', labels, values)
    if media == JSON:
        return '{"predictions": [' + "}, ".join(lines) + "}]}", media
    return "}\n".join(lines) + "}\n", media
