-- A read-only role for dashboards and people: `vantage_reader` (NOLOGIN) may read every
-- table and view of the schema, now and later, and change nothing. Give it to a login
-- with `GRANT vantage_reader TO grafana` (docker compose does this in
-- deploy/postgres-init/10-grafana-reader.sh; docs/deployment.md shows it by hand).
--
-- Roles are cluster-wide while migrations run per database, and test suites migrate
-- many databases of one cluster at once: creating the role tolerates a concurrent
-- creator instead of failing.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'vantage_reader') THEN
        BEGIN
            CREATE ROLE vantage_reader NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL; -- created by a concurrent migration of another database
        END;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO vantage_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO vantage_reader;
GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO vantage_reader;

-- Tables created later by the role that runs migrations and housekeeping (new daily
-- partitions of api_heartbeats, later migrations) are readable too. Reading through
-- the partitioned parent only checks the parent's privileges; this also covers
-- people who query one partition directly.
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO vantage_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON SEQUENCES TO vantage_reader;
