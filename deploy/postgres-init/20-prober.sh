#!/bin/sh
# Creates the probers' database login: `prober`, a member of the NOLOGIN role
# `vantage_prober` whose privileges the migration 20261130000900_roles.sql defines
# (read the configuration, insert heartbeats, keep its own bookkeeping; no schema
# changes, no configuration changes). `vantage run` connects as it; migrations run as
# the schema owner (POSTGRES_USER) in the compose `migrate` job. The official postgres
# image runs this once, when the data volume is new and before any migration, so the
# group role is created here too (the migration then only grants). Safe to run again,
# e.g. to change the password:
#   docker compose exec postgres /docker-entrypoint-initdb.d/20-prober.sh
set -eu
: "${PROBER_DB_PASSWORD:?PROBER_DB_PASSWORD must be set (see .env.example)}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"

# The password travels through the environment (psql's \getenv), never argv.
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
\getenv prober_password PROBER_DB_PASSWORD
\getenv db POSTGRES_DB
SELECT 'CREATE ROLE vantage_prober NOLOGIN'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'vantage_prober') \gexec
SELECT 'CREATE ROLE prober LOGIN'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'prober') \gexec
ALTER ROLE prober WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'prober_password';
GRANT vantage_prober TO prober;
GRANT CONNECT ON DATABASE :"db" TO prober;
SQL
