"""Data drift of an inference batch against the model's training baseline: PSI per feature.

SageMaker Model Monitor is closed to new customers, so drift is computed here, in the Airflow
worker, from the ``baseline.json`` that ``include/step_code/preprocess.py`` wrote for the model's
training run (format version 2: every feature has ``bins``, a right-closed decile histogram of
its non-null train values, see that module's docstring).

A :class:`DriftAccumulator` bins the batch with the baseline's edges, one Arrow table at a time
(memory is bounded by one table), and :meth:`DriftAccumulator.report` turns the histograms into
a :class:`DriftReport` with the population stability index of every feature::

    PSI = sum over bins i of (a_i - e_i) * ln(a_i / e_i)

where ``e_i`` and ``a_i`` are the proportions of the baseline's and the batch's non-null values
in bin ``i``, each floored at ``epsilon`` (1e-4) so that an empty bin gives a large but finite
term instead of infinity. Levels: ``psi >= retrain`` is ``"retrain"``, ``psi >= warn`` is
``"warn"``, otherwise ``"ok"`` (0.1 and 0.25 are the customary thresholds).

Binning rule, shared with ``preprocess.histogram_bins``: value ``v`` falls in bin
``numpy.searchsorted(edges, v, side="left")``, i.e. ``(-inf, e1], (e1, e2], ..., (ek, +inf)``.

Nulls (and NaN, which pandas counts as null in the baseline) are counted per feature but not
binned: the PSI compares the distributions of present values. A feature with no present value
in the batch has no distribution to compare; rather than report a made-up PSI it raises
:class:`DriftInputError` naming the feature. Known blind spot: the outer bins are open, so a
feature that was constant in training (one edge ``c``, bins ``(-inf, c]`` and ``(c, +inf)``)
shows drift to values above ``c`` but not below.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlops_sagemaker.failures import ClassifiedError

EPSILON = 1e-4
LEVELS = ("ok", "warn", "retrain")  # in increasing severity
BINS_CLOSED = "right"
REPORT_VERSION = 1


class DriftBaselineError(ClassifiedError):
    """The baseline cannot be used for a drift check (no bins, features differ, malformed)."""

    category = "data"


class DriftInputError(ClassifiedError):
    """The batch cannot be checked for drift (missing or non-numeric column, no values)."""

    category = "data"


class DriftDetected(ClassifiedError):
    """Raised by the DAG when a batch reaches the retrain level and the config fails on it."""

    category = "data"


def psi(
    expected_counts: Sequence[float] | np.ndarray,
    actual_counts: Sequence[float] | np.ndarray,
    epsilon: float = EPSILON,
) -> float:
    """Population stability index ``sum((a - e) * ln(a / e))`` of two histograms.

    ``e`` and ``a`` are the bin proportions of ``expected_counts`` (the baseline) and
    ``actual_counts`` (the batch), each floored at ``epsilon`` so that empty bins stay finite.
    Both histograms need the same bins and at least one count.
    """
    expected = np.asarray(expected_counts, dtype="float64")
    actual = np.asarray(actual_counts, dtype="float64")
    if expected.ndim != 1 or expected.shape != actual.shape:
        raise ValueError(
            f"psi needs two histograms over the same bins: got shapes {expected.shape} "
            f"and {actual.shape}"
        )
    if expected.sum() <= 0 or actual.sum() <= 0:
        raise ValueError("psi needs at least one count in each histogram")
    e = np.maximum(expected / expected.sum(), epsilon)
    a = np.maximum(actual / actual.sum(), epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def drift_level(value: float, warn: float, retrain: float) -> str:
    """``"retrain"`` if ``value >= retrain``, ``"warn"`` if ``value >= warn``, else ``"ok"``."""
    if value >= retrain:
        return "retrain"
    return "warn" if value >= warn else "ok"


@dataclass(frozen=True)
class FeatureDrift:
    """Drift of one feature: ``rows`` present (binned) values, ``nulls`` null/NaN values;
    ``expected``/``actual`` are the bin proportions (not floored) of baseline and batch over
    the baseline's ``edges``. Empty per-bin lists when rebuilt from XCom."""

    feature: str
    psi: float
    level: str
    rows: int
    nulls: int
    expected: list[float]
    actual: list[float]
    edges: list[float]


