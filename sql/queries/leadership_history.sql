-- Which instance led each datacenter, and when: one row per leadership term, newest
-- first. A term with no released_at is current (or ended by a crash: compare with the
-- next term's acquired_at and with agents.last_seen_at).
--
-- columns: datacenter, term, instance_name, hostname, version, acquired_at, released_at, held_for, agent_role
SELECT d.code AS datacenter,
       t.term,
       ag.instance_name,
       ag.hostname,
       ag.version,
       t.acquired_at,
       t.released_at,
       coalesce(t.released_at,
                lead(t.acquired_at) OVER (PARTITION BY t.datacenter_id ORDER BY t.term),
                now()) - t.acquired_at AS held_for,
       ag.role AS agent_role
FROM leader_terms t
JOIN datacenters d ON d.id = t.datacenter_id
LEFT JOIN agents ag ON ag.id = t.agent_id
ORDER BY d.code, t.term DESC;
