#!/bin/sh
# Creates Grafana's database login: `grafana`, a member of the NOLOGIN role
# `vantage_reader` that the migration 20261125000100_grafana_reader.sql grants SELECT
# to. The official postgres image runs this once, when the data volume is new and
# before any migration, so the role is created here too (the migration then only
# grants). Safe to run again, e.g. to change the password:
#   docker compose exec postgres /docker-entrypoint-initdb.d/10-grafana-reader.sh
set -eu
: "${GRAFANA_DB_PASSWORD:?GRAFANA_DB_PASSWORD must be set (see .env.example)}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"

# The password travels through the environment (psql's \getenv), never argv.
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
\getenv grafana_password GRAFANA_DB_PASSWORD
\getenv db POSTGRES_DB
SELECT 'CREATE ROLE vantage_reader NOLOGIN'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'vantage_reader') \gexec
SELECT 'CREATE ROLE grafana LOGIN'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'grafana') \gexec
ALTER ROLE grafana WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'grafana_password';
GRANT vantage_reader TO grafana;
GRANT CONNECT ON DATABASE :"db" TO grafana;
-- Belt and braces: even a mistaken GRANT elsewhere cannot make Grafana write, and a
-- runaway dashboard query is cut off.
ALTER ROLE grafana SET default_transaction_read_only = on;
ALTER ROLE grafana SET statement_timeout = '30s';
SQL
