"""The TPC-H use case's column names, read from ``include/config/tpch_orders.yaml``.

One source for the step-code tests and the benches (``import tpch_features``). Both also run on
the image venvs (Python 3.9 for ``1.2-1``), not all of which have PyYAML, so the config's
``dataset`` section is read with the standard library: its ``key_column`` and ``label_column``
scalars and its ``feature_columns`` block list (``- name`` lines), in training order.
"""

from __future__ import annotations

import re
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[2] / "include" / "config" / "tpch_orders.yaml"


def dataset_section(config: Path = CONFIG) -> str:
    """The indented lines under the config's top-level ``dataset:`` key."""
    match = re.search(r"^dataset:[ \t]*\n((?:[ \t]+.*\n|[ \t]*\n)+)", config.read_text(), re.M)
    if not match:
        raise ValueError(f"{config}: no dataset section")
    return match.group(1)


def dataset_scalar(name: str, config: Path = CONFIG) -> str:
    """A plain (optionally quoted) one-word value of the ``dataset`` section."""
    match = re.search(
        rf"^[ \t]+{name}:[ \t]*[\"']?(\w+)[\"']?[ \t]*(?:#.*)?$", dataset_section(config), re.M
    )
    if not match:
        raise ValueError(f"{config}: no dataset.{name}")
    return match.group(1)


def feature_columns(config: Path = CONFIG) -> list[str]:
    """``dataset.feature_columns`` in order (a block list; comment lines between items allowed)."""
    block = re.search(
        r"^[ \t]+feature_columns:[ \t]*\n((?:[ \t]+(?:-.*|#.*)\n)+)", dataset_section(config), re.M
    )
    names = re.findall(r"^[ \t]+-[ \t]*[\"']?(\w+)", block.group(1), re.M) if block else []
    if not names:
        raise ValueError(f"{config}: dataset.feature_columns is not a block list of names")
    return names


KEY = dataset_scalar("key_column")
LABEL = dataset_scalar("label_column")
FEATURES = feature_columns()
