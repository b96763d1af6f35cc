"""Benchmark: the serving handler (``include/step_code/inference.py``) against raw ``predict_proba``.

Usage (either interpreter; the measurement always runs on the endpoint image's)::

    .venv-images/sklearn-1.4-2/bin/python bench/inference_handler.py [--repeats 51]
    .venv/bin/python bench/inference_handler.py [--handler /tmp/inference_before.py]

The endpoint serves with the image of ``sagemaker.sklearn_framework_version`` in
``include/config/tpch_orders.yaml``; started on another interpreter, the script re-runs itself on
that image's venv. The TPC-H features come from ``tpch_orders_table`` of
``tests/step_code/test_images.py`` (DuckDB ``dbgen``, as the step-code tests get them), generated
with the host venv (the images have no DuckDB). ``preprocess.py`` splits them and ``train.py``
fits the RandomForest (75 trees, depth 10, ``n_jobs=-1`` as the training job does): the model
set-up shared with ``batch_transform_throughput.py`` (``_model_fixture.py``).

Payloads: the first 1,000 test rows as header-less CSV (what batch transform sends) and as JSON
lines, answered in the same format, and the first row alone as CSV. The handler is timed
through ``input_fn -> predict_fn -> output_fn`` with the body the ``sagemaker-inference`` toolkit
hands over (``str`` for ``text/csv``, ``bytes`` for JSON lines). Raw is ``predict_proba`` on a
ready float frame of the same rows (an array if the model was fit without column names): with
the model as trained (``n_jobs=-1``; the goal ratios), with ``n_jobs=1`` (the "overhead-only"
ratios take the faster of the two: what the handler adds, whatever thread count it picks) and,
for information, on a bare array without scikit-learn's per-call feature-name check.

Methods are interleaved in rotating order within every repeat, in two blocks (the ``n_jobs=-1``
calls with the handler, the single-threaded ones with the handler: on a busy machine a thread
pool slows down whatever runs right after it); figures are medians, ratios the median of the
per-repeat ratios. ``--handler`` times another copy of the handler (e.g. ``git show
HEAD:include/step_code/inference.py > /tmp/inference_before.py``) for before/after figures.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from _model_fixture import FEATURES, STEP_CODE, endpoint_python, train_model, write_tpch

ROWS = 1000


def load_handler(path: Path) -> ModuleType:
    """Import a copy of the serving script under its own name."""
    spec = importlib.util.spec_from_file_location("bench_inference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


def interleaved(methods: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each method, one list entry per repeat; every repeat runs each
    method once, in rotating order."""
    names = list(methods)
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:
        methods[name]()  # warm-up
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            methods[name]()
            times[name].append(time.perf_counter() - started)
    return times


def payloads(test: Any) -> dict[str, tuple[Any, str, Any]]:
    """``case -> (body as the toolkit passes it, content type, raw input)``; values are written
    with ``repr`` so raw and handler score exactly the same numbers."""
    frame = test[FEATURES].astype("float64").head(ROWS).reset_index(drop=True)
    csv = "".join(",".join(map(repr, row)) + "\n" for row in frame.to_numpy().tolist())
    jsonl = "".join(json.dumps(record) + "\n" for record in frame.to_dict(orient="records"))
    return {
        "csv_1000": (csv, "text/csv", frame),
        "jsonl_1000": (jsonl.encode(), "application/jsonlines", frame),
        "single_row": (csv.split("\n", 1)[0] + "\n", "text/csv", frame.head(1)),
    }


def probabilities(body: str, media: str) -> list[float]:
    """Positive-class probabilities from a CSV or JSON lines answer."""
    if media == "text/csv":
        return [float(line.split(",")[1]) for line in body.splitlines()]
    return [float(line.rsplit(": ", 1)[1].rstrip("}")) for line in body.splitlines()]


def measure(
    handler: ModuleType, model_dir: Path, test: Any, repeats: int
) -> tuple[dict[str, Any], Any]:
    """Seconds per call (per repeat) of raw and handler for every payload, and the model's own
    ``n_jobs``."""
    import numpy as np

    model = handler.model_fn(str(model_dir))
    trained = model.estimator
    single = copy.copy(trained)
    single.n_jobs = 1
    bare = copy.copy(single)  # for the information line: no per-call feature-name check
    by_name = hasattr(trained, "feature_names_in_")
    if by_name:
        del bare.feature_names_in_
    results = {}
    for case, (body, media, frame) in payloads(test).items():
        array = frame.to_numpy()
        raw_input = frame if by_name else array

        def handle(body: Any = body, media: str = media) -> tuple[str, str]:
            prediction = handler.predict_fn(handler.input_fn(body, media), model)
            return handler.output_fn(prediction, media)

        expected = single.predict_proba(raw_input)[:, model.positive_index]
        answer, answer_type = handle()
        got = np.array(probabilities(answer, answer_type))
        if got.shape != expected.shape or np.abs(got - expected).max() > 1e-12:
            raise SystemExit(f"{case}: the handler's probabilities differ from predict_proba")
        # Two blocks: on a busy machine the thread pool of an n_jobs=-1 call slows down what
        # runs next, so single-threaded methods are only interleaved among themselves.
        single_block = {
            "raw_single": lambda x=raw_input: single.predict_proba(x),
            "raw_array": lambda x=array: bare.predict_proba(x),
            "handler": handle,
        }
        threaded_block = {"raw_trained": lambda x=raw_input: trained.predict_proba(x)}
        results[case] = {
            "rows": len(frame),
            "single": interleaved(single_block, repeats),
            "threaded": interleaved({**threaded_block, "handler": handle}, repeats),
        }
    return results, trained.n_jobs


