"""Benchmark: batch transform throughput of the local SageMaker runtime on the TPC-H scoring input.

Usage: ``PYTHONPATH=.:plugins .venv/bin/python bench/batch_transform_throughput.py
[--scale-factor 1] [--rows N] [--max-concurrent-transforms 1] [--max-payload-mb 6]
[--handler PATH]`` (``--handler``: another inference.py to serve, for before/after figures).

1. Scoring input: every TPC-H order at ``--scale-factor`` (sf 1: 1.5 M) with the batch query's
   columns (key, then the features in training order), from ``tpch_orders_table`` of
   ``tests/step_code/test_images.py`` (DuckDB ``dbgen``), cut to ``--rows`` and written as the
   batch extraction writes it: gzip CSV parts of ``extract_chunk_rows`` (50,000) rows, no
   header.
2. Model: ``preprocess.py`` + ``train.py`` (75 trees, depth 10, ``n_jobs=-1``) on sf 0.01, run on
   the endpoint image's interpreter (``train_model`` of ``bench/_model_fixture.py``, as
   ``bench/inference_handler.py`` trains it).
3. The transform job: the DAG's own request (``inference_requests.transform_request``: CSV,
   ``SplitType=Line``, ``MultiRecord``, ``InputFilter $[1:]``, ``JoinSource=Input``,
   ``OutputFilter $[0,-2,-1]``) against the local AWS endpoint started in-process, timed from
   ``CreateTransformJob`` to ``Completed``; every key must come back once.
4. Where the time goes, measured during the job: the runtime's steps are wrapped with timers
   in this process (read + gunzip, line split, InputFilter, batching, requests, output split,
   join + OutputFilter, upload; the runtime's code is unchanged), and the model serves through
   ``bench_timed_inference.py``, added to the code bundle as ``SAGEMAKER_PROGRAM``: the
   handler's own functions, each call timed into a file, so a request splits into
   ``input_fn`` / ``predict_fn`` / ``output_fn`` and the rest (HTTP, toolkit, model server).
5. Baseline: one process (the image's interpreter) doing ``predict_proba`` on the same rows, all
   at once, with the model as trained and with ``n_jobs=1``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _model_fixture import FEATURES, KEY, endpoint_python, tpch_orders_table

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PART_ROWS = 50_000  # include/config/tpch_orders.yaml source.extract_chunk_rows
BUCKET = "bench"
ROLE = "arn:aws:iam::123456789012:role/bench"
ECR = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn"
# The model's SAGEMAKER_PROGRAM: the handler's functions, each call's seconds appended to a file.
TIMED_PROGRAM = """
import os, time
import inference
from inference import model_fn  # noqa: F401 - the toolkit looks it up here


def _timed(name, function):
    def call(*args):
        started = time.perf_counter()
        try:
            return function(*args)
        finally:
            with open(os.environ["BENCH_HANDLER_TIMINGS"], "a") as out:
                out.write(f"{name} {time.perf_counter() - started}\\n")
    return call


