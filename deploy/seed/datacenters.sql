-- The nine datacenters the compose file runs (`VANTAGE_DATACENTER` is the code).
-- Idempotent: run on every `docker compose up`; existing rows are left as they are, so
-- names edited later in the database are kept.
INSERT INTO datacenters (code, name) VALUES
    ('va',  'Virginia'),
    ('ny',  'New York'),
    ('rdn', 'Reading'),
    ('chi', 'Chicago'),
    ('sf',  'San Francisco'),
    ('lon', 'London'),
    ('dam', 'Amsterdam'),
    ('sto', 'Stockholm'),
    ('syd', 'Sydney')
ON CONFLICT (code) DO NOTHING;
