-- Leases: a leader renews its term row every check interval (src/leadership.rs). A
-- standby that sees the holder's `renewed_at` unchanged for the lease (VANTAGE_LEADER_LEASE,
-- default 10 s) ends the holder's session and takes over, so a hung leader (SIGSTOP, a
-- frozen VM) does not keep its datacenter silent while the kernel keeps its TCP session
-- alive.
ALTER TABLE leader_terms ADD COLUMN renewed_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE evaluator_terms ADD COLUMN renewed_at timestamptz NOT NULL DEFAULT now();

-- Instances as a person should read them: `state` is `stale` when a running instance
-- (leader or standby) has not refreshed `last_seen_at` for three liveness intervals
-- (src/agent.rs refreshes every 5 s), so a killed leader does not read as `leader`
-- forever. `vantage up` reads the same rule.
CREATE VIEW agent_status AS
SELECT a.*,
       CASE
           WHEN a.role <> 'stopped' AND a.last_seen_at < now() - interval '15 seconds' THEN 'stale'
           ELSE a.role
       END AS state
FROM agents a;

-- Dashboards may read it (the reader role reads every bookkeeping table).
GRANT SELECT ON agent_status TO vantage_reader;
