"""Airflow DAGs for data-subject requests (``dsr_*``, triggered with a form) and the daily
``dsr_deadlines`` DAG. A task process asks for one DAG (the parsing context names it): only
that one is built.
"""

from airflow.sdk import get_parsing_context

from include.retention.dsr_dags import build_all

globals().update(build_all(only=get_parsing_context().dag_id))
