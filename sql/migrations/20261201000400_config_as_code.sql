-- Configuration as code (issue #16): `vantage apply -f DIR` makes the configuration
-- tables match YAML files, and labels what it wrote with the files' source.
--
--   managed_by   on every configurable table: the source (`vantage apply --source`,
--                by default the directory's name) whose files hold the object. NULL:
--                made by hand (SQL, `vantage maintenance add`); apply adopts such an
--                object when a file names it, and `--prune` never deletes it.
--   name         routes and maintenance windows had only ids; files name every
--                object, so they get a unique name. A row inserted without one (by
--                hand, `vantage maintenance add`) is named route-<id> / window-<id>.
--   api_monitors.header_refs
--                the reference each secret header was written as in its file
--                ({"Authorization": "Bearer ${API_TOKEN}"} or {"X-Key": {"secret":
--                "file:/run/secrets/key"}}). headers holds the resolved value the probe
--                sends; this column holds no secret, so `vantage export` writes the
--                reference back and never the value.

ALTER TABLE regions ADD COLUMN managed_by text;
ALTER TABLE datacenters ADD COLUMN managed_by text;
ALTER TABLE schedules ADD COLUMN managed_by text;
ALTER TABLE api_monitors
    ADD COLUMN managed_by text,
    ADD COLUMN header_refs jsonb NOT NULL DEFAULT '{}';
ALTER TABLE notification_channels ADD COLUMN managed_by text;
ALTER TABLE notification_routes
    ADD COLUMN managed_by text,
    ADD COLUMN name text;
ALTER TABLE maintenance_windows
    ADD COLUMN managed_by text,
    ADD COLUMN name text;

UPDATE notification_routes SET name = 'route-' || id WHERE name IS NULL;
UPDATE maintenance_windows SET name = 'window-' || id WHERE name IS NULL;
ALTER TABLE notification_routes
    ALTER COLUMN name SET NOT NULL,
    ADD CONSTRAINT notification_routes_name_key UNIQUE (name);
ALTER TABLE maintenance_windows
    ALTER COLUMN name SET NOT NULL,
    ADD CONSTRAINT maintenance_windows_name_key UNIQUE (name);

-- Column defaults cannot name the row's id; a BEFORE trigger sees it (the identity
-- default is evaluated first). Named to sort before the tables' validate triggers.
CREATE FUNCTION vantage_default_object_name() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.name IS NULL OR btrim(NEW.name) = '' THEN
        NEW.name := TG_ARGV[0] || '-' || NEW.id;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER notification_routes_default_name BEFORE INSERT OR UPDATE ON notification_routes
    FOR EACH ROW EXECUTE FUNCTION vantage_default_object_name('route');
CREATE TRIGGER maintenance_windows_default_name BEFORE INSERT OR UPDATE ON maintenance_windows
    FOR EACH ROW EXECUTE FUNCTION vantage_default_object_name('window');

-- Every managed object of a source, for `--prune` and `vantage export --source`.
CREATE INDEX api_monitors_managed_by_idx ON api_monitors (managed_by) WHERE managed_by IS NOT NULL;

-- The reader gets nothing by default (the roles migration): none of these is a secret.
GRANT SELECT (managed_by) ON regions, datacenters, schedules, api_monitors,
    notification_channels, notification_routes, maintenance_windows TO vantage_reader;
GRANT SELECT (header_refs) ON api_monitors TO vantage_reader;
GRANT SELECT (name) ON notification_routes, maintenance_windows TO vantage_reader;

ALTER FUNCTION vantage_default_object_name() OWNER TO vantage_owner;
