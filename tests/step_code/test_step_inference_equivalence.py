"""The fast serving handler (``include/step_code/inference.py``) against the record-by-record one
it replaced (``reference_inference.py``, frozen): same frames, same errors, byte-identical
answers, on hand-picked and on seeded random requests; and the fast paths are really taken.

Answers are compared with forests trained with ``n_jobs=1``: a multi-threaded forest adds its
trees' votes in any order, so its last bits vary from call to call in either handler.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestClassifier
from tpch_features import FEATURES, LABEL

HERE = Path(__file__).resolve().parent
CSV, JSON, JSONLINES = "text/csv", "application/json", "application/jsonlines"
ACCEPTS = (CSV, JSON, JSONLINES)


@pytest.fixture(scope="module")
def reference() -> ModuleType:
    """The pre-issue-11 handler under a private module name."""
    spec = importlib.util.spec_from_file_location(
        "step_code_reference_inference", HERE / "reference_inference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fast(step_module: Callable[[str], ModuleType]) -> ModuleType:
    return step_module("inference")


@pytest.fixture(scope="module")
def channels(tmp_path_factory: pytest.TempPathFactory, tpch_frame: pd.DataFrame) -> Path:
    """train/ and validation/ channels (CSV with a header) cut from the TPC-H rows."""
    root = tmp_path_factory.mktemp("channels")
    validation = tpch_frame["orderkey"] % 5 == 0
    for name, rows in (("train", tpch_frame[~validation]), ("validation", tpch_frame[validation])):
        (root / name).mkdir()
        rows[["orderkey", *FEATURES, LABEL]].to_csv(root / name / f"{name}.csv", index=False)
    return root


def _train(
    step_module: Callable[[str], ModuleType], channels: Path, out: Path, n_jobs: str
) -> Path:
    step_module("train").main(
        [
            *("--n_estimators", "20", "--max_depth", "8", "--n_jobs", n_jobs),
            *("--feature_columns", ",".join(FEATURES), "--label_column", LABEL),
            *("--train", str(channels / "train"), "--validation", str(channels / "validation")),
            *("--model_dir", str(out / "model"), "--output_data_dir", str(out / "output")),
        ]
    )
    return out / "model"


@pytest.fixture(scope="module")
def sequential_model(
    tmp_path_factory: pytest.TempPathFactory,
    step_module: Callable[[str], ModuleType],
    channels: Path,
) -> Path:
    """A model dir whose forest scores on one thread: bit-reproducible probabilities."""
    return _train(step_module, channels, tmp_path_factory.mktemp("sequential"), "1")


@pytest.fixture(scope="module")
def parallel_model(
    tmp_path_factory: pytest.TempPathFactory,
    step_module: Callable[[str], ModuleType],
    channels: Path,
) -> Path:
    """A model dir as the training job writes it (``n_jobs=-1``)."""
    return _train(step_module, channels, tmp_path_factory.mktemp("parallel"), "-1")


@pytest.fixture(scope="module")
def rows(tpch_frame: pd.DataFrame) -> list[list[float]]:
    return tpch_frame[FEATURES].astype("float64").head(40).to_numpy().tolist()


# ----------------------------------------------------------------------------- requests

ODD_CELLS = ["-0", "1e3", "1E-3", ".5", "5.", "+1", "1_000", " 3 ", "\t4", "nan", "inf", "-inf"]
ODD_CELLS += ["", " ", "abc", "0x10", "١٢", "1e999", "12345678901234567890123", "True", "00"]
ODD_VALUES: list[Any] = [True, False, None, "1.5", "", "x", [1], {"a": 1}, 2**53 + 1, 10**400]
ODD_VALUES += [float("nan"), float("inf"), -0.0, 1e-320, 12345678901234567890]


def _csv_line(values: list[Any]) -> str:
    return ",".join(v if isinstance(v, str) else repr(v) for v in values)


def _json_dump(value: Any) -> str:
    try:
        return json.dumps(value)
    except ValueError:  # 10**400 and friends: still worth sending
        return str(value)


def fixed_requests(rows: list[list[float]]) -> list[tuple[str, str]]:
    """Hand-picked ``(body, content type)``: every accepted shape and every error."""
    plain = "".join(_csv_line(r) + "\n" for r in rows)
    header = ",".join(FEATURES) + "\n" + plain
    named = [dict(zip(FEATURES, r)) for r in rows]
    lines = "".join(json.dumps(r) + "\n" for r in named)
    shuffled = pd.DataFrame(rows, columns=FEATURES)[[*reversed(FEATURES)]]
    shuffled.insert(2, "key", [f"k{i}" for i in range(len(rows))])
    return [
        (plain, CSV),
        (plain.replace("\n", "\r\n"), CSV),
        (plain.rstrip("\n"), CSV),
        (header, CSV),
        (shuffled.to_csv(index=False), CSV),
        (" " + ",".join(FEATURES) + " \n" + plain, CSV),
        (plain.replace("\n", "\n\n", 1), CSV),
        ('"' + plain[1:], CSV),
        ("\ufeff" + plain, CSV),
        (",".join(FEATURES) + "\n", CSV),
        (",".join(FEATURES[:3]) + "\n1,2,3\n", CSV),
        ("1,2,3\n", CSV),
        ("1,0.1,abc,2,3\n", CSV),
        ("1,0.1,nan,2,3\n", CSV),
        ("1,0.1,2,2,3\r4,5,6,7,8\n", CSV),
        ("1,2,3,4,5\x00\n", CSV),
        (header.replace("\n", ",extra\n", 1), CSV),
        (",,,,\n" + plain, CSV),
        (json.dumps(named), JSON),
        (json.dumps(named[0]), JSON),
        (json.dumps({"instances": named}), JSON),
        (json.dumps({"instances": rows}), JSON),
        (json.dumps(rows), JSON),
        (json.dumps(rows[0]), JSON),
        (json.dumps([named[0], rows[1]]), JSON),
        (json.dumps({"instances": 5}), JSON),
        ("[]", JSON),
        ("{not json", JSON),
        ('"text"', JSON),
        (lines, JSONLINES),
        (lines.replace("\n", "\r\n"), JSONLINES),
        (lines.replace("\n", "\n\n"), JSONLINES),
        ("".join(json.dumps(r) + "\n" for r in rows), JSONLINES),
        (" " + lines, JSONLINES),
        (lines + "{broken\n", JSONLINES),
        (lines.replace("}\n", "},\n", 1), JSONLINES),
        ('{"a": "x\u2028y"}\n', JSONLINES),
        ("5\n", JSONLINES),
        (plain, "application/x-npy"),
        ("", CSV),
        ("  \n", JSONLINES),
    ]


def _random_record(rng: random.Random, rows: list[list[float]]) -> Any:
    row = list(rng.choice(rows))
    for index in range(len(row)):
        if rng.random() < 0.1:
            row[index] = rng.choice(ODD_VALUES)
        elif rng.random() < 0.1:
            row[index] = int(row[index])
    if rng.random() < 0.2:
        return row if rng.random() < 0.7 else row[:-1]
    record = dict(zip(FEATURES, row))
    if rng.random() < 0.1:
        del record[rng.choice(FEATURES)]
    if rng.random() < 0.2:
        record["extra"] = "zz"
    return record


def random_requests(rows: list[list[float]], count: int, seed: int = 11) -> list[tuple[str, str]]:
    """Seeded variations: odd cells and values, missing or extra fields, line endings."""
    rng = random.Random(seed)
    requests = []
    for _ in range(count):
        picked = [rng.choice(rows) for _ in range(rng.choice([1, 2, 7]))]
        kind = rng.choice([CSV, JSON, JSONLINES])
        if kind == CSV:
            cells = [
                [rng.choice(ODD_CELLS) if rng.random() < 0.08 else v for v in r] for r in picked
            ]
            lines = [_csv_line(r[: rng.choice([5, 5, 5, 4, 6])]) for r in cells]
            if rng.random() < 0.3:
                lines.insert(0, ",".join(rng.sample(FEATURES, len(FEATURES))))
            body = rng.choice(["\n", "\n", "\r\n", "\n\n"]).join(lines) + rng.choice(["", "\n"])
        else:
            records = [_random_record(rng, rows) for _ in picked]
            if kind == JSON:
                body = _json_dump(rng.choice([records, {"instances": records}, records[0]]))
            else:
                body = rng.choice(["\n", "\n", "\r\n"]).join(map(_json_dump, records)) + "\n"
        requests.append((body, kind))
    return requests


# ----------------------------------------------------------------------------- comparisons


def _outcome(module: ModuleType, body: bytes, content_type: str) -> tuple[Any, ...]:
    try:
        frame = module.input_fn(body, content_type)
    except Exception as exc:
        return ("error", type(exc).__name__, str(exc), getattr(exc, "status_code", None))
    return ("frame", frame)


def _assert_same_outcome(fast_result: tuple[Any, ...], reference_result: tuple[Any, ...]) -> None:
    assert fast_result[0] == reference_result[0], (fast_result, reference_result)
    if fast_result[0] == "error":
        assert fast_result == reference_result
        return
    got, expected = fast_result[1], reference_result[1]
    assert list(got.columns) == list(expected.columns)
    assert got.index.equals(expected.index)
    assert (got.dtypes == expected.dtypes).all()
    # Bit for bit (-0.0 and 0.0 differ here).
    assert np.array_equal(got.to_numpy().view("int64"), expected.to_numpy().view("int64"))


def test_requests_parse_and_fail_exactly_as_before(
    fast: ModuleType, reference: ModuleType, sequential_model: Path, rows: list[list[float]]
) -> None:
    fast.model_fn(str(sequential_model))
    reference.model_fn(str(sequential_model))
    requests = fixed_requests(rows) + random_requests(rows, 1500)
    outcomes = {"frame": 0, "error": 0}
    for body, content_type in requests:
        for payload in (body, body.encode("utf-8")):  # the toolkit decodes CSV/JSON only
            expected = _outcome(reference, payload, content_type)
            _assert_same_outcome(_outcome(fast, payload, content_type), expected)
            outcomes[expected[0]] += 1
    assert min(outcomes.values()) > 500, outcomes  # both kinds well represented


def test_answers_are_byte_identical(
    fast: ModuleType, reference: ModuleType, sequential_model: Path, rows: list[list[float]]
) -> None:
    fast_model = fast.model_fn(str(sequential_model))
    reference_model = reference.model_fn(str(sequential_model))
    answered = 0
    for body, content_type in fixed_requests(rows) + random_requests(rows, 300, seed=5):
        try:
            expected_frame = reference.input_fn(body, content_type)
        except Exception:
            continue
        expected_prediction = reference.predict_fn(expected_frame, reference_model)
        prediction = fast.predict_fn(fast.input_fn(body, content_type), fast_model)
        for accept in (*ACCEPTS, "*/*", "text/*"):
            expected = reference.output_fn(expected_prediction, accept)
            assert fast.output_fn(prediction, accept) == expected, (body[:200], accept)
        answered += 1
    assert answered > 100


@pytest.mark.parametrize(
    "probabilities",
    [
        [0.0, 1.0, 0.5, 1 / 3, 2 / 3, 1e-5, 5e-324, -0.0, 0.1 + 0.2],
        [float("nan"), 0.25],
        [0.75, float("inf")],
        [],
    ],
)
def test_output_fn_writes_what_the_record_by_record_code_wrote(
    fast: ModuleType, reference: ModuleType, probabilities: list[float]
) -> None:
    values = np.array(probabilities, dtype="float64")
    labels = (values >= 0.5).astype("int64")
    frames = [
        pd.DataFrame({"prediction": labels, "probability": values}),
        pd.DataFrame({"prediction": labels.astype("float64"), "probability": values}),
        pd.DataFrame({"prediction": labels * 3, "probability": values}),
    ]
    for frame in frames:
        for accept in ACCEPTS:
            assert fast.output_fn(frame, accept) == reference.output_fn(frame, accept)


def test_well_formed_requests_take_the_one_pass_parsers(
    fast: ModuleType,
    sequential_model: Path,
    rows: list[list[float]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The speed of the handler: no record-by-record work for the usual requests."""
    fast.model_fn(str(sequential_model))

    def record_by_record(*args: Any) -> None:
        raise AssertionError("the record-by-record parser ran")

    monkeypatch.setattr(fast, "_parse_csv", record_by_record)
    monkeypatch.setattr(fast, "_rows_from_records", record_by_record)
    plain = "".join(_csv_line(r) + "\n" for r in rows)
    named = [dict(zip(FEATURES, r)) for r in rows]
    requests = [
        (plain, CSV),
        (",".join(FEATURES) + "\n" + plain, CSV),
        (plain.replace("\n", "\r\n"), CSV),
        (json.dumps(named), JSON),
        (json.dumps({"instances": rows}), JSON),
        ("".join(json.dumps(r) + "\n" for r in named), JSONLINES),
        ("".join(json.dumps([int(v) for v in r]) + "\n" for r in rows), JSONLINES),
    ]
    for body, content_type in requests:
        assert len(fast.input_fn(body.encode(), content_type)) == len(rows)
    jsonlines = requests[5][0]
    assert fast._scan_jsonlines(jsonlines) == [json.loads(line) for line in jsonlines.splitlines()]


