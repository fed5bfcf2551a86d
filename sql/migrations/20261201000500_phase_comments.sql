-- What each phase column of api_heartbeats spans (issue #14), where psql's \d+ and
-- Grafana's schema browser show it. Comments only: no data or constraint changes, no
-- new objects (so nothing to own or grant). Phases with redirects followed are summed
-- over the hops; a phase that did not happen is NULL, never 0. The boundaries are the
-- kernel's stamps on the probe's own sockets (SO_TIMESTAMPING, TCP_INFO) where the
-- kernel gives them, else the probe's clock read right at the system call.

COMMENT ON COLUMN api_heartbeats.dns_ms IS
    'ms: the first DNS query leaving the prober -> the last answer needed arriving (A and AAAA are asked together for ip_family any). When the first server does not settle it (truncation, SERVFAIL/REFUSED, silence), from before the first query to the resolver''s answer. NULL for an IP literal.';
COMMENT ON COLUMN api_heartbeats.connect_ms IS
    'ms: the TCP handshake, SYN sent -> SYN/ACK received (the kernel''s RTT sample); earlier addresses that failed are included, as in curl''s time_connect.';
COMMENT ON COLUMN api_heartbeats.tls_ms IS
    'ms: the TLS ClientHello leaving -> the server''s last handshake flight (its Finished in TLS 1.3) arriving; excludes building the ClientHello and verifying after the last byte arrived. NULL without TLS.';
COMMENT ON COLUMN api_heartbeats.ttfb_ms IS
    'ms: the request''s last byte leaving -> the data completing the response head arriving (http; = network round trip + server time). tcp kind: to the first bytes of the answer; tls kind: to the SMTP greeting.';
COMMENT ON COLUMN api_heartbeats.transfer_ms IS
    'ms: the response head arriving -> the body read to its end (or to the expected text for the tcp kind).';
COMMENT ON COLUMN api_heartbeats.total_ms IS
    'ms: the whole probe on the prober''s clock, from its start (before DNS) to its end; includes the prober''s own work between phases.';
