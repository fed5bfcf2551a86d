-- p50 / p95 / p99 of each phase per datacenter over the last 24 hours (milliseconds,
-- successful probes only, so timeouts do not pose as slow phases).
--
-- Phases are per-phase durations: dns (name lookup), connect (TCP handshake), tls
-- (TLS handshake), ttfb (request sent to response head), transfer (body), total.
-- A phase that did not happen (no DNS for an IP literal, no TLS for http://) is NULL
-- and ignored by the percentiles. Add `h.monitor_id = ...` to look at one monitor.
--
-- Cost: exact percentiles sort every sample. Fleet-wide over 24 h (2.6 M heartbeats,
-- 15 M phase samples) this takes ~25 s on a 2-vCPU machine (BENCHMARKS.md); for one
-- monitor it is milliseconds (primary key). Dashboards over long ranges read the
-- percentiles kept in api_heartbeats_hourly / api_heartbeats_daily instead.
--
-- columns: datacenter, phase, samples, p50_ms, p95_ms, p99_ms
SELECT d.code AS datacenter,
       p.phase,
       count(p.ms) AS samples,
       round(percentile_cont(0.50) WITHIN GROUP (ORDER BY p.ms)::numeric, 3) AS p50_ms,
       round(percentile_cont(0.95) WITHIN GROUP (ORDER BY p.ms)::numeric, 3) AS p95_ms,
       round(percentile_cont(0.99) WITHIN GROUP (ORDER BY p.ms)::numeric, 3) AS p99_ms
FROM api_heartbeats h
JOIN datacenters d ON d.id = h.datacenter_id
CROSS JOIN LATERAL (VALUES
    (1, 'dns', h.dns_ms),
    (2, 'connect', h.connect_ms),
    (3, 'tls', h.tls_ms),
    (4, 'ttfb', h.ttfb_ms),
    (5, 'transfer', h.transfer_ms),
    (6, 'total', h.total_ms)
) AS p (ord, phase, ms)
WHERE h.scheduled_at >= now() - interval '24 hours'
  AND h.success
  AND p.ms IS NOT NULL
GROUP BY d.code, p.ord, p.phase
ORDER BY d.code, p.ord;