input_fn = _timed("input_fn", inference.input_fn)
predict_fn = _timed("predict_fn", inference.predict_fn)
output_fn = _timed("output_fn", inference.output_fn)
"""


# --- image side (run with the endpoint image's interpreter) ------------------------------------
def image_main(args: argparse.Namespace) -> None:
    """The baseline: predict_proba on every row at once; prints one JSON document."""
    import copy

    import joblib
    import pandas as pd

    frame = pd.concat(
        [pd.read_csv(p, header=None) for p in sorted(args.parts.glob("*.csv.gz"))],
        ignore_index=True,
    )
    features = frame.iloc[:, 1:].set_axis(FEATURES, axis=1).astype("float64")
    trained = joblib.load(args.model_dir / "model.joblib")
    single = copy.copy(trained)
    single.n_jobs = 1
    raw = {}
    for name, estimator in (("trained", trained), ("n_jobs=1", single)):
        started = time.perf_counter()
        estimator.predict_proba(features)
        raw[name] = time.perf_counter() - started
    print(json.dumps({"rows": len(features), "raw": raw, "n_jobs": trained.n_jobs}))


# --- host side ---------------------------------------------------------------------------------
def write_scoring_input(directory: Path, scale_factor: float, rows: int | None) -> int:
    """Gzip CSV parts (key, features; no header) as the batch extraction writes them."""
    import gzip

    import pyarrow.csv as pacsv

    table = tpch_orders_table(scale_factor).select([KEY, *FEATURES])
    if rows is not None:
        table = table.slice(0, rows)
    directory.mkdir(parents=True)
    for index, start in enumerate(range(0, table.num_rows, PART_ROWS)):
        path = directory / f"part-{index:05d}.csv.gz"
        with gzip.GzipFile(path, "wb", compresslevel=6, mtime=0) as gz:
            options = pacsv.WriteOptions(include_header=False)
            pacsv.write_csv(table.slice(start, PART_ROWS), gz, options)
    return table.num_rows


def train(python: Path, workdir: Path) -> Path:
    """The model dir (model.joblib + model_metadata.json), trained on the image's interpreter."""
    features = workdir / "train-orders.parquet"
    script = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
        "from _model_fixture import train_model;"
        "train_model(Path(sys.argv[2]), Path(sys.argv[3]))"
    )
    generate = [sys.executable, str(BENCH / "_model_fixture.py"), "--write-tpch", str(features)]
    subprocess.run(generate, check=True)
    command = [str(python), "-c", script, str(BENCH), str(features), str(workdir / "train")]
    subprocess.run(command, check=True, capture_output=True)
    return workdir / "train" / "model"


class StepClock:
    """Timers around the runtime's transform steps (the runtime itself is unchanged): every call
    of a wrapped method is recorded as ``(step, thread, start, end)``."""

    STEPS = ("_transform_object", "_split", "_batches", "_invoke", "_split_output", "_assemble")

    def __init__(self) -> None:
        self.events: list[tuple[str, int, float, float]] = []
        self._undo: list[tuple[Any, str, Any]] = []

    def _wrap(self, owner: Any, name: str, step: str) -> None:
        import threading

        original = getattr(owner, name)
        events = self.events

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                events.append((step, threading.get_ident(), started, time.perf_counter()))

        self._undo.append((owner, name, original))
        setattr(owner, name, timed)

    def __enter__(self) -> StepClock:
        from local_stack.sagemaker_runtime import _serving, transform

        for step in (*self.STEPS, "_upload", "_start_servers"):
            self._wrap(transform._TransformRun, step, step)
        self._wrap(_serving.ModelServer, "invoke", "http")
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)

    def total(self, step: str) -> float:
        """Seconds summed over every call of ``step``."""
        return sum(end - start for name, _, start, end in self.events if name == step)

    def between(self, first: str, first_edge: int, second: str, second_edge: int) -> float:
        """Summed over input objects: from an edge (0 start, 1 end) of ``first`` to an edge of
        the next ``second`` on the same thread (the steps of one object run in order)."""
        spent = 0.0
        for name, thread, *edges in self.events:
            if name != first:
                continue
            later = [
                e[2 + second_edge]
                for e in self.events
                if e[0] == second and e[1] == thread and e[2] >= edges[first_edge]
            ]
            spent += min(later) - edges[first_edge]
        return spent