@dataclass(frozen=True)
class DriftReport:
    """PSI of every feature of one batch against the baseline, with the thresholds used."""

    features: list[FeatureDrift]
    rows: int
    warn: float
    retrain: float
    baseline_uri: str | None = None
    model_package_arn: str | None = None

    @property
    def level(self) -> str:
        """The worst level of any feature (``"ok"`` without features)."""
        return max((f.level for f in self.features), key=LEVELS.index, default="ok")

    def summary(self) -> str:
        """One line leading with the worst level and the features that reached it."""
        worst = self.level
        if worst == "ok":
            return f"no drift: every feature's PSI < {self.warn:g} over {self.rows} rows"
        threshold = self.retrain if worst == "retrain" else self.warn
        drifted = ", ".join(f"{f.feature} ({f.psi:.3f})" for f in self.features if f.level == worst)
        return f"{worst}: PSI >= {threshold:g} for {drifted} over {self.rows} rows"

    def table(self) -> str:
        """Fixed-width text table for the task log: feature, psi, level, rows, nulls."""
        width = max([len("feature"), *(len(f.feature) for f in self.features)])
        lines = [f"{'feature':<{width}}  {'psi':>9}  {'level':<7}  {'rows':>10}  {'nulls':>10}"]
        lines += [
            f"{f.feature:<{width}}  {f.psi:>9.4f}  {f.level:<7}  {f.rows:>10}  {f.nulls:>10}"
            for f in self.features
        ]
        lines.append(f"thresholds: warn >= {self.warn:g}, retrain >= {self.retrain:g}")
        lines.append(self.summary())
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        """The full report (written to S3): thresholds, then per feature PSI, level, counts,
        bin edges and the expected/actual proportions per bin."""
        return {
            "version": REPORT_VERSION,
            "method": "psi",
            "formula": "sum((a - e) * ln(a / e)) over bins; proportions floored at epsilon",
            "epsilon": EPSILON,
            "bins_closed": BINS_CLOSED,
            "baseline_uri": self.baseline_uri,
            "model_package_arn": self.model_package_arn,
            "thresholds": {"warn": self.warn, "retrain": self.retrain},
            "level": self.level,
            "rows": self.rows,
            "features": {
                f.feature: {
                    "psi": f.psi,
                    "level": f.level,
                    "rows": f.rows,
                    "nulls": f.nulls,
                    "edges": f.edges,
                    "expected": f.expected,
                    "actual": f.actual,
                }
                for f in self.features
            },
        }

    def as_xcom(self) -> dict[str, Any]:
        """A small dict for XCom: levels, PSI and counts, no per-bin arrays."""
        return {
            "level": self.level,
            "rows": self.rows,
            "warn": self.warn,
            "retrain": self.retrain,
            "baseline_uri": self.baseline_uri,
            "model_package_arn": self.model_package_arn,
            "features": {
                f.feature: {"psi": f.psi, "level": f.level, "rows": f.rows, "nulls": f.nulls}
                for f in self.features
            },
        }

    @classmethod
    def from_xcom(cls, value: Mapping[str, Any]) -> DriftReport:
        """Rebuild a report from :meth:`as_xcom` (its features have empty per-bin lists)."""
        features = [
            FeatureDrift(
                feature=name,
                psi=float(item["psi"]),
                level=str(item["level"]),
                rows=int(item["rows"]),
                nulls=int(item["nulls"]),
                expected=[],
                actual=[],
                edges=[],
            )
            for name, item in value["features"].items()
        ]
        return cls(
            features=features,
            rows=int(value["rows"]),
            warn=float(value["warn"]),
            retrain=float(value["retrain"]),
            baseline_uri=value.get("baseline_uri"),
            model_package_arn=value.get("model_package_arn"),
        )


@dataclass(frozen=True)
class _Bins:
    edges: np.ndarray
    counts: np.ndarray


def _baseline_bins(baseline: Mapping[str, Any], feature_columns: Sequence[str]) -> dict[str, _Bins]:
    """The baseline's bins of every feature, checked against the batch's feature columns."""
    stats = baseline.get("features")
    if not isinstance(stats, Mapping):
        raise DriftBaselineError(
            "the baseline has no 'features' statistics: it is not a baseline.json written by "
            "preprocess.py; point the drift check at the model's training baseline"
        )
    missing = [c for c in feature_columns if c not in stats]
    extra = [c for c in stats if c not in feature_columns]
    if missing or extra:
        raise DriftBaselineError(
            "the batch's feature columns and the model's training baseline differ: "
            f"not in the baseline: {', '.join(missing) or '-'}; "
            f"in the baseline but not in the batch: {', '.join(extra) or '-'}. Use the feature "
            "columns the model was trained with, or retrain with the new columns"
        )
    without_bins = [c for c in feature_columns if "bins" not in stats[c]]
    if without_bins and int(baseline.get("version", 1)) < 2:
        raise DriftBaselineError(
            f"the baseline (version {baseline.get('version', 1)}) has no bins for "
            f"{', '.join(without_bins)}: this model version was trained before baselines had "
            "bins, so drift cannot be computed; retrain the model (its training run writes a "
            "version 2 baseline) or disable the drift check for this use case"
        )
    return {c: _checked_bins(c, stats[c].get("bins", {})) for c in feature_columns}


