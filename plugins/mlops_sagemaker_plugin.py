"""Airflow plugin of the package: registers its custom timetable so the scheduler can load it."""

from airflow.plugins_manager import AirflowPlugin

from mlops_sagemaker.timetables import RangedCronDataIntervalTimetable


class MlopsSageMakerPlugin(AirflowPlugin):
    """Registers ``RangedCronDataIntervalTimetable``."""

    name = "mlops_sagemaker"
    timetables = [RangedCronDataIntervalTimetable]
