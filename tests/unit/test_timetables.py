"""The ranged timetable: schedules only inside the use case's dates, survives serialization."""

from __future__ import annotations

from datetime import UTC, date, datetime

from airflow.timetables.base import TimeRestriction

from mlops_sagemaker.timetables import RangedCronDataIntervalTimetable


def test_schedules_from_the_first_day_to_the_last_day_only() -> None:
    timetable = RangedCronDataIntervalTimetable("@daily", "UTC", date(1993, 1, 1), date(1993, 1, 2))
    catchup = TimeRestriction(earliest=None, latest=None, catchup=True)
    first = timetable.next_dagrun_info(last_automated_data_interval=None, restriction=catchup)
    assert first is not None
    assert first.data_interval.start == datetime(1993, 1, 1, tzinfo=UTC)
    second = timetable.next_dagrun_info(
        last_automated_data_interval=first.data_interval, restriction=catchup
    )
    assert second is not None and second.data_interval.start == datetime(1993, 1, 2, tzinfo=UTC)
    assert (
        timetable.next_dagrun_info(
            last_automated_data_interval=second.data_interval, restriction=catchup
        )
        is None
    )
    # Without catchup the scheduler looks at "now" (years after 1993): nothing to schedule.
    no_catchup = TimeRestriction(earliest=None, latest=None, catchup=False)
    assert (
        timetable.next_dagrun_info(last_automated_data_interval=None, restriction=no_catchup)
        is None
    )


def test_open_ended_range_schedules_today() -> None:
    timetable = RangedCronDataIntervalTimetable("@daily", "UTC", date(2020, 1, 1))
    info = timetable.next_dagrun_info(
        last_automated_data_interval=None,
        restriction=TimeRestriction(earliest=None, latest=None, catchup=False),
    )
    assert info is not None and info.data_interval.start.year >= 2026


def test_round_trips_through_airflow_dag_serialization() -> None:
    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import DagSerialization

    timetable = RangedCronDataIntervalTimetable(
        "0 3 * * *", "UTC", date(1993, 1, 1), date(1998, 8, 2)
    )
    with DAG("ranged", schedule=timetable) as dag:
        pass
    restored = DagSerialization.from_dict(DagSerialization.to_dict(dag)).timetable
    assert isinstance(restored, RangedCronDataIntervalTimetable)
    assert (restored.first_day, restored.last_day) == (date(1993, 1, 1), date(1998, 8, 2))
    assert restored.summary == "0 3 * * * from 1993-01-01 until 1998-08-02"