def put_model_and_input(
    s3: Any, sm: Any, model_dir: Path, parts: Path, timings: Path, args: Any
) -> None:
    """model.tar.gz, the step-code bundle (with ``--handler`` as its inference.py) and the input
    parts in S3; the SageMaker model, serving through the timing wrapper."""
    import io
    import tarfile

    from mlops_sagemaker.code_bundle import build_bundle

    s3.create_bucket(Bucket=BUCKET)
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w:gz") as tar:
        for name in ("model.joblib", "model_metadata.json"):
            tar.add(model_dir / name, arcname=name)
    s3.put_object(Bucket=BUCKET, Key="model/model.tar.gz", Body=packed.getvalue())
    code_dir = model_dir.parent / "code"
    shutil.copytree(ROOT / "include" / "step_code", code_dir, ignore=shutil.ignore_patterns("__*"))
    shutil.copyfile(args.handler, code_dir / "inference.py")
    (code_dir / "bench_timed_inference.py").write_text(TIMED_PROGRAM)
    code = build_bundle(code_dir).tarball
    s3.put_object(Bucket=BUCKET, Key="code/sourcedir.tar.gz", Body=code)
    for part in sorted(parts.iterdir()):
        s3.put_object(Bucket=BUCKET, Key=f"input/{part.name}", Body=part.read_bytes())
    sm.create_model(
        ModelName="bench-model",
        ExecutionRoleArn=ROLE,
        PrimaryContainer={
            "Image": f"{ECR}:{args.image_version}-cpu-py3",
            "ModelDataUrl": f"s3://{BUCKET}/model/model.tar.gz",
            "Environment": {
                "SAGEMAKER_PROGRAM": "bench_timed_inference.py",
                "SAGEMAKER_SUBMIT_DIRECTORY": f"s3://{BUCKET}/code/sourcedir.tar.gz",
                "BENCH_HANDLER_TIMINGS": str(timings),
            },
        },
    )


def run_job(workdir: Path, parts: Path, model_dir: Path, args: argparse.Namespace) -> dict:
    """Run the DAG's transform request on the local runtime; returns its figures."""
    import boto3

    from local_stack.aws_endpoint import LocalAwsEndpoint
    from mlops_sagemaker.inference_requests import transform_request

    with LocalAwsEndpoint(port=0, workdir=workdir / "aws") as endpoint:
        session = {"endpoint_url": endpoint.url, "region_name": "us-east-1"}
        session |= {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}
        s3, sm = boto3.client("s3", **session), boto3.client("sagemaker", **session)
        timings = workdir / "handler-timings.txt"
        put_model_and_input(s3, sm, model_dir, parts, timings, args)
        request = transform_request(
            short_name="bench",
            ds="1996-03-01",
            model_name="bench-model",
            input_uri=f"s3://{BUCKET}/input/",
            output_uri=f"s3://{BUCKET}/output/",
            data_fingerprint="bench",
            instance_type="ml.m5.large",
            instance_count=1,
            max_payload_mb=args.max_payload_mb,
            max_concurrent_transforms=args.max_concurrent_transforms,
            invocations_timeout_seconds=600,
            invocations_max_retries=0,
            kms_key_id="",
            volume_kms_key_id="",
            tags=[],
        )
        with StepClock() as clock:
            submitted = time.perf_counter()
            sm.create_transform_job(**request)
            job = _wait(sm, request["TransformJobName"])
            wall = time.perf_counter() - submitted
        keys = _output_keys(s3)
    handler = {"input_fn": 0.0, "predict_fn": 0.0, "output_fn": 0.0}
    for line in timings.read_text().splitlines():
        name, seconds = line.split()
        handler[name] += float(seconds)
    return {"wall": wall, "job": job, "clock": clock, "keys": keys, "handler": handler}


def _wait(sm: Any, name: str) -> dict:
    while True:
        job = sm.describe_transform_job(TransformJobName=name)
        if job["TransformJobStatus"] in ("Completed", "Failed", "Stopped"):
            if job["TransformJobStatus"] != "Completed":
                raise SystemExit(
                    f"transform job {job['TransformJobStatus']}: {job.get('FailureReason')}"
                )
            return job
        time.sleep(0.05)


def _output_keys(s3: Any) -> list[str]:
    """The first field (the key) of every output line."""
    keys: list[str] = []
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix="output/")
    for item in listing.get("Contents", []):
        body = s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
        keys.extend(line.split(b",", 1)[0].decode() for line in body.splitlines())
    return keys


def measure_on_image(python: Path, parts: Path, model_dir: Path) -> dict[str, Any]:
    """The baseline (``image_main``) on the image's interpreter."""
    from local_stack.sagemaker_runtime._serving_worker import SINGLE_THREADED

    command = [str(python), __file__, "--image-side", "--parts", str(parts)]
    command += ["--model-dir", str(model_dir)]
    env = {**os.environ, **SINGLE_THREADED}  # as the runtime starts its model servers
    env.pop("PYTHONPATH", None)
    measured = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return json.loads(measured.stdout.strip().splitlines()[-1])


