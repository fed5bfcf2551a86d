-- Open incidents, newest first: what is wrong right now, who is on it, and why.
--
-- subject is the monitor (monitor_down, monitor_degraded) or the datacenter
-- (datacenter_impaired: a prober's own trouble, not the target's); datacenters are
-- those counting it failing now. `vantage incidents ack ID` sets acknowledged_at and
-- acknowledged_by; muted incidents are recorded but nobody is told. To see the recent
-- resolved ones too, add `OR i.opened_at > now() - interval '7 days'` to the WHERE
-- clause (incident_history.sql sums them up per monitor).
--
-- Cost: one pass over incidents, a table that grows with incidents, not heartbeats:
-- milliseconds even with years of history.
--
-- columns: id, subject, kind, severity, datacenters, opened_at, open_for, acknowledged_at, acknowledged_by, muted, cause
SELECT i.id,
       coalesce(m.name, d.code, '#' || coalesce(i.monitor_id, i.datacenter_id)) AS subject,
       i.kind,
       i.severity,
       ARRAY(SELECT c.code FROM datacenters c WHERE c.id = ANY (i.datacenters) ORDER BY c.code) AS datacenters,
       i.opened_at,
       date_trunc('second', now() - i.opened_at) AS open_for,
       i.acknowledged_at,
       i.acknowledged_by,
       i.muted,
       i.cause
FROM incidents i
LEFT JOIN api_monitors m ON m.id = i.monitor_id
LEFT JOIN datacenters d ON d.id = i.datacenter_id
WHERE i.resolved_at IS NULL
ORDER BY i.opened_at DESC, i.id DESC;
