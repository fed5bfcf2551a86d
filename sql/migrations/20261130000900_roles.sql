-- Least privilege, and the per-monitor limits that keep probes' verdicts honest and
-- their redirects on the right side of the network (first section).
--
-- Three NOLOGIN group roles, each given to logins by the operator
-- (deploy/postgres-init/ does it for docker compose; docs/deployment.md by hand).
--
--   vantage_owner   owns every Vantage table, view, sequence and function; runs the
--                   migrations (the login that runs them is made a member). The only
--                   role that changes the schema.
--   vantage_prober  what `vantage run` needs: reads the configuration, inserts
--                   heartbeats (never updates or deletes them), and writes its own
--                   bookkeeping (agents, leader_terms, rollups, incidents,
--                   notifications, ... every table except the configuration and the
--                   heartbeats); creates and drops heartbeat partitions only through
--                   vantage_ensure_heartbeat_partition / vantage_drop_heartbeat_partitions.
--                   May take advisory locks (leadership, rollups, partitions).
--   vantage_reader  dashboards and people: SELECT on results and configuration,
--                   except secrets (api_monitors.headers and .body,
--                   notification_channels.config, and any column named like a
--                   secret), which it cannot read at all. Cannot write, cannot take
--                   advisory locks (so it cannot hold leadership away from the
--                   probers), cannot call the partition functions.
--
-- Numbered last on purpose: it covers every table that exists when it runs (the
-- incident and notification tables included), and default privileges cover the
-- tables created later: by the migrating login (later migrations) and by
-- vantage_owner (new daily partitions). Later migrations must GRANT the reader what
-- it may read explicitly; it gets nothing by default.
--
-- Roles are cluster-wide while migrations run per database, and test suites migrate
-- many databases of one cluster at once: creating a role tolerates a concurrent
-- creator instead of failing.

-- ---------------------------------------------------------------------------------
-- Per-monitor limits the probe enforces (before the grants below, which list columns)
-- ---------------------------------------------------------------------------------

-- max_body_bytes: a longer response body fails with body_too_large (responses to HEAD,
-- 204 and 304 have no body and are never held against it).
-- redirect_policy: where followed redirects may lead:
--   safe       a chain that started on a public address may only connect to public
--              addresses (never loopback, link-local, private, ...), checked on the
--              addresses DNS returned for each hop
--   same-host  every redirect stays on the monitor's host name, and `safe` applies
--   any        anywhere
ALTER TABLE api_monitors
    ADD COLUMN max_body_bytes int NOT NULL DEFAULT 1048576,
    ADD COLUMN redirect_policy text NOT NULL DEFAULT 'safe';

CREATE FUNCTION vantage_check_monitor_limits() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.max_body_bytes IS NULL OR NEW.max_body_bytes < 1 OR NEW.max_body_bytes > 1073741824 THEN
        PERFORM vantage_reject('api_monitors.max_body_bytes',
            format('must be between 1 and 1073741824 bytes (1 GiB), such as 1048576 for 1 MiB (got %s)',
                   coalesce(NEW.max_body_bytes::text, 'NULL')));
    END IF;
    NEW.redirect_policy := lower(btrim(NEW.redirect_policy));
    IF NEW.redirect_policy IS NULL OR NEW.redirect_policy NOT IN ('safe', 'same-host', 'any') THEN
        PERFORM vantage_reject('api_monitors.redirect_policy',
            format('must be ''safe'', ''same-host'' or ''any'' (got %s)',
                   coalesce(quote_literal(NEW.redirect_policy), 'NULL')));
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER api_monitors_validate_limits BEFORE INSERT OR UPDATE ON api_monitors
    FOR EACH ROW EXECUTE FUNCTION vantage_check_monitor_limits();

-- A redirect the policy refused is its own kind of failure.
ALTER TABLE api_heartbeats DROP CONSTRAINT api_heartbeats_error_kind_check;
ALTER TABLE api_heartbeats ADD CONSTRAINT api_heartbeats_error_kind_check CHECK (error_kind IN (
    'dns_nxdomain', 'dns_timeout', 'dns_error',
    'connect_refused', 'connect_timeout', 'connect_error',
    'tls_handshake', 'tls_certificate', 'timeout', 'http_protocol',
    'status_mismatch', 'body_mismatch', 'body_too_large',
    'redirect_loop', 'too_many_redirects', 'redirect_blocked', 'invalid_request'));

