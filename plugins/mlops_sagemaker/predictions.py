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
from airflow.providers.amazon.aws.hooks.s3 import S3Hook

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

    category = "data"


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
    input_bucket: str
    input_key: str
    output_bucket: str
    output_key: str

    @property
    def output_name(self) -> str:
        return self.name + OUTPUT_SUFFIX


def _folder(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b/")``: a prefix that matches a whole folder."""
    bucket, prefix = S3Hook.parse_s3_url(uri)
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
    return f"{shown}, ... ({more} more)" if more > 0 else shown


# -- inputs ------------------------------------------------------------------------------------


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


def _predictions_folder(predictions_uri: str, ds: str) -> tuple[str, str]:
    bucket, prefix = _folder(predictions_uri)
    # Everything under this folder that the run does not write is deleted: it must be the
    # run date's own partition, never the table's root.
    if not prefix.endswith(f"ds={ds}/"):
        raise PredictionCheckFailed(
            f"predictions_uri {predictions_uri} must be the run date's partition folder, "
            f".../ds={ds}/",
            category="config",
        )
    return bucket, prefix


def _parts(manifest: Mapping[str, Any], transform_output_uri: str) -> list[_Part]:
    _, data_prefix = _folder(manifest["data_uri"])
    output_bucket, output_prefix = _folder(transform_output_uri)
    parts = []
    for uri in part_uris(manifest):
        bucket, key = S3Hook.parse_s3_url(uri)
        name = key.removeprefix(data_prefix)  # SageMaker keeps the path below its input prefix
        parts.append(_Part(name, bucket, key, output_bucket, output_prefix + name + OUTPUT_SUFFIX))
    return parts


# -- checks ------------------------------------------------------------------------------------


def _check_outputs_exist(s3: Any, transform_output_uri: str, parts: list[_Part], hint: str) -> None:
    bucket, prefix = _folder(transform_output_uri)
    existing = set(_list_keys(s3, bucket, prefix))
    missing = pa.array([p.output_name for p in parts if p.output_key not in existing], pa.string())
    if len(missing):
        raise PredictionCheckFailed(
            f"The transform output {transform_output_uri} lacks {len(missing)} of {len(parts)} "
            f"output objects: {_examples(missing)}. {hint}"
        )


def _parse_output(body: bytes, part: _Part, key: pa.Field) -> pa.Table:
    """The output's ``key,prediction,probability`` lines: the key typed, the rest as text."""
    types = {key.name: key.type, "prediction": pa.string(), "probability": pa.string()}
    if not body.strip():  # pyarrow refuses an empty CSV; an empty output has no rows
        return pa.schema(types.items()).empty_table()
    try:
        return pacsv.read_csv(
            io.BytesIO(body),
            read_options=pacsv.ReadOptions(column_names=list(types)),
            convert_options=csv_convert_options(types),
        )
    except pa.ArrowInvalid as err:
        raise PredictionCheckFailed(
            f"Transform output {part.output_name} is not 'key,prediction,probability' CSV: "
            f"{err}. Check the transform's DataProcessing (JoinSource=Input, OutputFilter "
            '"$[0,-2,-1]") and that the model answers text/csv "prediction,probability" lines.'
        ) from err


def _check_keys(part: _Part, inputs: pa.Array, outputs: pa.Array, hint: str) -> None:
    missing = inputs.filter(pc.invert(pc.is_in(inputs, value_set=outputs)))
    foreign = outputs.filter(pc.invert(pc.is_in(outputs, value_set=inputs)))
    if len(inputs) == len(outputs) and not len(missing) and not len(foreign):
        return
    found = [f"missing keys: {_examples(missing)}"] if len(missing) else []
    if len(foreign):
        found.append(f"keys not in the input: {_examples(foreign)}")
    raise PredictionCheckFailed(
        f"Transform output {part.output_name} has {len(outputs)} rows, input {part.name} has "
        f"{len(inputs)}; {'; '.join(found) or 'some keys are repeated'}. {hint}"
    )


def _check_rows(
    raw: pa.Table, bad: pa.ChunkedArray, part: _Part, column: str, problem: str, fix: str
) -> None:
    """Fail when any row is ``bad``, naming the count and example keys with their value."""
    count = pc.sum(bad).as_py() or 0
    if count:
        keys = raw.column(0).filter(bad).slice(0, MAX_EXAMPLES).to_pylist()
        values = raw.column(column).filter(bad).slice(0, MAX_EXAMPLES).to_pylist()
        examples = ", ".join(f"{k} ({v!r})" for k, v in zip(keys, values, strict=True))
        raise PredictionCheckFailed(
            f"Transform output {part.output_name} has {count} row(s) whose {column} {problem}: "
            f"keys {examples}{', ...' if count > MAX_EXAMPLES else ''}. {fix}"
        )


def _typed_output(raw: pa.Table, part: _Part) -> pa.Table:
    """Check the values; return ``key, probability`` (float64), ``predicted_label`` (int64)."""
    text = raw.column("probability")
    is_number = pc.fill_null(pc.match_substring_regex(text, _NUMBER), False)
    probability = pc.cast(pc.if_else(is_number, text, pa.scalar(None, pa.string())), pa.float64())
    in_range = pc.and_(pc.greater_equal(probability, 0.0), pc.less_equal(probability, 1.0))
    fix = "The model must answer 'prediction,probability' per record (inference.py output_fn)."
    bad = pc.invert(pc.fill_null(in_range, False))
    _check_rows(raw, bad, part, "probability", "is not a number in [0, 1]", fix)
    label = raw.column("prediction")
    is_label = pc.fill_null(pc.is_in(label, value_set=pa.array(["0", "1"])), False)
    _check_rows(raw, pc.invert(is_label), part, "prediction", "is not 0 or 1", fix)
    return pa.table(
        {
            raw.column_names[0]: raw.column(0),
            "probability": probability,
            "predicted_label": pc.cast(label, pa.int64()),
        }
    )


def _check_unique(keys: list[pa.Array], parts: list[_Part], key: pa.Field) -> None:
    counts = pc.value_counts(pa.chunked_array(keys, type=key.type))
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    if not len(repeated):
        return
    values = repeated.field("values").slice(0, MAX_EXAMPLES)
    times = repeated.field("counts").slice(0, MAX_EXAMPLES)
    shown = ", ".join(
        f"{v} ({n} times)" for v, n in zip(values.to_pylist(), times.to_pylist(), strict=True)
    )
    holders = [
        p.output_name
        for p, k in zip(parts, keys, strict=True)
        if pc.any(pc.is_in(k, value_set=values)).as_py()
    ]
    raise PredictionCheckFailed(
        f"{len(repeated)} key(s) appear more than once across the transform output: {shown}"
        f"{', ...' if len(repeated) > MAX_EXAMPLES else ''} (in {', '.join(holders)}). Each "
        f"{key.name} must identify one record: make the inference query return each key once."
    )


def _check_parts(
    s3: Any, manifest: Mapping[str, Any], parts: list[_Part], key: pa.Field, hint: str
) -> tuple[int, int]:
    """Check every output part against its input part; return (rows, positive predictions)."""
    keys: list[pa.Array] = []  # one array per part: the whole output's keys, compactly
    rows = positives = 0
    for part in parts:
        inputs = read_part(_get(s3, part.input_bucket, part.input_key), manifest).column(0)
        raw = _parse_output(_get(s3, part.output_bucket, part.output_key), part, key)
        _check_keys(part, inputs.combine_chunks(), raw.column(0).combine_chunks(), hint)
        typed = _typed_output(raw, part)
        keys.append(typed.column(0).combine_chunks())
        rows += typed.num_rows
        positives += pc.sum(typed.column("predicted_label")).as_py() or 0
        del inputs, raw, typed  # one part in memory at a time
    _check_unique(keys, parts, key)
    return rows, positives


# -- publishing --------------------------------------------------------------------------------


def _predictions_table(typed: pa.Table, key: pa.Field, arn: str, run_date: dt.date) -> pa.Table:
    rows = typed.num_rows
    schema = pa.schema(
        [
            key,
            pa.field("probability", pa.float64()),
            pa.field("predicted_label", pa.int64()),
            pa.field("model_package_arn", pa.string()),
            pa.field("run_date", pa.date32()),
        ]
    )
    arrays = [
        typed.column(0),
        typed.column("probability"),
        typed.column("predicted_label"),
        pa.repeat(pa.scalar(arn, pa.string()), rows),
        pa.repeat(pa.scalar(run_date, pa.date32()), rows),
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def _parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="snappy")
    return buffer.getvalue()


def _publish(s3: Any, parts: list[_Part], key: pa.Field, summary: PredictionSummary) -> None:
    """Write one Parquet file per part, delete what a previous run left, write the manifest."""
    bucket, prefix = _folder(summary.output_uri)
    manifest_key = prefix + MANIFEST_NAME
    s3.delete_object(Bucket=bucket, Key=manifest_key)  # never describes a half-written folder
    run_date = dt.date.fromisoformat(summary.ds)
    written = {manifest_key}
    for part in parts:
        raw = _parse_output(_get(s3, part.output_bucket, part.output_key), part, key)
        table = _predictions_table(
            _typed_output(raw, part), key, summary.model_package_arn, run_date
        )
        target = f"{prefix}{part.name.removesuffix('.csv.gz')}.parquet"
        s3.put_object(Bucket=bucket, Key=target, Body=_parquet_bytes(table))
        written.add(target)
        log.info("Wrote s3://%s/%s: %d predictions", bucket, target, table.num_rows)
    stale = sorted(set(_list_keys(s3, bucket, prefix)) - written)
    if stale:
        _delete(s3, bucket, stale)
        log.info("Deleted %d object(s) of a previous run: %s", len(stale), stale)
    content = {
        "rows": summary.rows,
        "parts": summary.parts,
        "model_package_arn": summary.model_package_arn,
        "ds": summary.ds,
        "positive_rate": summary.positive_rate,
    }
    body = json.dumps(content, indent=2, sort_keys=True).encode()
    s3.put_object(Bucket=bucket, Key=manifest_key, Body=body)


def check_and_publish(
    s3: Any,
    *,
    manifest: Mapping[str, Any],
    transform_output_uri: str,
    predictions_uri: str,
    model_package_arn: str,
    ds: str,
    key_column: str,
) -> PredictionSummary:
    """Check a batch transform's output against its csv.gz input; only then publish Parquet.

    :param s3: a boto3 S3 client (``S3Hook(...).get_conn()``).
    :param manifest: the csv.gz extraction's manifest (:func:`mlops_sagemaker.extract.
        extract_to_s3`); its first column is the key.
    :param transform_output_uri: the transform's ``S3OutputPath``: ``part-NNNNN.csv.gz.out``
        objects of ``key,prediction,probability`` lines.
    :param predictions_uri: the run date's partition, ``s3://.../predictions/ds=<ds>/``;
        whatever else is in it afterwards is deleted.
    :param model_package_arn: the model that made the predictions (a column of every row).
    :param ds: the run date, ``YYYY-MM-DD`` (the ``run_date`` column).
    :param key_column: the key's name; must be the extraction's first column.
    :returns: rows, parts, the partition's URI, the model, ``ds`` and the share of label 1.
    :raises PredictionCheckFailed: a check failed (nothing was written), or the arguments do
        not fit together (a parquet extraction, another key, a folder that is not ``ds=<ds>``).
    """
    dt.date.fromisoformat(ds)  # a malformed ds fails before anything is read
    key = _key_field(manifest, key_column)
    bucket, prefix = _predictions_folder(predictions_uri, ds)
    parts = _parts(manifest, transform_output_uri)
    hint = _RERUN_HINT.format(data_uri=manifest["data_uri"], output_uri=transform_output_uri)
    _check_outputs_exist(s3, transform_output_uri, parts, hint)
    rows, positives = _check_parts(s3, manifest, parts, key, hint)
    summary = PredictionSummary(
        rows=rows,
        parts=len(parts),
        output_uri=f"s3://{bucket}/{prefix}",
        model_package_arn=model_package_arn,
        ds=ds,
        positive_rate=positives / rows if rows else 0.0,
    )
    _publish(s3, parts, key, summary)
    log.info("Published %d predictions in %d part(s) to %s", rows, len(parts), summary.output_uri)
    return summary
