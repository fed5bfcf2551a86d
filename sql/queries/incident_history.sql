-- Incident history over the last 30 days, per monitor (and per impaired datacenter)
-- and kind, worst first: how often, how long until resolved (MTTR), the longest, and
-- the total time in incident (for monitor_down, the downtime).
--
-- Counts incidents opened in the window (change it in the `params` line); one still
-- open counts up to now in longest and total_duration but not in
-- mean_time_to_resolve, which covers the resolved ones. An incident opened before
-- the window is left out. A monitor has at most one open incident per kind, so its
-- incidents of one kind never overlap and total_duration is time, not a sum of
-- overlaps.
--
-- Cost: the index on incidents.opened_at serves the window; a month of history is a
-- few thousand rows even for a large fleet.
--
-- columns: subject, kind, incidents, resolved, mean_time_to_resolve, longest, total_duration, last_opened_at
WITH params AS (
    SELECT now() - interval '30 days' AS since
)
SELECT coalesce(m.name, d.code, '#' || coalesce(i.monitor_id, i.datacenter_id)) AS subject,
       i.kind,
       count(*) AS incidents,
       count(i.resolved_at) AS resolved,
       date_trunc('second', avg(i.resolved_at - i.opened_at)) AS mean_time_to_resolve,
       date_trunc('second', max(coalesce(i.resolved_at, now()) - i.opened_at)) AS longest,
       date_trunc('second', sum(coalesce(i.resolved_at, now()) - i.opened_at)) AS total_duration,
       max(i.opened_at) AS last_opened_at
FROM incidents i
CROSS JOIN params p
LEFT JOIN api_monitors m ON m.id = i.monitor_id
LEFT JOIN datacenters d ON d.id = i.datacenter_id
WHERE i.opened_at >= p.since
GROUP BY i.monitor_id, i.datacenter_id, m.name, d.code, i.kind
ORDER BY sum(coalesce(i.resolved_at, now()) - i.opened_at) DESC, subject, i.kind;