def breakdown(clock: StepClock, handler: dict[str, float]) -> list[tuple[str, float]]:
    """``(step, seconds)`` in the order a record meets them."""
    http = clock.total("http")
    invoke = clock.total("_invoke")
    split_output = clock.total("_split_output")
    served = sum(handler.values())
    return [
        ("model server start-up", clock.total("_start_servers")),
        ("read object + gunzip", clock.between("_transform_object", 0, "_split", 0)),
        ("split into lines", clock.total("_split")),
        ("InputFilter $[1:] per record", clock.between("_split", 1, "_batches", 0)),
        ("mini-batches", clock.total("_batches")),
        ("requests, wall", clock.between("_batches", 1, "_assemble", 0)),
        ("  join records into a body", invoke - http - split_output),
        ("  HTTP + toolkit + model server", http - served),
        ("  handler input_fn", handler["input_fn"]),
        ("  handler predict_fn", handler["predict_fn"]),
        ("  handler output_fn", handler["output_fn"]),
        ("  split the answer into records", split_output),
        ("JoinSource + OutputFilter per record", clock.total("_assemble")),
        ("upload", clock.total("_upload")),
    ]


def report(args: argparse.Namespace, result: dict, image: dict, rows: int, parts: int) -> None:
    """Print throughput, the baseline ratio and the breakdown."""
    job, wall = result["job"], result["wall"]
    running = (job["TransformEndTime"] - job["TransformStartTime"]).total_seconds()
    best = min(image["raw"].values())
    print(
        f"batch transform on the local runtime: {rows:,} TPC-H rows (sf {args.scale_factor}) in "
        f"{parts} gzip CSV parts, MaxPayloadInMB {args.max_payload_mb}, "
        f"MaxConcurrentTransforms {args.max_concurrent_transforms}, image {args.image_version}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"transform: CreateTransformJob -> Completed {wall:7.2f} s = {rows / wall:9,.0f} rows/s "
        f"(TransformStartTime -> EndTime {running:.2f} s)"
    )
    for name, seconds in image["raw"].items():
        label = f"n_jobs={image['n_jobs']} as trained" if name == "trained" else name
        print(
            f"one process predict_proba ({label}): {seconds:7.2f} s = {rows / seconds:9,.0f} rows/s"
        )
    print(f"ratio {best / wall:.2f} (transform rows/s / faster one-process predict_proba rows/s)")
    steady = wall - result["clock"].total("_start_servers")
    print(
        f"without the model server start-up: {rows / steady:9,.0f} rows/s, ratio {best / steady:.2f}"
    )
    print("where the time goes (seconds; summed over parts and requests):")
    for step, seconds in breakdown(result["clock"], result["handler"]):
        print(f"  {step:44} {seconds:8.2f}  {seconds / wall:6.1%} of the job")


def main() -> None:
    """Build the input and the model, run the job, measure the baseline, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale-factor", type=float, default=1.0)
    parser.add_argument("--rows", type=int, default=None, help="first N orders (default: all)")
    parser.add_argument("--max-payload-mb", type=int, default=6)
    parser.add_argument("--max-concurrent-transforms", type=int, default=1)
    parser.add_argument(
        "--handler", type=Path, default=ROOT / "include" / "step_code" / "inference.py"
    )
    parser.add_argument("--image-side", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--parts", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.image_side:
        image_main(args)
        return
    python, args.handler = endpoint_python(), args.handler.resolve()
    args.image_version = python.parent.parent.name.removeprefix("sklearn-")
    with tempfile.TemporaryDirectory(prefix="bench-transform-") as tmp:
        work = Path(tmp)
        rows = write_scoring_input(work / "parts", args.scale_factor, args.rows)
        model_dir = train(python, work)
        result = run_job(work, work / "parts", model_dir, args)
        keys = result["keys"]
        if len(keys) != rows or len(set(keys)) != rows:
            raise SystemExit(f"{len(keys)} output lines ({len(set(keys))} keys) for {rows} rows")
        image = measure_on_image(python, work / "parts", model_dir)
        report(args, result, image, rows, len(list((work / "parts").iterdir())))


if __name__ == "__main__":
    main()
