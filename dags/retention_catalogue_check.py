"""Airflow import error for invalid catalogue files (this file defines no DAG).

``retention_dags.py`` builds the DAGs of the valid files; this file fails to import, naming
each invalid file, the field and the problem, so Airflow lists it under "DAG Import Errors".
"""

from include.retention.catalogue import load_valid
from include.retention.errors import RetentionError

_invalid = load_valid()[1]
if _invalid:
    raise RetentionError(
        f"{len(_invalid)} invalid catalogue file(s), their DAGs are not built: "
        + "\n".join(_invalid.values())
    )
