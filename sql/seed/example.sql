-- Example configuration: the nine datacenters of the system Vantage replaces, in
-- their regions, a few schedules and a few public monitors. Opt-in only
-- (`vantage seed-example`); never applied by migrations. Safe to run again: existing
-- rows (by code or name) are left as they are.

INSERT INTO regions (code, name, group_name) VALUES
    ('us-east',    'US East',    'americas'),
    ('us-central', 'US Central', 'americas'),
    ('us-west',    'US West',    'americas'),
    ('europe',     'Europe',     'emea'),
    ('apac',       'Asia Pacific', 'apac')
ON CONFLICT (code) DO NOTHING;

INSERT INTO datacenters (code, name, region_id)
SELECT v.code, v.name, r.id
FROM (VALUES
    ('va',  'Virginia',      'us-east'),
    ('ny',  'New York',      'us-east'),
    ('rdn', 'Reston',        'us-east'),
    ('chi', 'Chicago',       'us-central'),
    ('sf',  'San Francisco', 'us-west'),
    ('lon', 'London',        'europe'),
    ('dam', 'Amsterdam',     'europe'),
    ('sto', 'Stockholm',     'europe'),
    ('syd', 'Sydney',        'apac')
) AS v (code, name, region)
JOIN regions r ON r.code = v.region
ON CONFLICT (code) DO NOTHING;

INSERT INTO schedules (name, interval_seconds, cron, timeout_ms, warning_threshold_ms, critical_threshold_ms)
VALUES
    ('every-10s',    10,   NULL,             5000,  1000, 3000),
    ('every-minute', 60,   NULL,             10000, 2000, 5000),
    ('every-5-min',  NULL, '0 */5 * * * *',  30000, 2000, 5000)
ON CONFLICT (name) DO NOTHING;

INSERT INTO api_monitors (name, url, schedule_id, all_datacenters, tags)
SELECT 'example.com', 'https://example.com/', s.id, true, '{example}'
FROM schedules s WHERE s.name = 'every-minute'
ON CONFLICT (name) DO NOTHING;

INSERT INTO api_monitors (name, method, url, schedule_id, expected_status_codes, tags)
SELECT 'cloudflare dns-over-https', 'GET', 'https://1.1.1.1/dns-query?name=example.com&type=A',
       s.id, '200', '{example,dns}'
FROM schedules s WHERE s.name = 'every-10s'
ON CONFLICT (name) DO NOTHING;

INSERT INTO api_monitors (name, method, url, schedule_id, body_contains, tags)
SELECT 'iana.org home', 'GET', 'https://www.iana.org/', s.id, 'IANA', '{example}'
FROM schedules s WHERE s.name = 'every-5-min'
ON CONFLICT (name) DO NOTHING;

-- "Only in va and lon".
INSERT INTO datacenter_monitors (datacenter_id, monitor_id)
SELECT d.id, m.id
FROM datacenters d, api_monitors m
WHERE d.code IN ('va', 'lon') AND m.name IN ('cloudflare dns-over-https', 'iana.org home')
ON CONFLICT DO NOTHING;
