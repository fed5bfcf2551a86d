-- Counts that leave maintenance out. Heartbeats taken during planned work
-- (maintenance_windows, 20261130000100_incidents.sql) are recognised by
-- vantage_in_maintenance(monitor, datacenter, at); these functions apply it to ranges
-- without asking it about every heartbeat:
--
--   vantage_maintenance_periods   when each monitor was in maintenance in each
--                                 datacenter during a range (disjoint periods)
--   vantage_status_counts_excluding_maintenance
--                                 vantage_status_counts minus the heartbeats inside
--                                 those periods, and how many they were
--
-- Both read the windows as they are now (scope, tags): like vantage_in_maintenance.

-- The periods in [from_ts, to_ts) during which `monitor_id` was in maintenance in
-- `datacenter_id`, for every monitor and datacenter that exist (NULL monitor_ids /
-- datacenter_ids: all). A pair's periods are disjoint and merged, so joining
-- api_heartbeats on (monitor_id, datacenter_id, scheduled_at in [starts_at, ends_at))
-- finds each heartbeat taken during maintenance once, even where windows overlap, and
-- walks the primary key.
--
-- The starts and ends of the occurrences cut the range into stretches in which the
-- same occurrences are active, so vantage_in_maintenance answers the same anywhere
-- in a stretch: it is asked once per pair and stretch in maintenance (~30 us each),
-- never per heartbeat. 900 pairs and two overlapping windows cost ~0.15 s on a
-- 2-vCPU machine whatever the heartbeat rate; a range without maintenance costs
-- nothing.
--
-- Never inlined (the SET clause sees to it), so that callers plan with its small
-- ROWS estimate: one primary-key range per period, not a merge over every heartbeat
-- of the range. JIT is off because compiling took longer than running (0.7 s).
CREATE FUNCTION vantage_maintenance_periods(
    from_ts timestamptz,
    to_ts timestamptz,
    monitor_ids int[] DEFAULT NULL,
    datacenter_ids int[] DEFAULT NULL)
RETURNS TABLE (monitor_id int, datacenter_id int, starts_at timestamptz, ends_at timestamptz)
LANGUAGE sql STABLE ROWS 100 SET jit = off AS $$
    WITH occurrences AS (
        SELECT greatest(o.starts_at, from_ts) AS starts_at, least(o.ends_at, to_ts) AS ends_at
        FROM maintenance_occurrences o
        WHERE o.starts_at < to_ts AND o.ends_at > from_ts
    ),
    cuts AS (
        SELECT o.starts_at AS at FROM occurrences o
        UNION
        SELECT o.ends_at FROM occurrences o
    ),
    stretches AS (
        SELECT c.at AS starts_at, lead(c.at) OVER (ORDER BY c.at) AS ends_at
        FROM cuts c
    ),
    covered AS (
        -- Not the stretches between two occurrences.
        SELECT s.starts_at, s.ends_at
        FROM stretches s
        WHERE s.ends_at IS NOT NULL
          AND EXISTS (SELECT 1 FROM occurrences o
                      WHERE o.starts_at <= s.starts_at AND s.starts_at < o.ends_at)
    ),
    planned AS (
        -- IN (SELECT unnest(..)) hashes the list: Grafana's "All" passes every id.
        SELECT m.id AS monitor_id, d.id AS datacenter_id,
               tstzrange(c.starts_at, c.ends_at) AS during
        FROM covered c
        CROSS JOIN api_monitors m
        CROSS JOIN datacenters d
        WHERE (vantage_maintenance_periods.monitor_ids IS NULL
               OR m.id IN (SELECT unnest(vantage_maintenance_periods.monitor_ids)))
          AND (vantage_maintenance_periods.datacenter_ids IS NULL
               OR d.id IN (SELECT unnest(vantage_maintenance_periods.datacenter_ids)))
          AND vantage_in_maintenance(m.id, d.id, c.starts_at)
    )
    SELECT p.monitor_id, p.datacenter_id, lower(r.during), upper(r.during)
    FROM (SELECT monitor_id, datacenter_id, range_agg(during) AS periods
          FROM planned GROUP BY monitor_id, datacenter_id) p
    CROSS JOIN LATERAL unnest(p.periods) AS r (during)
$$;

-- vantage_status_counts (20261125000200_heartbeat_rollups.sql) for the same range,
-- with the heartbeats taken during maintenance subtracted, and `maintenance_probes`:
-- how many were. Only the raw heartbeats inside maintenance are read (maintenance is
-- short), so the cost stays that of vantage_status_counts plus
-- vantage_maintenance_periods and a primary-key range per pair in maintenance.
--
-- Precision: the subtraction is exact to the occurrence for [from_ts, to_ts), while
-- over a day vantage_status_counts widens the ends to whole hours (over a week, to
-- whole UTC days). At those widened edges a heartbeat in maintenance that falls
-- outside [from_ts, to_ts) is counted by the rollups and not subtracted. Rollups are
-- as fresh as their last refresh while the subtraction reads raw rows, so in an hour
-- not refreshed yet it could take away more than was counted: counts stop at zero.
-- A monitor whose every probe was in maintenance keeps its row, with probes = 0.
CREATE FUNCTION vantage_status_counts_excluding_maintenance(
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
    down_count bigint,
    maintenance_probes bigint)
LANGUAGE sql STABLE AS $$
    WITH planned AS (
        SELECT h.monitor_id, h.datacenter_id, count(*) AS probes,
               count(*) FILTER (WHERE h.success) AS successes,
               count(*) FILTER (WHERE h.status = 'up') AS up_count,
               count(*) FILTER (WHERE h.status = 'warning') AS warning_count,
               count(*) FILTER (WHERE h.status = 'critical') AS critical_count,
               count(*) FILTER (WHERE h.status = 'down') AS down_count
        FROM vantage_maintenance_periods(from_ts, to_ts, monitor_ids, datacenter_ids) p
        JOIN api_heartbeats h
          ON h.monitor_id = p.monitor_id AND h.datacenter_id = p.datacenter_id
         AND h.scheduled_at >= p.starts_at AND h.scheduled_at < p.ends_at
        GROUP BY h.monitor_id, h.datacenter_id
    )
    SELECT c.monitor_id, c.datacenter_id,
           greatest(c.probes - coalesce(k.probes, 0), 0),
           greatest(c.successes - coalesce(k.successes, 0), 0),
           greatest(c.up_count - coalesce(k.up_count, 0), 0),
           greatest(c.warning_count - coalesce(k.warning_count, 0), 0),
           greatest(c.critical_count - coalesce(k.critical_count, 0), 0),
           greatest(c.down_count - coalesce(k.down_count, 0), 0),
           coalesce(k.probes, 0)
    FROM vantage_status_counts(from_ts, to_ts, monitor_ids, datacenter_ids) c
    LEFT JOIN planned k ON k.monitor_id = c.monitor_id AND k.datacenter_id = c.datacenter_id
$$;

-- Functions are executable by PUBLIC by default; say it for the reader explicitly, so
-- that a later REVOKE ... FROM PUBLIC does not take the dashboards' away.
GRANT EXECUTE ON FUNCTION vantage_maintenance_periods(timestamptz, timestamptz, int[], int[])
    TO vantage_reader;
GRANT EXECUTE ON FUNCTION vantage_status_counts_excluding_maintenance(timestamptz, timestamptz, int[], int[])
    TO vantage_reader;
