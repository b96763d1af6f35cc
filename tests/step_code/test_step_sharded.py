"""``preprocess.py`` sharded (``extract.mode: presto_unload``): each instance splits its share
of Presto's files; ``--merge-dir`` then gives the same baseline as one instance over all rows."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

SPLITS = ("train", "validation", "test")


def presto_files(tpch_orders: pa.Table, directory: Path, count: int) -> list[Path]:
    """The rows as Presto's Hive writer leaves them: ``<query id>_<uuid>`` files, no extension,
    plus hidden files a reader must skip."""
    directory.mkdir(parents=True)
    bounds = [tpch_orders.num_rows * i // count for i in range(count + 1)]
    files = []
    for index, (start, stop) in enumerate(zip(bounds, bounds[1:])):
        path = directory / f"20261207_000000_00001_abcde_{index:08d}-0000-4000-8000-000000000000"
        pq.write_table(tpch_orders.slice(start, stop - start), path)
        files.append(path)
    (directory / "_SUCCESS").write_bytes(b"")
    (directory / ".hidden").write_bytes(b"not data")
    return files


def shard_run(
    preprocess: ModuleType, argv: Callable[..., list[str]], files: list[Path], root: Path, host: str
) -> Path:
    """One instance: its share of the files under its own input dir, outputs under ``root``."""
    inputs = root / f"input-{host}"
    inputs.mkdir(parents=True)
    for path in files:
        shutil.copy(path, inputs / path.name)
    config = root / f"resourceconfig-{host}.json"
    config.write_text(json.dumps({"current_host": host, "hosts": ["algo-1", "algo-2", "algo-3"]}))
    preprocess.main(
        argv(inputs, root / "splits", "--shard-outputs", "--resource-config", str(config))
    )
    return root / "splits"


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, tpch_orders, step_module, preprocess_argv) -> dict[str, Path]:
    preprocess = step_module("preprocess")
    root = tmp_path_factory.mktemp("sharded")
    files = presto_files(tpch_orders, root / "presto", 4)
    preprocess.main(preprocess_argv(root / "presto", root / "whole"))
    # ShardedByS3Key: algo-1 gets files 0 and 3, algo-2 files 1 and 2... and algo-3 none.
    shard_run(preprocess, preprocess_argv, [files[0], files[3]], root, "algo-1")
    shard_run(preprocess, preprocess_argv, files[1:3], root, "algo-2")
    shard_run(preprocess, preprocess_argv, [], root, "algo-3")
    merge = ["--merge-dir", str(root / "splits")]
    preprocess.main(preprocess_argv(root / "unused", root / "merged", *merge)[2:])
    return {"root": root, "whole": root / "whole", "splits": root / "splits"}


def test_extensionless_presto_files_are_read_and_hidden_files_skipped(sharded) -> None:
    baseline = json.loads((sharded["whole"] / "baseline" / "baseline.json").read_text())
    rows = sum(len(pd.read_csv(sharded["whole"] / s / f"{s}.csv")) for s in SPLITS)
    assert baseline["rows"]["total"] == rows > 0


def test_each_instance_writes_its_own_files_and_no_baseline(sharded) -> None:
    for name in SPLITS:
        assert sorted(p.name for p in (sharded["splits"] / name).iterdir()) == [
            f"{name}-algo-1.csv",
            f"{name}-algo-2.csv",
        ]
    assert not (sharded["splits"] / "baseline").exists()


def test_the_shards_hold_the_unsharded_splits(sharded, cols) -> None:
    for name in SPLITS:
        whole = pd.read_csv(sharded["whole"] / name / f"{name}.csv")
        parts = [pd.read_csv(p) for p in sorted((sharded["splits"] / name).glob("*.csv"))]
        union = pd.concat(parts).sort_values(cols.key).reset_index(drop=True)
        pd.testing.assert_frame_equal(union, whole)


def test_the_merged_baseline_is_the_unsharded_one(sharded) -> None:
    whole = (sharded["whole"] / "baseline" / "baseline.json").read_bytes()
    merged = (sharded["root"] / "merged" / "baseline" / "baseline.json").read_bytes()
    assert merged == whole


def test_the_merge_checks_what_needs_every_row(sharded, step_module, preprocess_argv, tmp_path):
    preprocess = step_module("preprocess")
    copy = tmp_path / "splits"
    shutil.copytree(sharded["splits"], copy)
    train = copy / "train" / "train-algo-1.csv"
    frame = pd.read_csv(train)
    pd.concat([frame, frame.head(2)]).to_csv(train, index=False)  # keys in two shards' files
    with pytest.raises(preprocess.DataValidationError, match="must be unique"):
        preprocess.main(preprocess_argv(tmp_path, tmp_path / "out", "--merge-dir", str(copy))[2:])
