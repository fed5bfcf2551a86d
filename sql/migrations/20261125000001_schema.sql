-- Vantage schema, version 1: configuration (regions, datacenters, schedules, monitors,
-- assignments), leadership (agents, leader_terms) and results (api_heartbeats).
--
-- Table and column names are a contract: the runner, dashboards and users' own SQL
-- depend on them. Bad configuration is rejected here, at the door, by trigger
-- functions whose messages name the column and say what is accepted, so that a typo
-- in a hand-written INSERT is caught before the runner ever sees it.

-- ---------------------------------------------------------------------------------
-- Shared helpers
-- ---------------------------------------------------------------------------------

-- Keeps updated_at honest on every UPDATE.
CREATE FUNCTION vantage_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

-- Running instances LISTEN on this channel and reload their configuration; a
-- periodic full reload covers notifications lost while disconnected.
CREATE FUNCTION vantage_notify_config_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('vantage_config', '');
    RETURN NULL;
END
$$;

-- Raises a check_violation whose message starts with "<table>.<column>".
CREATE FUNCTION vantage_reject(col text, msg text, hint text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = 'check_violation',
        MESSAGE = col || ' ' || msg,
        COLUMN = split_part(col, '.', 2),
        TABLE = split_part(col, '.', 1),
        HINT = coalesce(hint, '');
END
$$;

-- ---------------------------------------------------------------------------------
-- Where probes run
-- ---------------------------------------------------------------------------------

CREATE TABLE regions (
    id         serial PRIMARY KEY,
    code       text NOT NULL UNIQUE,
    name       text NOT NULL,
    group_name text
);

CREATE TABLE datacenters (
    id        serial PRIMARY KEY,
    -- A short lowercase slug such as 'va' or 'lon'; `vantage run --datacenter` takes it.
    code      text NOT NULL UNIQUE,
    name      text NOT NULL,
    region_id int REFERENCES regions (id) ON DELETE SET NULL
);

CREATE FUNCTION vantage_check_datacenter() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.code IS NULL OR NEW.code !~ '^[a-z][a-z0-9_-]{0,31}$' THEN
        PERFORM vantage_reject('datacenters.code',
            format('must be a lowercase slug of letters, digits, "-" or "_" starting with a letter, such as ''va'' or ''lon'' (got %s)',
                   coalesce(quote_literal(NEW.code), 'NULL')));
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER datacenters_validate BEFORE INSERT OR UPDATE ON datacenters
    FOR EACH ROW EXECUTE FUNCTION vantage_check_datacenter();

-- ---------------------------------------------------------------------------------
-- What to probe, and when
-- ---------------------------------------------------------------------------------

CREATE TABLE schedules (
    id                    serial PRIMARY KEY,
    name                  text NOT NULL UNIQUE,
    -- Exactly one of interval_seconds and cron (a cron expression with a seconds field).
    interval_seconds      int,
    cron                  text,
    -- The probe's overall deadline; shorter than the interval so probes never overlap.
    timeout_ms            int NOT NULL DEFAULT 10000,
    -- total_ms above these turns an `up` into `warning` / `critical`.
    warning_threshold_ms  int,
    critical_threshold_ms int,
    -- Store the (capped) response body with each heartbeat.
    include_response_body bool NOT NULL DEFAULT false
);

CREATE FUNCTION vantage_check_schedule() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    fields int;
BEGIN
    IF (NEW.interval_seconds IS NULL) = (NEW.cron IS NULL) THEN
        PERFORM vantage_reject('schedules.interval_seconds',
            format('and schedules.cron: set exactly one of them (got interval_seconds = %s, cron = %s)',
                   coalesce(NEW.interval_seconds::text, 'NULL'), coalesce(quote_literal(NEW.cron), 'NULL')));
    END IF;
    IF NEW.interval_seconds IS NOT NULL AND NEW.interval_seconds <= 0 THEN
        PERFORM vantage_reject('schedules.interval_seconds',
            format('must be a positive number of seconds (got %s)', NEW.interval_seconds));
    END IF;
    IF NEW.cron IS NOT NULL THEN
        fields := coalesce(array_length(regexp_split_to_array(btrim(NEW.cron), '\s+'), 1), 0);
        IF btrim(NEW.cron) !~ '^@[a-z]+$' AND (fields < 6 OR fields > 7) THEN
            PERFORM vantage_reject('schedules.cron',
                format('must be a cron expression with a seconds field, 6 or 7 fields such as ''0 */5 * * * *'' (got %s with %s fields)',
                       quote_literal(NEW.cron), fields));
        END IF;
    END IF;
    IF NEW.timeout_ms IS NULL OR NEW.timeout_ms <= 0 THEN
        PERFORM vantage_reject('schedules.timeout_ms',
            format('must be a positive number of milliseconds (got %s)', coalesce(NEW.timeout_ms::text, 'NULL')));
    END IF;
    IF NEW.interval_seconds IS NOT NULL AND NEW.timeout_ms >= NEW.interval_seconds::bigint * 1000 THEN
        PERFORM vantage_reject('schedules.timeout_ms',
            format('must be shorter than the interval (interval_seconds = %s allows at most %s ms; got %s)',
                   NEW.interval_seconds, NEW.interval_seconds::bigint * 1000 - 1, NEW.timeout_ms));
    END IF;
    IF NEW.warning_threshold_ms IS NOT NULL AND NEW.warning_threshold_ms <= 0 THEN
        PERFORM vantage_reject('schedules.warning_threshold_ms',
            format('must be positive (got %s)', NEW.warning_threshold_ms));
    END IF;
    IF NEW.critical_threshold_ms IS NOT NULL AND NEW.critical_threshold_ms <= 0 THEN
        PERFORM vantage_reject('schedules.critical_threshold_ms',
            format('must be positive (got %s)', NEW.critical_threshold_ms));
    END IF;
    IF NEW.warning_threshold_ms > NEW.critical_threshold_ms THEN
        PERFORM vantage_reject('schedules.warning_threshold_ms',
            format('must not exceed critical_threshold_ms (got warning %s > critical %s)',
                   NEW.warning_threshold_ms, NEW.critical_threshold_ms));
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER schedules_validate BEFORE INSERT OR UPDATE ON schedules
    FOR EACH ROW EXECUTE FUNCTION vantage_check_schedule();

CREATE TABLE api_monitors (
    id                    serial PRIMARY KEY,
    name                  text NOT NULL UNIQUE,
    method                text NOT NULL DEFAULT 'GET',
    url                   text NOT NULL,
    -- Request headers as a JSON object of strings: {"Accept": "application/json"}.
    headers               jsonb NOT NULL DEFAULT '{}',
    -- Names of headers whose values are never logged or shown.
    secret_headers        text[] NOT NULL DEFAULT '{}',
    body                  text,
    schedule_id           int NOT NULL REFERENCES schedules (id),
    enabled               bool NOT NULL DEFAULT true,
    -- Comma-separated codes and ranges: '200-399', '200,204', '2xx,301'.
    expected_status_codes text NOT NULL DEFAULT '200-399',
    body_contains         text,
    follow_redirects      bool NOT NULL DEFAULT true,
    max_redirects         int NOT NULL DEFAULT 5,
    verify_tls            bool NOT NULL DEFAULT true,
    ip_family             text NOT NULL DEFAULT 'any',
    -- true: probe from every datacenter, including ones added later. Otherwise the
    -- rows of datacenter_monitors say where.
    all_datacenters       bool NOT NULL DEFAULT false,
    tags                  text[] NOT NULL DEFAULT '{}',
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX api_monitors_schedule_id_idx ON api_monitors (schedule_id);

CREATE FUNCTION vantage_check_monitor() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    part text;
    bounds text[];
BEGIN
    IF btrim(coalesce(NEW.name, '')) = '' THEN
        PERFORM vantage_reject('api_monitors.name', 'must not be empty');
    END IF;
    NEW.method := upper(btrim(NEW.method));
    IF NEW.method IS NULL OR NEW.method NOT IN ('GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS') THEN
        PERFORM vantage_reject('api_monitors.method',
            format('must be one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS (got %s)',
                   coalesce(quote_ident(NEW.method), 'NULL')));
    END IF;
    IF NEW.url IS NULL OR NEW.url !~* '^https?://[^/?#[:space:]]+' THEN
        PERFORM vantage_reject('api_monitors.url',
            format('must use http:// or https:// (got "%s")', coalesce(NEW.url, 'NULL')),
            'write the full URL, such as https://example.com/health');
    END IF;
    IF NEW.expected_status_codes IS NULL
       OR NEW.expected_status_codes !~ '^\s*[1-5]([0-9]{2}|xx)(\s*-\s*[1-5][0-9]{2})?(\s*,\s*[1-5]([0-9]{2}|xx)(\s*-\s*[1-5][0-9]{2})?)*\s*$' THEN
        PERFORM vantage_reject('api_monitors.expected_status_codes',
            format('must be a comma-separated list of status codes (100-599), ranges or classes such as ''200-399'', ''200,204'' or ''2xx,301'' (got %s)',
                   coalesce(quote_literal(NEW.expected_status_codes), 'NULL')));
    END IF;
    FOREACH part IN ARRAY regexp_split_to_array(btrim(NEW.expected_status_codes), '\s*,\s*') LOOP
        bounds := regexp_split_to_array(part, '\s*-\s*');
        IF array_length(bounds, 1) = 2 THEN
            IF bounds[1] ~ 'xx' THEN
                PERFORM vantage_reject('api_monitors.expected_status_codes',
                    format('has a range starting with a class; write ''200-299'' or ''2xx'' (got %s)', quote_literal(part)));
            ELSIF bounds[1]::int > bounds[2]::int THEN
                PERFORM vantage_reject('api_monitors.expected_status_codes',
                    format('has a range whose start is above its end (got %s)', quote_literal(part)));
            END IF;
        END IF;
    END LOOP;
    IF NEW.ip_family IS NULL OR NEW.ip_family NOT IN ('any', 'ipv4', 'ipv6') THEN
        PERFORM vantage_reject('api_monitors.ip_family',
            format('must be ''any'', ''ipv4'' or ''ipv6'' (got %s)', coalesce(quote_literal(NEW.ip_family), 'NULL')));
    END IF;
    IF NEW.max_redirects IS NULL OR NEW.max_redirects < 0 OR NEW.max_redirects > 50 THEN
        PERFORM vantage_reject('api_monitors.max_redirects',
            format('must be between 0 and 50 (got %s)', coalesce(NEW.max_redirects::text, 'NULL')));
    END IF;
    IF jsonb_typeof(NEW.headers) IS DISTINCT FROM 'object'
       OR EXISTS (SELECT 1 FROM jsonb_each(NEW.headers) h WHERE jsonb_typeof(h.value) <> 'string') THEN
        PERFORM vantage_reject('api_monitors.headers',
            format('must be a JSON object of strings such as {"Accept": "application/json"} (got %s)',
                   coalesce(NEW.headers::text, 'NULL')));
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER api_monitors_validate BEFORE INSERT OR UPDATE ON api_monitors
    FOR EACH ROW EXECUTE FUNCTION vantage_check_monitor();
CREATE TRIGGER api_monitors_touch BEFORE UPDATE ON api_monitors
    FOR EACH ROW EXECUTE FUNCTION vantage_touch_updated_at();

-- "Only in va and lon": one row per (datacenter, monitor).
CREATE TABLE datacenter_monitors (
    datacenter_id int NOT NULL REFERENCES datacenters (id) ON DELETE CASCADE,
    monitor_id    int NOT NULL REFERENCES api_monitors (id) ON DELETE CASCADE,
    PRIMARY KEY (datacenter_id, monitor_id)
);

CREATE INDEX datacenter_monitors_monitor_id_idx ON datacenter_monitors (monitor_id);

-- Where each monitor runs: every datacenter for all_datacenters monitors, plus the
-- explicit assignments. The runner selects its datacenter's rows from this view.
CREATE VIEW monitor_assignments AS
    SELECT m.id AS monitor_id, d.id AS datacenter_id
    FROM api_monitors m CROSS JOIN datacenters d
    WHERE m.all_datacenters
    UNION
    SELECT dm.monitor_id, dm.datacenter_id
    FROM datacenter_monitors dm;

CREATE TRIGGER api_monitors_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON api_monitors
    FOR EACH STATEMENT EXECUTE FUNCTION vantage_notify_config_change();
CREATE TRIGGER schedules_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON schedules
    FOR EACH STATEMENT EXECUTE FUNCTION vantage_notify_config_change();
CREATE TRIGGER datacenter_monitors_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON datacenter_monitors
    FOR EACH STATEMENT EXECUTE FUNCTION vantage_notify_config_change();
CREATE TRIGGER datacenters_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON datacenters
    FOR EACH STATEMENT EXECUTE FUNCTION vantage_notify_config_change();

-- ---------------------------------------------------------------------------------
-- Who probes: instances and leadership
-- ---------------------------------------------------------------------------------

CREATE TABLE agents (
    id            bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    datacenter_id int NOT NULL REFERENCES datacenters (id) ON DELETE CASCADE,
    instance_name text NOT NULL,
    hostname      text,
    version       text,
    pid           int,
    started_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    role          text NOT NULL DEFAULT 'standby'
        CONSTRAINT agents_role_check CHECK (role IN ('leader', 'standby', 'stopped')),
    UNIQUE (datacenter_id, instance_name)
);

-- One row per leadership term of a datacenter. The term number is the fencing token
-- stored with every heartbeat the leader writes.
CREATE TABLE leader_terms (
    datacenter_id int NOT NULL REFERENCES datacenters (id) ON DELETE CASCADE,
    term          bigint NOT NULL,
    agent_id      bigint REFERENCES agents (id) ON DELETE SET NULL,
    acquired_at   timestamptz NOT NULL DEFAULT now(),
    released_at   timestamptz,
    PRIMARY KEY (datacenter_id, term)
);

CREATE INDEX leader_terms_agent_id_idx ON leader_terms (agent_id);

-- ---------------------------------------------------------------------------------
-- Results
-- ---------------------------------------------------------------------------------

-- One row per probe slot. No foreign keys on purpose: this is the hot, partitioned
-- table; heartbeats outlive deleted monitors as history, and the writer must never be
-- blocked by a configuration change.
CREATE TABLE api_heartbeats (
    monitor_id          int NOT NULL,
    datacenter_id       int NOT NULL,
    -- The deterministic slot; with the two ids it is the key, so an overlap of two
    -- leaders stores each slot once.
    scheduled_at        timestamptz NOT NULL,
    executed_at         timestamptz NOT NULL,
    agent_id            bigint,
    leader_term         bigint,
    status              text NOT NULL
        CONSTRAINT api_heartbeats_status_check CHECK (status IN ('up', 'warning', 'critical', 'down')),
    success             bool NOT NULL,
    http_status         int,
    -- Per-phase durations in milliseconds with microsecond precision; NULL when the
    -- phase did not happen (no DNS for an IP literal, no TLS for http://).
    dns_ms              double precision,
    connect_ms          double precision,
    tls_ms              double precision,
    ttfb_ms             double precision,
    transfer_ms         double precision,
    total_ms            double precision NOT NULL,
    schedule_lag_ms     double precision,
    response_size_bytes bigint,
    remote_ip           inet,
    http_version        text,
    tls_version         text,
    tls_cert_expires_at timestamptz,
    redirect_count      int NOT NULL DEFAULT 0,
    error_kind          text
        CONSTRAINT api_heartbeats_error_kind_check CHECK (error_kind IN (
            'dns_nxdomain', 'dns_timeout', 'dns_error',
            'connect_refused', 'connect_timeout', 'connect_error',
            'tls_handshake', 'tls_certificate', 'timeout', 'http_protocol',
            'status_mismatch', 'body_mismatch', 'body_too_large',
            'redirect_loop', 'too_many_redirects', 'invalid_request')),
    error_message       text,
    response_body       text,
    PRIMARY KEY (monitor_id, datacenter_id, scheduled_at)
) PARTITION BY RANGE (scheduled_at);

-- Time-range scans (uptime over a window, percentiles, error breakdowns) use a BRIN
-- index, created on every partition; ~1000x smaller than a btree with similar range
-- scan speed. Per-monitor lookups use the primary key.
CREATE INDEX api_heartbeats_scheduled_at_brin ON api_heartbeats USING brin (scheduled_at);

-- Creates the partition holding `day` (UTC) if it is missing; true when created.
-- Safe to call from several instances at once.
CREATE FUNCTION vantage_ensure_heartbeat_partition(day date) RETURNS bool
LANGUAGE plpgsql AS $$
DECLARE
    part_name text := 'api_heartbeats_' || to_char(day, 'YYYYMMDD');
BEGIN
    IF to_regclass(part_name) IS NOT NULL THEN
        RETURN false;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('vantage.api_heartbeats.partitions'));
    IF to_regclass(part_name) IS NOT NULL THEN
        RETURN false;
    END IF;
    BEGIN
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF api_heartbeats FOR VALUES FROM (%L) TO (%L)',
            part_name,
            (day::timestamp AT TIME ZONE 'UTC'),
            ((day + 1)::timestamp AT TIME ZONE 'UTC'));
    EXCEPTION WHEN duplicate_table OR unique_violation THEN
        -- Created by another session whose commit our catalog snapshot missed.
        RETURN false;
    END;
    RETURN true;
END
$$;

-- Drops every daily partition whose whole day is older than `retention_days` days
-- before today (UTC); returns the names dropped.
CREATE FUNCTION vantage_drop_heartbeat_partitions(retention_days int) RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    part record;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('vantage.api_heartbeats.partitions'));
    FOR part IN
        SELECT c.relname
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'api_heartbeats'::regclass
          AND c.relname ~ '^api_heartbeats_[0-9]{8}$'
          AND to_date(right(c.relname, 8), 'YYYYMMDD')
              < (now() AT TIME ZONE 'UTC')::date - retention_days
        ORDER BY c.relname
    LOOP
        EXECUTE format('DROP TABLE %I', part.relname);
        RETURN NEXT part.relname;
    END LOOP;
END
$$;
