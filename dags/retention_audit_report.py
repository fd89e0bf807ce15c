"""Airflow DAG: the weekly retention audit report (see include/retention/audit_dag.py)."""

from include.retention.audit_dag import build_audit_dag

audit_report = build_audit_dag()
