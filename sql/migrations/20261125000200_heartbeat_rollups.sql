-- Rollups of api_heartbeats for long time ranges (dashboards over days and weeks):
--
--   api_heartbeats_hourly  one row per monitor, datacenter and UTC hour: probe and
--                          status counts, error counts, and per-phase count, sum, min,
--                          max and p50/p95/p99 (exact, percentile_cont over the hour)
--   api_heartbeats_daily   one row per monitor, datacenter and UTC day: the counts only,
--                          so a 30-day uptime over 1,000 monitors x 9 datacenters reads
--                          270,000 narrow rows instead of 6.5 million
--
-- Both are maintained by `vantage::rollup::refresh` from the leader's housekeeping:
-- it recomputes every hour (and day) touched by a lookback window with
-- INSERT ... ON CONFLICT DO UPDATE, so rows that arrive late (replayed from a spool)
-- are counted on the next refresh. Latency figures cover successful probes only (a
-- failed probe's total_ms is the time until it failed); failures are in the counts.
--
-- Read them through the functions at the end, which pick the cheapest source for a
-- range and stay exact at its edges.

CREATE TABLE api_heartbeats_hourly (
    monitor_id          int NOT NULL,
    datacenter_id       int NOT NULL,
    -- Start of the UTC hour.
    hour                timestamptz NOT NULL,
    probes              int NOT NULL,
    successes           int NOT NULL,
    up_count            int NOT NULL,
    warning_count       int NOT NULL,
    critical_count      int NOT NULL,
    down_count          int NOT NULL,
    -- Failures by error_kind: {"timeout": 3, "connect_refused": 1}.
    errors              jsonb NOT NULL DEFAULT '{}',
    -- Per phase, over successful probes where the phase happened (count = how many).
    dns_ms_count int NOT NULL DEFAULT 0,
    dns_ms_sum double precision,
    dns_ms_min double precision,
    dns_ms_max double precision,
    dns_ms_p50 double precision,
    dns_ms_p95 double precision,
    dns_ms_p99 double precision,
    connect_ms_count int NOT NULL DEFAULT 0,
    connect_ms_sum double precision,
    connect_ms_min double precision,
    connect_ms_max double precision,
    connect_ms_p50 double precision,
    connect_ms_p95 double precision,
    connect_ms_p99 double precision,
    tls_ms_count int NOT NULL DEFAULT 0,
    tls_ms_sum double precision,
    tls_ms_min double precision,
    tls_ms_max double precision,
    tls_ms_p50 double precision,
    tls_ms_p95 double precision,
    tls_ms_p99 double precision,
    ttfb_ms_count int NOT NULL DEFAULT 0,
    ttfb_ms_sum double precision,
    ttfb_ms_min double precision,
    ttfb_ms_max double precision,
    ttfb_ms_p50 double precision,
    ttfb_ms_p95 double precision,
    ttfb_ms_p99 double precision,
    transfer_ms_count int NOT NULL DEFAULT 0,
    transfer_ms_sum double precision,
    transfer_ms_min double precision,
    transfer_ms_max double precision,
    transfer_ms_p50 double precision,
    transfer_ms_p95 double precision,
    transfer_ms_p99 double precision,
    total_ms_count int NOT NULL DEFAULT 0,
    total_ms_sum double precision,
    total_ms_min double precision,
    total_ms_max double precision,
    total_ms_p50 double precision,
    total_ms_p95 double precision,
    total_ms_p99 double precision,
    schedule_lag_ms_count int NOT NULL DEFAULT 0,
    schedule_lag_ms_sum   double precision,
    schedule_lag_ms_max   double precision,
    schedule_lag_ms_p95   double precision,
    -- The certificate expiry reported by the hour's last probe that reported one.
    tls_cert_expires_at timestamptz,
    refreshed_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (monitor_id, datacenter_id, hour)
);

-- Range reads across all monitors (the edges of long ranges, "latest hour" panels).
CREATE INDEX api_heartbeats_hourly_hour_idx ON api_heartbeats_hourly (hour);

CREATE TABLE api_heartbeats_daily (
    monitor_id     int NOT NULL,
    datacenter_id  int NOT NULL,
    -- Start of the UTC day.
    day            timestamptz NOT NULL,
    probes         int NOT NULL,
    successes      int NOT NULL,
    up_count       int NOT NULL,
    warning_count  int NOT NULL,
    critical_count int NOT NULL,
    down_count     int NOT NULL,
    refreshed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (monitor_id, datacenter_id, day)
);

CREATE INDEX api_heartbeats_daily_day_idx ON api_heartbeats_daily (day);

-- The reader role (20261125000100_grafana_reader.sql) gets these explicitly, whoever
-- runs this migration.
GRANT SELECT ON api_heartbeats_hourly, api_heartbeats_daily TO vantage_reader;

-- Probe counts per monitor and datacenter for scheduled_at in [from_ts, to_ts): whole
-- UTC days come from api_heartbeats_daily, the remaining whole hours from
-- api_heartbeats_hourly, the partial hours at the ends from api_heartbeats. Precision
-- follows the range, so that a month over thousands of monitors stays fast:
--   up to 1 day   exact (raw rows at the ends)
--   up to 7 days  the ends widen to whole hours (no raw rows)
--   longer        the ends widen to whole UTC days (daily rows only)
-- NULL monitor_ids / datacenter_ids mean all. Rollups are as fresh as the last
-- refresh.
CREATE FUNCTION vantage_status_counts(
    from_ts timestamptz,
    to_ts timestamptz,
    monitor_ids int[] DEFAULT NULL,
    datacenter_ids int[] DEFAULT NULL)
RETURNS TABLE (
    monitor_id int,
    datacenter_id int,
    probes bigint,
    successes bigint,
    up_count bigint,
    warning_count bigint,
    critical_count bigint,
    down_count bigint)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE
    h_from timestamptz := date_trunc('hour', from_ts, 'UTC');
    h_to   timestamptz := date_trunc('hour', to_ts, 'UTC');
    d_from timestamptz;
    d_to   timestamptz;
BEGIN
    -- Grafana's "All" lists every id: read everything instead of testing each row
    -- against a thousand-element list.
    IF monitor_ids @> (SELECT coalesce(array_agg(id), '{}') FROM api_monitors) THEN
        monitor_ids := NULL;
    END IF;
    IF datacenter_ids @> (SELECT coalesce(array_agg(id), '{}') FROM datacenters) THEN
        datacenter_ids := NULL;
    END IF;
    IF to_ts - from_ts > interval '7 days' THEN
        -- Weeks and months: the ends widen to whole UTC days and only the daily table
        -- is read (today's row is as fresh as the last refresh). 30 days of 9,000
        -- series is then 270,000 narrow rows.
        h_from := date_trunc('day', from_ts, 'UTC');
        h_to := date_trunc('day', to_ts, 'UTC');
        IF h_to < to_ts THEN
            h_to := h_to + interval '1 day';
        END IF;
        from_ts := h_from;
        to_ts := h_to;
    ELSIF to_ts - from_ts > interval '1 day' THEN
        -- A long range: whole hours are precise enough, and reading no raw rows keeps
        -- 30 days over thousands of monitors fast. The ends widen to whole hours; the
        -- newest hour is as fresh as the last refresh.
        IF h_to < to_ts THEN
            h_to := h_to + interval '1 hour';
        END IF;
        from_ts := h_from;
        to_ts := h_to;
    ELSIF h_from < from_ts THEN
        h_from := h_from + interval '1 hour';
    END IF;
    IF h_from >= h_to THEN
        -- No whole hour inside: everything is raw.
        h_from := to_ts;
        h_to := to_ts;
    END IF;
    d_from := date_trunc('day', h_from, 'UTC');
    IF d_from < h_from THEN
        d_from := d_from + interval '1 day';
    END IF;
    d_to := date_trunc('day', h_to, 'UTC');
    IF d_from >= d_to THEN
        -- No whole day inside: whole hours come from the hourly table.
        d_from := h_to;
        d_to := h_to;
    END IF;

    -- EXECUTE plans with the actual values every time: the NULL checks fold away and
    -- the id lists become constants the planner can use against the primary keys.
    RETURN QUERY EXECUTE $q$
    WITH parts AS (
        -- Each source is summed per series first, so the final merge is small.
        SELECT r.monitor_id, r.datacenter_id,
               sum(r.probes)::bigint AS probes, sum(r.successes)::bigint AS successes,
               sum(r.up_count)::bigint AS up_count, sum(r.warning_count)::bigint AS warning_count,
               sum(r.critical_count)::bigint AS critical_count, sum(r.down_count)::bigint AS down_count
        FROM api_heartbeats_daily r
        WHERE r.day >= $3 AND r.day < $4
          AND ($1 IS NULL OR r.monitor_id = ANY ($1))
          AND ($2 IS NULL OR r.datacenter_id = ANY ($2))
        GROUP BY r.monitor_id, r.datacenter_id
        UNION ALL
        SELECT r.monitor_id, r.datacenter_id, sum(r.probes), sum(r.successes),
               sum(r.up_count), sum(r.warning_count), sum(r.critical_count), sum(r.down_count)
        FROM api_heartbeats_hourly r
        WHERE ((r.hour >= $5 AND r.hour < $3) OR (r.hour >= $4 AND r.hour < $6))
          AND ($1 IS NULL OR r.monitor_id = ANY ($1))
          AND ($2 IS NULL OR r.datacenter_id = ANY ($2))
        GROUP BY r.monitor_id, r.datacenter_id
        UNION ALL
        SELECT r.monitor_id, r.datacenter_id, count(*), count(*) FILTER (WHERE r.success),
               count(*) FILTER (WHERE r.status = 'up'),
               count(*) FILTER (WHERE r.status = 'warning'),
               count(*) FILTER (WHERE r.status = 'critical'),
               count(*) FILTER (WHERE r.status = 'down')
        FROM api_heartbeats r
        WHERE ((r.scheduled_at >= $7 AND r.scheduled_at < $5)
               OR (r.scheduled_at >= $6 AND r.scheduled_at < $8))
          AND ($1 IS NULL OR r.monitor_id = ANY ($1))
          AND ($2 IS NULL OR r.datacenter_id = ANY ($2))
        GROUP BY r.monitor_id, r.datacenter_id
    )
    SELECT p.monitor_id, p.datacenter_id,
           sum(p.probes)::bigint, sum(p.successes)::bigint,
           sum(p.up_count)::bigint, sum(p.warning_count)::bigint,
           sum(p.critical_count)::bigint, sum(p.down_count)::bigint
    FROM parts p
    GROUP BY p.monitor_id, p.datacenter_id
    $q$ USING monitor_ids, datacenter_ids, d_from, d_to, h_from, h_to, from_ts, to_ts;
END
$$;

-- Time buckets of `bucket` width (aligned to UTC midnight) per monitor and datacenter
-- for scheduled_at in [from_ts, to_ts). Ranges up to one day read api_heartbeats
-- (exact percentiles); longer ones read api_heartbeats_hourly with buckets of at least
-- an hour, where a bucket's percentiles are the probe-weighted mean of its hours'
-- percentiles (max is exact). Phase columns are means over successful probes.
CREATE FUNCTION vantage_buckets(
    from_ts timestamptz,
    to_ts timestamptz,
    bucket interval,
    monitor_ids int[] DEFAULT NULL,
    datacenter_ids int[] DEFAULT NULL)
RETURNS TABLE (
    "time" timestamptz,
    monitor_id int,
    datacenter_id int,
    probes bigint,
    successes bigint,
    up_count bigint,
    warning_count bigint,
    critical_count bigint,
    down_count bigint,
    dns_ms double precision,
    connect_ms double precision,
    tls_ms double precision,
    ttfb_ms double precision,
    transfer_ms double precision,
    total_ms double precision,
    total_ms_p50 double precision,
    total_ms_p95 double precision,
    total_ms_p99 double precision,
    total_ms_max double precision,
    schedule_lag_ms double precision,
    schedule_lag_ms_max double precision)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE
    origin constant timestamptz := '2000-01-01 00:00:00+00';
BEGIN
    IF bucket IS NULL OR bucket <= interval '0' THEN
        bucket := interval '1 minute';
    END IF;
    IF to_ts - from_ts <= interval '1 day' THEN
        RETURN QUERY EXECUTE $q$
        SELECT date_bin($3, r.scheduled_at, $4), r.monitor_id, r.datacenter_id,
               count(*), count(*) FILTER (WHERE r.success),
               count(*) FILTER (WHERE r.status = 'up'),
               count(*) FILTER (WHERE r.status = 'warning'),
               count(*) FILTER (WHERE r.status = 'critical'),
               count(*) FILTER (WHERE r.status = 'down'),
               avg(r.dns_ms) FILTER (WHERE r.success),
               avg(r.connect_ms) FILTER (WHERE r.success),
               avg(r.tls_ms) FILTER (WHERE r.success),
               avg(r.ttfb_ms) FILTER (WHERE r.success),
               avg(r.transfer_ms) FILTER (WHERE r.success),
               avg(r.total_ms) FILTER (WHERE r.success),
               percentile_cont(0.5) WITHIN GROUP (ORDER BY r.total_ms) FILTER (WHERE r.success),
               percentile_cont(0.95) WITHIN GROUP (ORDER BY r.total_ms) FILTER (WHERE r.success),
               percentile_cont(0.99) WITHIN GROUP (ORDER BY r.total_ms) FILTER (WHERE r.success),
               max(r.total_ms) FILTER (WHERE r.success),
               avg(r.schedule_lag_ms), max(r.schedule_lag_ms)
        FROM api_heartbeats r
        WHERE r.scheduled_at >= $5 AND r.scheduled_at < $6
          AND ($1 IS NULL OR r.monitor_id = ANY ($1))
          AND ($2 IS NULL OR r.datacenter_id = ANY ($2))
        GROUP BY 1, 2, 3
        $q$ USING monitor_ids, datacenter_ids, bucket, origin, from_ts, to_ts;
    ELSE
        bucket := greatest(bucket, interval '1 hour');
        RETURN QUERY EXECUTE $q$
        SELECT date_bin($3, r.hour, $4), r.monitor_id, r.datacenter_id,
               sum(r.probes)::bigint, sum(r.successes)::bigint,
               sum(r.up_count)::bigint, sum(r.warning_count)::bigint,
               sum(r.critical_count)::bigint, sum(r.down_count)::bigint,
               sum(r.dns_ms_sum) / nullif(sum(r.dns_ms_count), 0),
               sum(r.connect_ms_sum) / nullif(sum(r.connect_ms_count), 0),
               sum(r.tls_ms_sum) / nullif(sum(r.tls_ms_count), 0),
               sum(r.ttfb_ms_sum) / nullif(sum(r.ttfb_ms_count), 0),
               sum(r.transfer_ms_sum) / nullif(sum(r.transfer_ms_count), 0),
               sum(r.total_ms_sum) / nullif(sum(r.total_ms_count), 0),
               sum(r.total_ms_p50 * r.total_ms_count) / nullif(sum(r.total_ms_count), 0),
               sum(r.total_ms_p95 * r.total_ms_count) / nullif(sum(r.total_ms_count), 0),
               sum(r.total_ms_p99 * r.total_ms_count) / nullif(sum(r.total_ms_count), 0),
               max(r.total_ms_max),
               sum(r.schedule_lag_ms_sum) / nullif(sum(r.schedule_lag_ms_count), 0),
               max(r.schedule_lag_ms_max)
        FROM api_heartbeats_hourly r
        WHERE r.hour >= date_trunc('hour', $5, 'UTC') AND r.hour < $6
          AND ($1 IS NULL OR r.monitor_id = ANY ($1))
          AND ($2 IS NULL OR r.datacenter_id = ANY ($2))
        GROUP BY 1, 2, 3
        $q$ USING monitor_ids, datacenter_ids, bucket, origin, from_ts, to_ts;
    END IF;
END
$$;

-- Failures per bucket, datacenter and error_kind, with the same sources as
-- vantage_buckets.
CREATE FUNCTION vantage_error_buckets(
    from_ts timestamptz,
    to_ts timestamptz,
    bucket interval,
    monitor_ids int[] DEFAULT NULL,
    datacenter_ids int[] DEFAULT NULL)
RETURNS TABLE ("time" timestamptz, monitor_id int, datacenter_id int, error_kind text, failures bigint)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE
    origin constant timestamptz := '2000-01-01 00:00:00+00';
BEGIN
    IF bucket IS NULL OR bucket <= interval '0' THEN
        bucket := interval '1 minute';
    END IF;
    IF to_ts - from_ts <= interval '1 day' THEN
        RETURN QUERY EXECUTE $q$
        SELECT date_bin($3, r.scheduled_at, $4), r.monitor_id, r.datacenter_id,
               r.error_kind, count(*)
        FROM api_heartbeats r
        WHERE r.scheduled_at >= $5 AND r.scheduled_at < $6
          AND r.error_kind IS NOT NULL
          AND ($1 IS NULL OR r.monitor_id = ANY ($1))
          AND ($2 IS NULL OR r.datacenter_id = ANY ($2))
        GROUP BY 1, 2, 3, 4
        $q$ USING monitor_ids, datacenter_ids, bucket, origin, from_ts, to_ts;
    ELSE
        bucket := greatest(bucket, interval '1 hour');
        RETURN QUERY EXECUTE $q$
        SELECT date_bin($3, r.hour, $4), r.monitor_id, r.datacenter_id,
               e.key, sum(e.value::bigint)::bigint
        FROM api_heartbeats_hourly r
        CROSS JOIN LATERAL jsonb_each_text(r.errors) e
        WHERE r.hour >= date_trunc('hour', $5, 'UTC') AND r.hour < $6
          AND r.errors <> '{}'
          AND ($1 IS NULL OR r.monitor_id = ANY ($1))
          AND ($2 IS NULL OR r.datacenter_id = ANY ($2))
        GROUP BY 1, 2, 3, 4
        $q$ USING monitor_ids, datacenter_ids, bucket, origin, from_ts, to_ts;
    END IF;
END
$$;
