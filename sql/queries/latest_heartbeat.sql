-- Latest heartbeat per monitor and datacenter: the "current state" board.
--
-- One row per assignment (monitor_assignments), with NULLs where a monitor has not
-- been probed from that datacenter in the last 7 days. Each lookup walks the primary
-- key (monitor_id, datacenter_id, scheduled_at) backwards through the newest
-- partitions only, so the cost does not grow with history.
--
-- columns: monitor, datacenter, scheduled_at, executed_at, status, http_status, total_ms, dns_ms, connect_ms, tls_ms, ttfb_ms, transfer_ms, error_kind, error_message
SELECT m.name AS monitor,
       d.code AS datacenter,
       h.scheduled_at,
       h.executed_at,
       h.status,
       h.http_status,
       h.total_ms,
       h.dns_ms,
       h.connect_ms,
       h.tls_ms,
       h.ttfb_ms,
       h.transfer_ms,
       h.error_kind,
       h.error_message
FROM monitor_assignments a
JOIN api_monitors m ON m.id = a.monitor_id
JOIN datacenters d ON d.id = a.datacenter_id
LEFT JOIN LATERAL (
    SELECT *
    FROM api_heartbeats h
    WHERE h.monitor_id = a.monitor_id
      AND h.datacenter_id = a.datacenter_id
      AND h.scheduled_at > now() - interval '7 days'
    ORDER BY h.scheduled_at DESC
    LIMIT 1
) h ON true
ORDER BY m.name, d.code;
