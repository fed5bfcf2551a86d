-- Failures by kind over the last 24 hours, per monitor and datacenter, most frequent
-- first, with the latest message of each kind as an example.
--
-- error_kind is a closed set (dns_nxdomain, dns_timeout, dns_error, connect_refused,
-- connect_timeout, connect_error, tls_handshake, tls_certificate, timeout,
-- http_protocol, status_mismatch, body_mismatch, body_too_large, redirect_loop,
-- too_many_redirects, redirect_blocked, invalid_request).
--
-- columns: monitor, datacenter, error_kind, failures, share_percent, last_seen, last_message
SELECT m.name AS monitor,
       d.code AS datacenter,
       h.error_kind,
       count(*) AS failures,
       round(100.0 * count(*) / sum(count(*)) OVER (PARTITION BY m.name, d.code), 1) AS share_percent,
       max(h.scheduled_at) AS last_seen,
       (array_agg(h.error_message ORDER BY h.scheduled_at DESC))[1] AS last_message
FROM api_heartbeats h
JOIN api_monitors m ON m.id = h.monitor_id
JOIN datacenters d ON d.id = h.datacenter_id
WHERE h.scheduled_at >= now() - interval '24 hours'
  AND NOT h.success
GROUP BY m.name, d.code, h.error_kind
ORDER BY failures DESC, m.name, d.code, h.error_kind;