-- ---------------------------------------------------------------------------------
-- The roles
-- ---------------------------------------------------------------------------------

DO $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['vantage_owner', 'vantage_prober', 'vantage_reader'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', name);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL; -- created by a concurrent migration of another database
            END;
        END IF;
    END LOOP;
    -- The login running migrations must be able to act as the owner of what it
    -- migrates. A superuser already can.
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
       AND NOT pg_has_role(current_user, 'vantage_owner', 'MEMBER') THEN
        EXECUTE format('GRANT vantage_owner TO %I', current_user);
    END IF;
END
$$;

-- The owner creates partitions (vantage_ensure_heartbeat_partition runs as it).
GRANT USAGE, CREATE ON SCHEMA public TO vantage_owner;
GRANT USAGE ON SCHEMA public TO vantage_prober, vantage_reader;

-- ---------------------------------------------------------------------------------
-- Ownership: every relation and function of the schema (migrations' bookkeeping
-- table _sqlx_migrations stays with the login that runs them).
-- ---------------------------------------------------------------------------------

DO $$
DECLARE
    obj record;
BEGIN
    FOR obj IN
        SELECT c.oid::regclass AS rel, c.relkind
        FROM pg_class c
        WHERE c.relnamespace = 'public'::regnamespace
          AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
          AND c.relname <> '_sqlx_migrations'
          -- Sequences of serial and identity columns follow their table.
          AND NOT (c.relkind = 'S' AND EXISTS (SELECT FROM pg_depend d
                                               WHERE d.classid = 'pg_class'::regclass
                                                 AND d.objid = c.oid
                                                 AND d.deptype IN ('a', 'i')))
    LOOP
        EXECUTE format('ALTER %s %s OWNER TO vantage_owner',
                       CASE obj.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                                        WHEN 'm' THEN 'MATERIALIZED VIEW'
                                        WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
                       obj.rel);
    END LOOP;
    FOR obj IN
        SELECT p.oid::regprocedure AS fn
        FROM pg_proc p
        WHERE p.pronamespace = 'public'::regnamespace AND p.prokind = 'f'
          -- Functions of extensions belong to the extension.
          AND NOT EXISTS (SELECT FROM pg_depend d
                          WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                            AND d.deptype = 'e')
    LOOP
        EXECUTE format('ALTER FUNCTION %s OWNER TO vantage_owner', obj.fn);
    END LOOP;
END
$$;

-- Partitions are created and dropped with the owner's rights, whoever asks, so the
-- prober needs no DDL rights of its own (creating a partition requires owning the
-- parent). Both functions only take a date or a number and quote every name.
ALTER FUNCTION vantage_ensure_heartbeat_partition(date) SECURITY DEFINER SET search_path = public, pg_temp;
ALTER FUNCTION vantage_drop_heartbeat_partitions(int) SECURITY DEFINER SET search_path = public, pg_temp;
REVOKE EXECUTE ON FUNCTION vantage_ensure_heartbeat_partition(date), vantage_drop_heartbeat_partitions(int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vantage_ensure_heartbeat_partition(date), vantage_drop_heartbeat_partitions(int)
    TO vantage_owner, vantage_prober;

-- ---------------------------------------------------------------------------------
-- The prober
-- ---------------------------------------------------------------------------------

GRANT SELECT ON ALL TABLES IN SCHEMA public TO vantage_prober;
GRANT INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO vantage_prober;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO vantage_prober;
-- Configuration is the operators' (and the migrations'): read only.
REVOKE INSERT, UPDATE, DELETE ON regions, datacenters, schedules, api_monitors,
    datacenter_monitors, _sqlx_migrations FROM vantage_prober;
-- Heartbeats are history: inserted once (duplicates are skipped), never rewritten.
-- Old days go whole, through vantage_drop_heartbeat_partitions.
REVOKE UPDATE, DELETE ON api_heartbeats FROM vantage_prober;

-- ---------------------------------------------------------------------------------
-- The reader: every column of every table, except secrets
-- ---------------------------------------------------------------------------------

GRANT SELECT ON ALL TABLES IN SCHEMA public TO vantage_reader;
GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO vantage_reader;
REVOKE SELECT ON _sqlx_migrations FROM vantage_reader;

DO $$
DECLARE
    tbl record;
    readable text;
BEGIN
    -- A table with a secret column loses its table-wide SELECT and gets SELECT on its
    -- other columns instead. Named secrets, plus any column named like one.
    FOR tbl IN
        SELECT c.table_name::text AS name, array_agg(c.column_name::text) AS secrets
        FROM information_schema.columns c
        WHERE c.table_schema = 'public'
          AND ((c.table_name::text, c.column_name::text) IN (('api_monitors', 'headers'),
                                                             ('api_monitors', 'body'),
                                                             ('notification_channels', 'config'))
               -- Not every *_token: a fencing token is no secret.
               OR c.column_name::text ~ ('(^|_)(secret|secrets|password|passwd|api_key|apikey|private_key|'
                                         'signing_key|credentials|access_token|auth_token|bearer_token|bot_token)$'))
        GROUP BY c.table_name
    LOOP
        EXECUTE format('REVOKE SELECT ON %I FROM vantage_reader', tbl.name);
        SELECT string_agg(quote_ident(c.column_name), ', ' ORDER BY c.ordinal_position)
        INTO readable
        FROM information_schema.columns c
        WHERE c.table_schema = 'public' AND c.table_name::text = tbl.name
          AND c.column_name::text <> ALL (tbl.secrets);
        IF readable IS NOT NULL THEN
            EXECUTE format('GRANT SELECT (%s) ON %I TO vantage_reader', readable, tbl.name);
        END IF;
    END LOOP;
END
$$;

-- ---------------------------------------------------------------------------------
-- Tables created later
-- ---------------------------------------------------------------------------------

-- By the login running migrations: the prober may use them; the reader gets only what
-- a migration grants it (20261125000100_grafana_reader.sql gave it everything).
ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE SELECT ON TABLES FROM vantage_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE SELECT ON SEQUENCES FROM vantage_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO vantage_prober;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO vantage_prober;
-- By the owner: the daily partitions of api_heartbeats (reads and inserts through the
-- parent only check the parent; these cover people who query one partition).
ALTER DEFAULT PRIVILEGES FOR ROLE vantage_owner IN SCHEMA public
    GRANT SELECT ON TABLES TO vantage_reader, vantage_prober;
ALTER DEFAULT PRIVILEGES FOR ROLE vantage_owner IN SCHEMA public
    GRANT INSERT ON TABLES TO vantage_prober;

-- ---------------------------------------------------------------------------------
-- Advisory locks: leadership is a lock anyone who can connect could otherwise take
-- (even in a read-only transaction) and hold away from the probers.
-- ---------------------------------------------------------------------------------

-- Function privileges live in this database's catalog, and only a superuser may
-- change those of built-in functions. Without one, say in one warning what a superuser
-- must run, rather than leave the locks open silently.
DO $$
DECLARE
    fn regprocedure;
    todo text := '';
BEGIN
    FOR fn IN
        SELECT p.oid::regprocedure
        FROM pg_proc p
        WHERE p.pronamespace = 'pg_catalog'::regnamespace
          AND p.proname IN ('pg_advisory_lock', 'pg_advisory_lock_shared',
                            'pg_try_advisory_lock', 'pg_try_advisory_lock_shared',
                            'pg_advisory_xact_lock', 'pg_advisory_xact_lock_shared',
                            'pg_try_advisory_xact_lock', 'pg_try_advisory_xact_lock_shared')
        ORDER BY p.proname, p.pronargs
    LOOP
        IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO vantage_owner, vantage_prober', fn);
            EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', fn);
        ELSIF has_function_privilege('vantage_reader', fn, 'EXECUTE') THEN
            todo := todo || format(E'\nGRANT EXECUTE ON FUNCTION %s TO vantage_owner, vantage_prober; '
                                   'REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC;', fn, fn);
        END IF;
    END LOOP;
    IF todo <> '' THEN
        RAISE WARNING 'vantage_reader can still take advisory locks (and so hold leadership): '
            'a superuser must run in database %:%', current_database(), todo;
    END IF;
END
$$;
