-- Missed slots per monitor and datacenter over the last 24 hours: slots a datacenter
-- never probed (no leader, a stalled prober, the datacenter in trouble), most first.
--
-- A gap is not a failure: nothing was measured, so it counts neither for nor against
-- uptime and never towards an incident (error_breakdown.sql lists the failures). A
-- gap is a stretch between two stored heartbeats (or a window edge) longer than one
-- interval; see vantage_missed_slots in sql/migrations/20261130000100_incidents.sql.
-- Only monitors on an interval schedule are covered (cron slots are not evenly
-- spaced). A slot is missed only once its result is overdue (interval + timeout).
-- longest_gap is the largest gap's missed slots times the interval; last_gap_from
-- and last_gap_to are the first and last missed slots of the most recent gap. Change the window in the
-- `params` line; a monitor created inside the window shows the time before it as
-- one gap.
--
-- Cost: reads every heartbeat of the window once, per assignment by primary key:
-- 4 s on a 2-vCPU machine for 1.3 M heartbeats (100 monitors x 9 datacenters,
-- minutely, 24 h), so ~40 s for 1,000 such monitors; shorten the window for a large
-- fleet.
--
-- columns: monitor, datacenter, gaps, missed_slots, longest_gap, last_gap_from, last_gap_to
WITH params AS (
    SELECT now() - interval '24 hours' AS since, now() AS until
),
gaps AS (
    SELECT g.monitor_id, g.datacenter_id, g.missed,
           make_interval(secs => s.interval_seconds) AS every,
           -- The first missed slot: one interval after the last heartbeat before the
           -- gap, or (at the window's start) counted back from the one after it.
           coalesce(g.after_slot + make_interval(secs => s.interval_seconds),
                    g.before_slot - make_interval(secs => s.interval_seconds * g.missed)) AS first_missed
    FROM params p
    CROSS JOIN vantage_missed_slots(p.since, p.until) g
    JOIN api_monitors m ON m.id = g.monitor_id
    JOIN schedules s ON s.id = m.schedule_id
)
SELECT m.name AS monitor,
       d.code AS datacenter,
       count(*) AS gaps,
       sum(g.missed) AS missed_slots,
       max(g.missed) * min(g.every) AS longest_gap,
       max(g.first_missed) AS last_gap_from,
       (array_agg(g.first_missed + (g.missed - 1) * g.every ORDER BY g.first_missed DESC))[1] AS last_gap_to
FROM gaps g
JOIN api_monitors m ON m.id = g.monitor_id
JOIN datacenters d ON d.id = g.datacenter_id
GROUP BY m.name, d.code
ORDER BY missed_slots DESC, m.name, d.code;
