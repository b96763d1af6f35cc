"""Check a batch transform's output against its input and publish it as Parquet predictions.

Why CSV parts and ``JoinSource=Input``: SageMaker batch transform can split an input object into
records (``SplitType=Line``) and join each answer to its record (``DataProcessing``) only for CSV
and JSON lines, not for Parquet, so the extraction writes ``part-NNNNN.csv.gz`` parts (see
:mod:`mlops_sagemaker.extract`). The key stays the first column: ``InputFilter "$[1:]"`` drops it
from what the model sees, ``JoinSource=Input`` makes SageMaker append the model's
``prediction,probability`` to *its own* input record, and ``OutputFilter "$[0,-2,-1]"`` keeps
``key,prediction,probability``. Keys therefore never travel through the model, and nothing has
to match answers to rows by position. SageMaker writes one plain-text (not gzipped) object per
input object, ``<transform output>/part-NNNNN.csv.gz.out``, one line per input record.

What is checked before anything is published (:class:`PredictionCheckFailed` otherwise, naming
counts and up to five example keys): every input part has its output object; each output has
exactly the rows and keys of its input part; no key appears twice in the whole output;
``probability`` is a number in [0, 1] and ``prediction`` is 0 or 1. Memory is bounded by one
part plus the keys (an Arrow array per part, not Python objects): the output is read twice,
once to check it and once to convert it, so no more than one part is held at a time.

Why Parquet partitioned by ``ds`` (``.../predictions/ds=YYYY-MM-DD/part-NNNNN.parquet``): one
external table (Hive, Athena, Presto) over the ``predictions/`` prefix covers every run date,
with ``ds`` as its partition column (so the files hold ``run_date``, not a second ``ds``), and
a backfilled date overwrites only its own partition. A re-run writes byte-identical files,
deletes what the previous run left there and writes ``_manifest.json`` last (query engines skip
files starting with ``_``); the previous one is removed first, so a manifest always describes a
complete set of files.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mlops_sagemaker.extract import csv_convert_options, manifest_schema, part_uris, read_part
from mlops_sagemaker.failures import ClassifiedError

log = logging.getLogger(__name__)

OUTPUT_SUFFIX = ".out"  # SageMaker names each output object after its input object
MANIFEST_NAME = "_manifest.json"
MAX_EXAMPLES = 5
# A decimal number as Python's repr (and inference.py) writes it; rejects "nan", "inf", "".
_NUMBER = r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$"
_RERUN_HINT = (
    "The transform output does not match this run's extraction: re-run the batch transform for "
    "this date (clear its task) so that it reads {data_uri} and writes to {output_uri}."
)


class PredictionCheckFailed(ClassifiedError):
    """The batch transform's output failed a check; nothing was published (permanent)."""

    category = "data-validation"