# ----------------------------------------------------------------------------- scoring


def test_scorers_share_the_trees_and_match_the_estimator(
    fast: ModuleType, parallel_model: Path, tpch_frame: pd.DataFrame
) -> None:
    model = fast.model_fn(str(parallel_model))
    estimator = model.estimator
    assert estimator.n_jobs == -1 and list(estimator.feature_names_in_) == FEATURES  # untouched
    assert model.takes_array and not hasattr(model.scorer, "feature_names_in_")
    assert model.scorer.n_jobs == -1 and model.single_thread_scorer.n_jobs == 1
    assert model.scorer.estimators_ is estimator.estimators_
    assert model.single_thread_scorer.estimators_ is estimator.estimators_
    features = tpch_frame[FEATURES].astype("float64")
    large = pd.concat([features] * (fast.SINGLE_THREAD_MAX_ROWS // len(features) + 1))
    for frame in (features.head(1), features.head(500), large.reset_index(drop=True)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no feature-name warning either way
            got = fast.predict_fn(frame, model)["probability"].to_numpy()
        expected = estimator.predict_proba(frame)[:, model.positive_index]
        # Tree votes are summed in parallel threads in any order: equal up to rounding.
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def _save_model(directory: Path, estimator: Any, features: list[str]) -> Path:
    directory.mkdir()
    joblib.dump(estimator, directory / "model.joblib")
    metadata = {"feature_columns": features, "positive_class": 1, "decision_threshold": 0.5}
    (directory / "model_metadata.json").write_text(json.dumps(metadata))
    return directory


def test_a_model_fitted_on_an_array_gets_arrays(
    fast: ModuleType, tmp_path: Path, tpch_frame: pd.DataFrame
) -> None:
    features = tpch_frame[FEATURES].astype("float64")
    forest = RandomForestClassifier(n_estimators=10, max_depth=6, random_state=0)
    forest.fit(features.to_numpy(), tpch_frame[LABEL].to_numpy())
    model = fast.model_fn(str(_save_model(tmp_path / "array", forest, FEATURES)))
    assert model.takes_array and model.scorer is model.estimator
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the old handler's frame made scikit-learn warn
        got = fast.predict_fn(features.head(50), model)["probability"].to_numpy()
    np.testing.assert_array_equal(got, forest.predict_proba(features.head(50).to_numpy())[:, 1])


def test_fitted_names_other_than_the_features_fail_as_before(
    fast: ModuleType, reference: ModuleType, tmp_path: Path, tpch_frame: pd.DataFrame
) -> None:
    reordered = [*reversed(FEATURES)]
    forest = RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0)
    forest.fit(tpch_frame[reordered].astype("float64"), tpch_frame[LABEL])
    directory = _save_model(tmp_path / "reordered", forest, FEATURES)
    model, reference_model = fast.model_fn(str(directory)), reference.model_fn(str(directory))
    assert not model.takes_array
    frame = tpch_frame[FEATURES].astype("float64").head(3)
    with pytest.raises(ValueError) as expected:
        reference.predict_fn(frame, reference_model)
    with pytest.raises(ValueError) as got:
        fast.predict_fn(frame, model)
    assert str(got.value) == str(expected.value)
