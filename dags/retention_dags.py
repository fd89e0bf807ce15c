"""Airflow DAGs: one retention DAG per valid processing activity of the policy catalogue.

An invalid catalogue file costs only its own DAG: ``retention_catalogue_check.py`` reports it
as an import error naming the file. A task process asks for one DAG (the parsing context names
it): only that one is built.
"""

from airflow.sdk import get_parsing_context

from include.retention.catalogue import load_valid
from include.retention.dag_factory import build_all

globals().update(build_all(load_valid()[0], only=get_parsing_context().dag_id))
