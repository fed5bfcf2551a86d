-- Uptime per monitor and datacenter over a window (default: the last 24 hours),
-- leaving out the heartbeats taken during maintenance: uptime.sql's variant for
-- reports that should not count planned work against a target.
--
-- Probing goes on during maintenance windows (maintenance_windows, scoped to
-- monitors, tags or datacenters; one-off or recurring); `in_maintenance` says how
-- many heartbeats were left out. A heartbeat is in maintenance when
-- vantage_in_maintenance(monitor, datacenter, scheduled_at) says so;
-- vantage_maintenance_periods applies it once per monitor, datacenter and stretch of
-- maintenance, so a heartbeat covered by two overlapping windows is left out once.
-- uptime_percent is NULL when every heartbeat was in maintenance. Change the window in
-- the `params` line; in Grafana use $__timeFrom() and $__timeTo() there. For long
-- ranges, vantage_status_counts_excluding_maintenance reads the rollups instead.
--
-- Cost: that of uptime.sql (every heartbeat of the window, by the BRIN index on
-- scheduled_at) plus vantage_maintenance_periods (~0.15 s for 900 monitor-datacenter
-- pairs and two overlapping windows). Measured on a 2-vCPU machine over 1.3 M
-- heartbeats (100 monitors x 9 datacenters, minutely, 24 h): 1.5 s, as uptime.sql.
--
-- columns: monitor, datacenter, checks, up, down, uptime_percent, in_maintenance, first_check, last_check
WITH params AS (
    SELECT now() - interval '24 hours' AS since, now() AS until
),
planned AS (
    SELECT k.*
    FROM params p
    CROSS JOIN vantage_maintenance_periods(p.since, p.until) k
)
SELECT m.name AS monitor,
       d.code AS datacenter,
       count(*) FILTER (WHERE k.monitor_id IS NULL) AS checks,
       count(*) FILTER (WHERE k.monitor_id IS NULL AND h.success) AS up,
       count(*) FILTER (WHERE k.monitor_id IS NULL AND NOT h.success) AS down,
       round(100.0 * count(*) FILTER (WHERE k.monitor_id IS NULL AND h.success)
             / nullif(count(*) FILTER (WHERE k.monitor_id IS NULL), 0), 3) AS uptime_percent,
       count(k.monitor_id) AS in_maintenance,
       min(h.scheduled_at) AS first_check,
       max(h.scheduled_at) AS last_check
FROM api_heartbeats h
CROSS JOIN params p
LEFT JOIN planned k
       ON k.monitor_id = h.monitor_id AND k.datacenter_id = h.datacenter_id
      AND h.scheduled_at >= k.starts_at AND h.scheduled_at < k.ends_at
JOIN api_monitors m ON m.id = h.monitor_id
JOIN datacenters d ON d.id = h.datacenter_id
WHERE h.scheduled_at >= p.since AND h.scheduled_at < p.until
GROUP BY m.name, d.code
ORDER BY uptime_percent NULLS LAST, m.name, d.code;
