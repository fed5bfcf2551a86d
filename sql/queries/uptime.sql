-- Uptime per monitor and datacenter over a window (default: the last 24 hours).
--
-- A heartbeat counts as up when `success` (status up, warning or critical: a slow
-- answer is still an answer); `down` counts against uptime. Change the window in the
-- `params` line; in Grafana replace the WHERE clause on scheduled_at with
-- $__timeFilter(h.scheduled_at). The time filter prunes partitions and uses the BRIN
-- index on scheduled_at.
--
-- columns: monitor, datacenter, checks, up, down, uptime_percent, first_check, last_check
WITH params AS (
    SELECT now() - interval '24 hours' AS since, now() AS until
)
SELECT m.name AS monitor,
       d.code AS datacenter,
       count(*) AS checks,
       count(*) FILTER (WHERE h.success) AS up,
       count(*) FILTER (WHERE NOT h.success) AS down,
       round(100.0 * count(*) FILTER (WHERE h.success) / count(*), 3) AS uptime_percent,
       min(h.scheduled_at) AS first_check,
       max(h.scheduled_at) AS last_check
FROM api_heartbeats h
CROSS JOIN params p
JOIN api_monitors m ON m.id = h.monitor_id
JOIN datacenters d ON d.id = h.datacenter_id
WHERE h.scheduled_at >= p.since AND h.scheduled_at < p.until
GROUP BY m.name, d.code
ORDER BY uptime_percent, m.name, d.code;
