"""Turn the use-case configs into DAG objects in a DAG file's namespace.

Each pipeline has its own thin DAG file in ``dags/`` calling :func:`publish_dags`, so a broken
builder of one pipeline does not take the other pipelines' DAGs down with it. Builders are
imported lazily: a DAG file only pays for the pipeline it publishes.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlops_sagemaker.config import UseCase, load_all


def include_dir(dag_file: str) -> Path:
    """``include/`` next to the ``dags/`` folder, or ``MLOPS_INCLUDE_DIR`` when set (for
    deployments that keep it elsewhere)."""
    override = os.environ.get("MLOPS_INCLUDE_DIR")
    return Path(override) if override else Path(dag_file).resolve().parent.parent / "include"


def _builder(pipeline: str) -> Callable[[UseCase, Path], Any]:
    """The DAG builder of ``pipeline``: returns one DAG, or a list (endpoint + its teardown)."""
    if pipeline == "training":
        from mlops_sagemaker.retrain_dag import build_retrain_dag
        from mlops_sagemaker.training_dag import build_training_dag

        def training(config: UseCase, include: Path) -> list[Any]:
            retrain = config.need_training().retrain_on
            extra = [build_retrain_dag(config)] if retrain.assets or retrain.drift else []
            return [build_training_dag(config, include), *extra]

        return training
    if pipeline == "batch_inference":
        from mlops_sagemaker.batch_dag import build_batch_inference_dag

        return build_batch_inference_dag
    if pipeline == "endpoint":
        from mlops_sagemaker.endpoint_dag import build_endpoint_dag, build_teardown_dag

        return lambda config, include: [
            build_endpoint_dag(config, include),
            build_teardown_dag(config, include),
        ]
    raise ValueError(f"unknown pipeline {pipeline!r}")


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while the DAGs are built (restored after).

    Building creates tens of thousands of objects that all live on in the DAGs, so each
    collection the allocations trigger walks an ever larger heap and frees next to nothing:
    with 20 use cases, pausing it cuts the batch-inference and endpoint files' parse (CPU)
    by about a sixth."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def publish_dags(
    namespace: MutableMapping[str, Any],
    include: Path,
    pipeline: str,
    *,
    with_config_errors: bool = False,
) -> list[str]:
    """Build ``pipeline``'s DAG of every valid use case that has its section into
    ``namespace``; with ``with_config_errors`` also a ``*_config_error`` DAG per invalid file.
    Returns the DAG ids."""
    loaded = load_all(include / "config")
    build = _builder(pipeline)
    dag_ids = []
    with _collector_paused():
        for config in loaded.use_cases:
            if getattr(config, pipeline) is not None:
                built = build(config, include)
                for dag in built if isinstance(built, list) else [built]:
                    namespace[dag.dag_id] = dag
                    dag_ids.append(dag.dag_id)
    if with_config_errors:
        from mlops_sagemaker.config_error_dag import build_config_error_dag

        for path, error in loaded.errors.items():
            dag = build_config_error_dag(path, error)
            namespace[dag.dag_id] = dag
            dag_ids.append(dag.dag_id)
    return dag_ids
