#!/bin/sh
# Runs once, when the control-db container initialises its data directory: the login roles
# of the workers (enforcement) and of the holds admin (places and releases holds). Their grants
# and the append-only ledger triggers are applied by airflow-init (`python -m include.retention
# setup --grant-to WORKER --holds-admin ADMIN`) once the tables exist.
# psql's :"name" and :'value' quote the roles and the passwords: nothing is pasted into SQL.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v role="$RETENTION_WORKER_DB_USER" -v password="$RETENTION_WORKER_DB_PASSWORD" \
  -v holds_admin="$RETENTION_HOLDS_ADMIN_DB_USER" \
  -v holds_password="$RETENTION_HOLDS_ADMIN_DB_PASSWORD" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
CREATE ROLE :"holds_admin" LOGIN PASSWORD :'holds_password';
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
SQL
