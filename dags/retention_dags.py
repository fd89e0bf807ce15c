"""Airflow DAGs: one retention DAG per processing activity of the policy catalogue."""

from airflow.sdk import get_parsing_context

from include.retention.catalogue import load_catalogue
from include.retention.dag_factory import build_all

# A task process asks for one DAG (the parsing context names it): build only that one.
globals().update(build_all(load_catalogue(), only=get_parsing_context().dag_id))
