-- TLS certificates expiring within 30 days (or already expired), from each monitor's
-- most recent heartbeat that saw a certificate in the last 2 days, in any datacenter
-- (different datacenters may reach different servers: the soonest expiry is shown,
-- with where it was seen).
--
-- columns: monitor, url, expires_at, days_left, seen_at, datacenter
SELECT DISTINCT ON (m.id)
       m.name AS monitor,
       m.url,
       h.tls_cert_expires_at AS expires_at,
       round((extract(epoch FROM h.tls_cert_expires_at - now()) / 86400)::numeric, 1) AS days_left,
       h.scheduled_at AS seen_at,
       d.code AS datacenter
FROM api_monitors m
JOIN monitor_assignments a ON a.monitor_id = m.id
JOIN datacenters d ON d.id = a.datacenter_id
JOIN LATERAL (
    SELECT h.tls_cert_expires_at, h.scheduled_at
    FROM api_heartbeats h
    WHERE h.monitor_id = a.monitor_id
      AND h.datacenter_id = a.datacenter_id
      AND h.scheduled_at > now() - interval '2 days'
      AND h.tls_cert_expires_at IS NOT NULL
    ORDER BY h.scheduled_at DESC
    LIMIT 1
) h ON true
WHERE h.tls_cert_expires_at < now() + interval '30 days'
ORDER BY m.id, h.tls_cert_expires_at, d.code;
