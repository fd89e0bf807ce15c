"""The Retention page in the Airflow UI (wiring only: see ``include/retention/retention_page.py``).

A FastAPI app mounted by the API server at ``/retention``, shown in the navigation and as a
*Retention* tab on every DAG. Access is checked with Airflow's own security dependencies.
"""

from airflow.plugins_manager import AirflowPlugin

from include.retention.retention_page import external_views, fastapi_app


class RetentionPlugin(AirflowPlugin):
    name = "retention"
    fastapi_apps = [fastapi_app()]  # noqa: RUF012 - Airflow reads these class attributes
    external_views = external_views()