@dataclasses.dataclass(frozen=True)
class PredictionSummary:
    """What :func:`check_and_publish` published: small, JSON-friendly, for XCom."""

    rows: int
    parts: int
    output_uri: str  # the s3://.../ds=YYYY-MM-DD/ prefix holding the Parquet files
    model_package_arn: str
    ds: str
    positive_rate: float

    def as_xcom(self) -> dict[str, Any]:
        """The summary as a plain dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_xcom(cls, data: Mapping[str, Any]) -> PredictionSummary:
        """The summary back from :meth:`as_xcom`'s dict (extra keys are ignored)."""
        return cls(**{field.name: data[field.name] for field in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class _Part:
    name: str  # part-00000.csv.gz
    input_uri: str
    output_key: str  # in the transform output bucket

    @property
    def output_name(self) -> str:
        return self.name + OUTPUT_SUFFIX


def _split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b/")``: a prefix that is a whole folder."""
    if not uri.startswith("s3://"):
        raise ValueError(f"Not an s3:// URI: {uri!r}")
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def _list_keys(s3: Any, bucket: str, prefix: str) -> Iterator[str]:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        yield from (obj["Key"] for obj in page.get("Contents", []))


def _get(s3: Any, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def _delete(s3: Any, bucket: str, keys: Sequence[str]) -> None:
    for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
        batch = [{"Key": key} for key in keys[start : start + 1000]]
        response = s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        if response.get("Errors"):
            raise RuntimeError(f"Could not delete from s3://{bucket}/: {response['Errors'][:3]}")


def _examples(values: pa.Array | pa.ChunkedArray) -> str:
    shown = ", ".join(str(v) for v in values.slice(0, MAX_EXAMPLES).to_pylist())
    more = len(values) - MAX_EXAMPLES
    return f"{shown} (and {more} more)" if more > 0 else shown


def _key_field(manifest: Mapping[str, Any], key_column: str) -> pa.Field:
    if manifest.get("format") != "csv.gz":
        raise PredictionCheckFailed(
            f"The extraction at {manifest.get('data_uri')} is {manifest.get('format')!r}, but "
            "batch transform reads csv.gz parts: extract with file_format='csv.gz'",
            category="config",
        )
    key = manifest_schema(manifest).field(0)
    if key.name != key_column:
        raise PredictionCheckFailed(
            f"The key column is {key_column!r}, but the extraction's first column is "
            f"{key.name!r}: the inference query must return the key first",
            category="config",
        )
    return key


def _parts(manifest: Mapping[str, Any], output_prefix: str) -> list[_Part]:
    _, data_prefix = _split_uri(manifest["data_uri"])
    parts = []
    for uri in part_uris(manifest):
        relative = _split_uri(uri)[1].rstrip("/").removeprefix(data_prefix)
        parts.append(_Part(relative, uri, f"{output_prefix}{relative}{OUTPUT_SUFFIX}"))
    return parts


def _check_outputs_exist(s3: Any, output_uri: str, parts: list[_Part], hint: str) -> None:
    bucket, prefix = _split_uri(output_uri)
    existing = set(_list_keys(s3, bucket, prefix))
    missing = [p.output_name for p in parts if p.output_key not in existing]
    if missing:
        raise PredictionCheckFailed(
            f"The transform output {output_uri} lacks {len(missing)} of {len(parts)} output "
            f"object(s): {', '.join(missing[:MAX_EXAMPLES])}"
            f"{' ...' if len(missing) > MAX_EXAMPLES else ''}. {hint}"
        )


def _parse_output(body: bytes, part: _Part, key: pa.Field) -> pa.Table:
    """The output's ``key,prediction,probability`` lines with the key typed, the rest as text."""
    names = [key.name, "prediction", "probability"]
    if not body.strip():
        return pa.table({n: pa.array([], t) for n, t in zip(names, [key.type] + [pa.string()] * 2)})
    try:
        return pacsv.read_csv(
            io.BytesIO(body),
            read_options=pacsv.ReadOptions(column_names=names),
            convert_options=csv_convert_options(
                {key.name: key.type, "prediction": pa.string(), "probability": pa.string()}
            ),
        )
    except pa.ArrowInvalid as err:
        raise PredictionCheckFailed(
            f"Transform output {part.output_name} is not 'key,prediction,probability' CSV: {err}. "
            "Check the transform's DataProcessing (JoinSource=Input, OutputFilter \"$[0,-2,-1]\") "
            "and that the model answers text/csv 'prediction,probability' lines."
        ) from err


def _typed_output(raw: pa.Table, part: _Part) -> pa.Table:
    """Check the prediction values; return ``key, probability (float64), predicted_label
    (int64)``."""
    keys, text = raw.column(0), raw.column("probability")
    is_number = pc.fill_null(pc.match_substring_regex(text, _NUMBER), False)
    probability = pc.cast(pc.if_else(is_number, text, pa.scalar(None, pa.string())), pa.float64())
    in_range = pc.and_(pc.greater_equal(probability, 0.0), pc.less_equal(probability, 1.0))
    bad = pc.invert(pc.fill_null(in_range, False))
    if pc.any(bad).as_py():
        examples = [f"{k} = {v!r}" for k, v in zip(keys.filter(bad).to_pylist(), text.filter(bad).to_pylist())]
        raise PredictionCheckFailed(
            f"Transform output {part.output_name} has {pc.sum(bad).as_py()} row(s) whose "
            f"probability is not a number in [0, 1], e.g. key {'; key '.join(examples[:MAX_EXAMPLES])}. "
            "The model must answer the positive class's probability (inference.py output_fn)."
        )
    label = raw.column("prediction")
    bad = pc.invert(pc.fill_null(pc.is_in(label, value_set=pa.array(["0", "1"])), False))
    if pc.any(bad).as_py():
        examples = [f"{k} = {v!r}" for k, v in zip(keys.filter(bad).to_pylist(), label.filter(bad).to_pylist())]
        raise PredictionCheckFailed(
            f"Transform output {part.output_name} has {pc.sum(bad).as_py()} row(s) whose "
            f"prediction is not 0 or 1, e.g. key {'; key '.join(examples[:MAX_EXAMPLES])}. "
            "The model must answer a 0/1 label (inference.py output_fn)."
        )
    return pa.table(
        {
            raw.column_names[0]: keys,
            "probability": probability,
            "predicted_label": pc.cast(label, pa.int64()),
        }
    )
