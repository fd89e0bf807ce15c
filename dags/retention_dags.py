"""Airflow DAGs: one retention DAG per processing activity of the policy catalogue."""

from include.retention.catalogue import load_catalogue
from include.retention.dag_factory import build_all

globals().update(build_all(load_catalogue()))
