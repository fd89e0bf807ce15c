#!/bin/sh
# Runs once, when the control-db container initialises its data directory: the login role
# the workers use. Its grants and the append-only ledger triggers are applied by airflow-init
# (`python -m include.retention control-init --grant-to ROLE`) once the tables exist.
# psql's :"name" and :'value' quote the role and the password: nothing is pasted into SQL.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v role="$RETENTION_WORKER_DB_USER" -v password="$RETENTION_WORKER_DB_PASSWORD" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
SQL