def summary(times: dict[str, Any]) -> dict[str, float]:
    """Medians per method, and medians over repeats of handler time / the same repeat's raw
    time (paired: robust to the machine's load changing during the run). ``slowdown`` is
    against the faster raw variant."""
    import numpy as np

    single = {k: np.array(v) for k, v in times["single"].items()}
    threaded = {k: np.array(v) for k, v in times["threaded"].items()}
    figures = {
        "raw_single": float(np.median(single["raw_single"])),
        "raw_trained": float(np.median(threaded["raw_trained"])),
        "handler": float(np.median(single["handler"])),
        "vs_single": float(np.median(single["handler"] / single["raw_single"])),
        "vs_trained": float(np.median(threaded["handler"] / threaded["raw_trained"])),
        "vs_array": float(np.median(single["handler"] / single["raw_array"])),
    }
    faster_single = figures["raw_single"] <= figures["raw_trained"]
    figures["slowdown"] = figures["vs_single"] if faster_single else figures["vs_trained"]
    return figures


def report(results: dict[str, Any], n_jobs: Any, handler_path: Path, repeats: int) -> None:
    """Print throughputs, times and the ratios: the goal's (against ``predict_proba`` of the
    model as trained) and the handler's own overhead (against the faster raw variant)."""
    import numpy
    import pandas
    import sklearn

    print(
        f"inference handler vs raw predict_proba: python {sys.version.split()[0]} "
        f"({sys.prefix}), scikit-learn {sklearn.__version__}, pandas {pandas.__version__}, "
        f"numpy {numpy.__version__}; handler {handler_path}; RandomForest 75 trees, depth 10, "
        f"n_jobs={n_jobs} as trained; {repeats} interleaved repeats, medians, ratios paired per "
        f"repeat; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}"
    )
    for case in ("csv_1000", "jsonl_1000"):
        r, rows = summary(results[case]), results[case]["rows"]
        print(
            f"{case:10} raw as trained (n_jobs={n_jobs}) {rows / r['raw_trained']:9,.0f} rows/s "
            f"| raw n_jobs=1 {rows / r['raw_single']:9,.0f} rows/s | handler "
            f"{rows / r['handler']:9,.0f} rows/s"
        )
        print(f"{case} ratio {1 / r['vs_trained']:.2f} (goal >= 0.8; handler / raw as trained)")
        print(
            f"{case} overhead-only ratio {1 / r['slowdown']:.2f} (handler / faster raw; "
            f"{1 / r['vs_array']:.2f} against a bare array without the per-call name check)"
        )
    r = summary(results["single_row"])
    print(
        f"single_row raw as trained (n_jobs={n_jobs}) {r['raw_trained'] * 1e3:7.3f} ms | raw "
        f"n_jobs=1 {r['raw_single'] * 1e3:7.3f} ms | handler {r['handler'] * 1e3:7.3f} ms"
    )
    print(f"single_row ratio {r['vs_trained']:.2f} (goal <= 1.3; handler time / raw as trained)")
    print(
        f"single_row overhead-only ratio {r['slowdown']:.2f} (handler / faster raw; "
        f"{r['vs_array']:.2f} against a bare array without the per-call name check)"
    )


def main() -> None:
    """Generate the data, train, and measure on the endpoint image's interpreter."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=51)
    parser.add_argument("--scale-factor", type=float, default=0.01)
    parser.add_argument("--handler", type=Path, default=STEP_CODE / "inference.py")
    parser.add_argument("--features", type=Path, help="TPC-H Parquet (default: generate it)")
    args = parser.parse_args()
    image_python = endpoint_python()
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        features = args.features
        if features is None:
            features = Path(tmp) / "orders.parquet"
            write_tpch(features, args.scale_factor)
        if Path(sys.prefix).resolve() != image_python.parent.parent.resolve():
            command = [str(image_python), __file__, "--repeats", str(args.repeats)]
            command += ["--handler", str(args.handler.resolve()), "--features", str(features)]
            sys.exit(subprocess.run(command, check=False).returncode)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            model_dir, test = train_model(features, Path(tmp) / "work")
        handler = load_handler(args.handler)
        results, n_jobs = measure(handler, model_dir, test, args.repeats)
    report(results, n_jobs, args.handler, args.repeats)


if __name__ == "__main__":
    main()
