"""Use-case config validation: errors name the file and the field."""

from __future__ import annotations

import importlib.util
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
    training = config.need_training()
    assert training.registry.approval_status == "PendingManualApproval"
    assert training.tuning.integer_ranges["n_estimators"].min == 10
    assert training.tuning.integer_ranges["n_estimators"].max == 150
    assert training.tuning.categorical_ranges["max_features"] == ["sqrt", "log2"]
    assert training.tuning.objective.metric_name == "validation:auc"
    assert not config.sagemaker.network.vpc.subnets  # empty means off
    batch = config.need_batch()
    assert batch.approval.mode == "auto"
    assert config.model_package_group == training.registry.model_package_group
    assert config.approval_gate().threshold == training.evaluation.threshold
    assert (config.pool_name, config.sagemaker.pool.slots) == ("mlops_tpch_orders", 4)


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [
        (
            lambda r: r["training"]["tuning"].pop("max_jobs"),
            "training.tuning.max_jobs",
            "Field required",
        ),
        (
            lambda r: r["training"]["tuning"].update(max_jobs="many"),
            "training.tuning.max_jobs",
            "integer",
        ),
        (lambda r: r["training"].update(lookbak_days=3), "training.lookbak_days", "Extra inputs"),
        (lambda r: r["source"].update(schema="tiny; DROP TABLE x"), "source.schema", "pattern"),
        (lambda r: r.update(short_name="much-too-long-name"), "short_name", "at most 10"),
        (
            lambda r: r["training"]["split"].update(train=0.9, validation=0.1),
            "training.split",
            "test split",
        ),
        (
            lambda r: r["training"]["evaluation"].update(metric="auroc"),
            "training.evaluation.metric",
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
            lambda r: r["training"]["tuning"]["objective"].update(regex="auc=[0-9.]+"),
            "training.tuning.objective.regex",
            "capture group",
        ),
        (
            lambda r: r["dataset"]["feature_columns"].append("label"),
            "dataset",
            "also listed as a feature",
        ),
        (
            lambda r: r["batch_inference"]["model"].update(selection="pinned"),
            "batch_inference.model",
            "needs pinned_version",
        ),
        (
            lambda r: r["batch_inference"]["approval"].update(mode="manual"),
            "batch_inference.approval.mode",
            "'airflow'",
        ),
        (
            lambda r: r["batch_inference"]["drift"].update(warn=0.5),
            "batch_inference.drift",
            "warn 0.5 > retrain 0.25",
        ),
        (
            lambda r: r["sagemaker"]["pool"].update(slots=1),
            "<top level>",
            "max_parallel_jobs (2) exceeds sagemaker.pool.slots (1)",
        ),
        (lambda r: r["sagemaker"]["pool"].update(slots=0), "sagemaker.pool.slots", "greater"),
        (
            lambda r: (r.pop("training"), r.pop("batch_inference"), r.pop("endpoint")),
            "<top level>",
            "no pipeline section",
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


def test_old_training_only_layout_says_where_each_field_moved(tmp_path: Path) -> None:
    def old_layout(raw: dict) -> None:
        training = raw.pop("training")
        raw.pop("batch_inference")
        raw["schedule"] = training["schedule"]
        raw["tuning"] = training["tuning"]
        raw["evaluation"] = training["evaluation"]
        raw["registry"] = training["registry"]
        raw["dataset"]["split"] = training["split"]
        raw["source"]["training_query"] = training["query"]
        raw["source"]["lookback_days"] = training["lookback_days"]

    message = error_of(write(tmp_path, old_layout))
    assert "old training-only layout" in message
    for line in (
        "schedule -> training.schedule",
        "tuning -> training.tuning",
        "evaluation -> training.evaluation",
        "registry -> training.registry",
        "dataset.split -> training.split",
        "source.training_query -> training.query",
        "source.lookback_days -> training.lookback_days",
    ):
        assert f"  - {line}" in message
    assert "source.data_arrival_query" not in message  # not in this file: not listed


def test_batch_without_training_needs_its_group_and_gate(tmp_path: Path) -> None:
    def batch_only(raw: dict) -> None:
        raw.pop("training")
        raw.pop("endpoint")

    message = error_of(write(tmp_path, batch_only))
    assert "batch_inference.model.package_group is required without training" in message

    def batch_only_with_group(raw: dict) -> None:
        raw.pop("training")
        raw.pop("endpoint")
        raw["batch_inference"]["model"]["package_group"] = "some-group"
        raw["batch_inference"]["approval"]["gate"] = {"metric": "auc", "threshold": 0.6}

    config = load_use_case(write(tmp_path, batch_only_with_group))
    assert config.model_package_group == "some-group"
    assert config.approval_gate().threshold == 0.6


def test_the_step_code_tests_read_the_shipped_column_names() -> None:
    # tests/step_code/tpch_features.py reads the config without PyYAML (one image venv has none).
    spec = importlib.util.spec_from_file_location(
        "tpch_features", ROOT / "tests/step_code/tpch_features.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dataset = load_use_case(SHIPPED).dataset
    assert list(dataset.feature_columns) == module.FEATURES
    assert (dataset.key_column, dataset.label_column) == (module.KEY, module.LABEL)