def _checked_bins(feature: str, bins: Mapping[str, Any]) -> _Bins:
    edges = np.asarray(bins.get("edges", []), dtype="float64")
    counts = np.asarray(bins.get("counts", []), dtype="int64")
    problem = None
    if bins.get("closed", BINS_CLOSED) != BINS_CLOSED:
        problem = f"closed on the {bins.get('closed')!r} side, expected {BINS_CLOSED!r}"
    elif counts.size != edges.size + 1:
        problem = f"{edges.size} edges need {edges.size + 1} counts, got {counts.size}"
    elif np.any(np.diff(edges) <= 0) or not np.all(np.isfinite(edges)):
        problem = "edges are not finite and strictly increasing"
    elif counts.sum() <= 0 or np.any(counts < 0):
        problem = "no train values were counted"
    if problem:
        raise DriftBaselineError(
            f"the baseline's bins of feature {feature} are unusable ({problem}); retrain the "
            "model to write a new baseline"
        )
    return _Bins(edges=edges, counts=counts)


class DriftAccumulator:
    """Histograms of a batch over the baseline's bins, fed one Arrow table at a time."""

    def __init__(self, baseline: Mapping[str, Any], feature_columns: Sequence[str]) -> None:
        """Check ``baseline`` (a parsed version-2 ``baseline.json``) against the batch's
        ``feature_columns``; raise :class:`DriftBaselineError` if it cannot be used."""
        self._bins = _baseline_bins(baseline, feature_columns)
        self._counts = {c: np.zeros(b.counts.size, dtype="int64") for c, b in self._bins.items()}
        self._nulls = dict.fromkeys(self._bins, 0)
        self._rows = 0

    def add(self, table: pa.Table) -> None:
        """Count the rows of ``table`` (every feature column, numeric) into the histograms."""
        absent = [c for c in self._bins if c not in table.column_names]
        if absent:
            raise DriftInputError(
                f"the batch lacks feature column(s) {', '.join(absent)}; it has: "
                f"{', '.join(table.column_names)}. Check the batch extraction query"
            )
        for name, bins in self._bins.items():
            values = _float_values(name, table.column(name))
            present = values[~np.isnan(values)]
            self._nulls[name] += int(values.size - present.size)
            # Same rule as preprocess.histogram_bins: right-closed bins.
            index = np.searchsorted(bins.edges, present, side="left")
            self._counts[name] += np.bincount(index, minlength=bins.counts.size)
        self._rows += table.num_rows

    def report(
        self,
        warn: float,
        retrain: float,
        *,
        baseline_uri: str | None = None,
        model_package_arn: str | None = None,
    ) -> DriftReport:
        """PSI and level of every feature over the rows added so far.

        Raises :class:`DriftInputError` if a feature had no present value (or no rows were
        added), and ``ValueError`` unless ``0 <= warn <= retrain``."""
        if not 0 <= warn <= retrain:
            raise ValueError(f"drift thresholds need 0 <= warn <= retrain: {warn}, {retrain}")
        empty = [c for c, counts in self._counts.items() if counts.sum() == 0]
        if empty:
            detail = ", ".join(f"{c} ({self._nulls[c]} nulls)" for c in empty)
            raise DriftInputError(
                f"no values to compare with the baseline in {detail} of {self._rows} batch "
                "rows: check the batch extraction query for these columns"
            )
        features = [self._feature_drift(c, warn, retrain) for c in self._bins]
        return DriftReport(
            features=features,
            rows=self._rows,
            warn=warn,
            retrain=retrain,
            baseline_uri=baseline_uri,
            model_package_arn=model_package_arn,
        )

    def _feature_drift(self, name: str, warn: float, retrain: float) -> FeatureDrift:
        bins, counts = self._bins[name], self._counts[name]
        value = psi(bins.counts, counts)
        return FeatureDrift(
            feature=name,
            psi=value,
            level=drift_level(value, warn, retrain),
            rows=int(counts.sum()),
            nulls=self._nulls[name],
            expected=_proportions(bins.counts),
            actual=_proportions(counts),
            edges=[float(e) for e in bins.edges],
        )


def _proportions(counts: np.ndarray) -> list[float]:
    total = counts.sum()
    return [float(c) / total for c in counts]


def _float_values(name: str, column: pa.ChunkedArray) -> np.ndarray:
    """The column as float64 with nulls as NaN; a non-numeric column is a DriftInputError."""
    if not (
        pa.types.is_integer(column.type)
        or pa.types.is_floating(column.type)
        or pa.types.is_decimal(column.type)
        or pa.types.is_boolean(column.type)
    ):
        raise DriftInputError(
            f"feature column {name} has type {column.type}, not a number: cast it in the batch "
            "extraction query"
        )
    # Nulls become NaN here; NaN values are counted as nulls too, as pandas does in training.
    return pc.cast(column, pa.float64()).to_numpy()
