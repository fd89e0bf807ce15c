"""Test session set-up: an isolated Airflow home, and no example DAGs.

Environment variables are set before anything imports Airflow, so every test (and every
subprocess it starts) uses a throwaway metadata database, never the user's.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Set once per test session, even if this module is imported a second time.
AIRFLOW_HOME = Path(
    os.environ.get("RETENTION_TEST_AIRFLOW_HOME")
    or tempfile.mkdtemp(prefix="retention-test-airflow-")
)

os.environ["RETENTION_TEST_AIRFLOW_HOME"] = str(AIRFLOW_HOME)
os.environ["AIRFLOW_HOME"] = str(AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
os.environ.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", None)
os.environ.pop("RETENTION_CONTROL_DB_URL", None)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
