"""A cron data-interval timetable that carries the use case's date range itself.

Why not the DAG's ``start_date``/``end_date``: every task inherits them, and Airflow creates no
task instance for a logical date outside a task's range. A manual run for such a date then
"succeeds" having run nothing (``airflow dags test ... 1999-06-01`` exits 0). With the range on
the timetable, scheduling stops at the same dates, but a manual run outside them creates its task
instances, and the first task, ``check_run_date``, fails with the allowed range.

A custom timetable must be registered through a plugin (``plugins/mlops_sagemaker_plugin.py``)
so that the scheduler can deserialize it.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Any

from airflow.timetables.base import DagRunInfo, DataInterval, TimeRestriction
from airflow.timetables.interval import CronDataIntervalTimetable


def _midnight(day: date | None) -> datetime | None:
    return None if day is None else datetime.combine(day, time.min, UTC)


class RangedCronDataIntervalTimetable(CronDataIntervalTimetable):
    """``CronDataIntervalTimetable`` scheduling only data intervals starting within
    ``[first_day, last_day]`` (``last_day`` ``None``: open-ended)."""

    def __init__(
        self, cron: str, timezone: Any, first_day: date, last_day: date | None = None
    ) -> None:
        super().__init__(cron, timezone)
        self.first_day = first_day
        self.last_day = last_day

    @property
    def summary(self) -> str:
        """What the UI shows for the schedule."""
        until = f" until {self.last_day}" if self.last_day else ""
        return f"{self._expression} from {self.first_day}{until}"

    def next_dagrun_info(
        self,
        *,
        last_automated_data_interval: DataInterval | None,
        restriction: TimeRestriction,
    ) -> DagRunInfo | None:
        """The next interval, within both Airflow's restriction and the use case's range."""
        first = _midnight(self.first_day)
        earliest = max(d for d in (restriction.earliest, first) if d is not None)
        ends = [d for d in (restriction.latest, _midnight(self.last_day)) if d is not None]
        bounded = TimeRestriction(earliest, min(ends) if ends else None, restriction.catchup)
        return super().next_dagrun_info(
            last_automated_data_interval=last_automated_data_interval, restriction=bounded
        )

    def serialize(self) -> dict[str, Any]:
        """The cron fields plus the range."""
        return {
            **super().serialize(),
            "first_day": self.first_day.isoformat(),
            "last_day": self.last_day.isoformat() if self.last_day else None,
        }

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> RangedCronDataIntervalTimetable:
        """Inverse of :meth:`serialize`."""
        base = CronDataIntervalTimetable.deserialize(data)
        last = data.get("last_day")
        return cls(
            base._expression,
            base._timezone,
            date.fromisoformat(data["first_day"]),
            date.fromisoformat(last) if last else None,
        )
