"""Use-case config validation: errors name the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlops_sagemaker.config import ConfigError, load_use_case, load_use_cases

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "include/config/tpch_orders.yaml"


def write(tmp_path: Path, mutate) -> Path:
    raw = yaml.safe_load(SHIPPED.read_text())
    mutate(raw)
    path = tmp_path / "tpch_orders.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as err:
        load_use_case(path)
    return str(err.value)


def test_shipped_config_is_valid() -> None:
    (config,) = load_use_cases(ROOT / "include/config")
    assert config.use_case == "tpch_orders"
    assert config.registry.approval_status == "PendingManualApproval"
    assert config.tuning.integer_ranges["n_estimators"].min == 10
    assert config.tuning.integer_ranges["n_estimators"].max == 150
    assert config.tuning.categorical_ranges["max_features"] == ["sqrt", "log2"]
    assert config.tuning.objective.metric_name == "validation:auc"
    assert not config.sagemaker.network.vpc.subnets  # empty means off


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [
        (lambda r: r["tuning"].pop("max_jobs"), "tuning.max_jobs", "Field required"),
        (lambda r: r["tuning"].update(max_jobs="many"), "tuning.max_jobs", "integer"),
        (lambda r: r["source"].update(lookbak_days=3), "source.lookbak_days", "Extra inputs"),
        (lambda r: r["source"].update(schema="tiny; DROP TABLE x"), "source.schema", "pattern"),
        (lambda r: r.update(short_name="much-too-long-name"), "short_name", "at most 10"),
        (
            lambda r: r["dataset"]["split"].update(train=0.9, validation=0.1),
            "dataset.split",
            "test split",
        ),
        (
            lambda r: r["evaluation"].update(metric="auroc"),
            "evaluation.metric",
            "'auc'",
        ),
        (
            lambda r: r["sagemaker"]["network"]["vpc"].update(subnets=["subnet-1"]),
            "sagemaker.network.vpc",
            "both",
        ),
        (
            lambda r: r["sagemaker"]["processing"].update(instance_count=2),
            "sagemaker.processing",
            "instance_count must be 1",
        ),
        (
            lambda r: r["tuning"]["objective"].update(regex="auc=[0-9.]+"),
            "tuning.objective.regex",
            "capture group",
        ),
        (
            lambda r: r["dataset"]["feature_columns"].append("label"),
            "dataset",
            "also listed as a feature",
        ),
    ],
)
def test_bad_config_names_file_and_field(tmp_path: Path, mutate, field: str, words: str) -> None:
    message = error_of(write(tmp_path, mutate))
    assert str(tmp_path / "tpch_orders.yaml") in message
    assert f"  - {field}" in message
    assert words in message


def test_file_name_must_match_use_case(tmp_path: Path) -> None:
    path = tmp_path / "other.yaml"
    path.write_text(SHIPPED.read_text())
    assert "must match the file name" in error_of(path)


def test_not_yaml_mapping(tmp_path: Path) -> None:
    path = tmp_path / "tpch_orders.yaml"
    path.write_text("- just\n- a list\n")
    assert "expected a mapping" in error_of(path)
