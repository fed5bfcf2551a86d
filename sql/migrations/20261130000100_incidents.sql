-- Incidents: the decision "this target is really down", taken once for the whole system
-- from several datacenters, and its record.
--
--   api_monitors (new columns)  the alert policy of each monitor
--   api_heartbeats.ingest_xid   which transaction stored a heartbeat, so the evaluator
--                               reads each new heartbeat once, in commit order
--   monitor_dc_state            per monitor and datacenter: is it counted as failing
--                               (or degraded) there, since which slot
--   incidents, incident_events  the incidents and their timelines
--   maintenance_windows         planned work: no incident opens inside a window
--   maintenance_occurrences     every concrete period of every window (recurring
--                               windows are expanded ahead by the evaluator)
--
-- The decision itself lives in src/incidents/ (one evaluator for the whole system,
-- elected through its own advisory lock). Everything it needs to resume after a crash
-- is in these tables and in api_heartbeats.

-- ---------------------------------------------------------------------------------
-- Alert policy
-- ---------------------------------------------------------------------------------

ALTER TABLE api_monitors
    -- Consecutive failed slots in one datacenter before that datacenter counts the
    -- monitor as failing (one blip is not an outage).
    ADD COLUMN failure_threshold  int NOT NULL DEFAULT 2,
    -- Consecutive successful slots before a failing datacenter counts it as recovered.
    ADD COLUMN recovery_threshold int NOT NULL DEFAULT 2,
    -- How many healthy datacenters must count it failing before it is down. NULL: a
    -- strict majority of the monitor's healthy datacenters (1 of 1, 2 of 2, 2 of 3,
    -- 3 of 4, 5 of 9). An explicit k is capped at the number of healthy datacenters.
    ADD COLUMN quorum             int,
    -- Until then, incidents are still recorded but marked muted (nobody is told).
    ADD COLUMN mute_until         timestamptz,
    -- Open a monitor_degraded incident when warning/critical heartbeats (slower than
    -- the schedule's thresholds) meet the same thresholds and quorum.
    ADD COLUMN alert_on_degraded  bool NOT NULL DEFAULT false;

CREATE FUNCTION vantage_check_monitor_alerting() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.failure_threshold IS NULL OR NEW.failure_threshold NOT BETWEEN 1 AND 100 THEN
        PERFORM vantage_reject('api_monitors.failure_threshold',
            format('must be between 1 and 100 consecutive failed slots (got %s)',
                   coalesce(NEW.failure_threshold::text, 'NULL')));
    END IF;
    IF NEW.recovery_threshold IS NULL OR NEW.recovery_threshold NOT BETWEEN 1 AND 100 THEN
        PERFORM vantage_reject('api_monitors.recovery_threshold',
            format('must be between 1 and 100 consecutive successful slots (got %s)',
                   coalesce(NEW.recovery_threshold::text, 'NULL')));
    END IF;
    IF NEW.quorum IS NOT NULL AND NEW.quorum NOT BETWEEN 1 AND 1000 THEN
        PERFORM vantage_reject('api_monitors.quorum',
            format('must be NULL (a majority of healthy datacenters) or a number of datacenters from 1 (got %s)',
                   NEW.quorum));
    END IF;
    RETURN NEW;
END
$$;

-- Named to sort before api_monitors_validate: both run, in name order.
CREATE TRIGGER api_monitors_alerting_validate BEFORE INSERT OR UPDATE ON api_monitors
    FOR EACH ROW EXECUTE FUNCTION vantage_check_monitor_alerting();

-- ---------------------------------------------------------------------------------
-- Reading new heartbeats once, in commit order
-- ---------------------------------------------------------------------------------

-- The id of the transaction that stored the row. After reading under a snapshot, the
-- only rows the evaluator has not seen are those of transactions the snapshot did not
-- see committed: `ingest_xid >= pg_snapshot_xmax` or one of `pg_snapshot_xip`. So each
-- read asks for exactly those, and a row whose transaction committed late is still
-- read once. A sequence or a timestamp would not do: both are taken before commit, so
-- a later read could find a smaller value committed after a larger one.
ALTER TABLE api_heartbeats
    ADD COLUMN ingest_xid bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint);

CREATE INDEX api_heartbeats_ingest_xid_idx ON api_heartbeats (ingest_xid);

-- ---------------------------------------------------------------------------------
-- Evaluation state
-- ---------------------------------------------------------------------------------

-- Written only when a flag flips, in the same transaction as the incident events the
-- flip causes. The consecutive counts behind the flags are not stored: they are the
-- last few heartbeats, which a new evaluator reads back.
CREATE TABLE monitor_dc_state (
    monitor_id         int NOT NULL,
    datacenter_id      int NOT NULL,
    -- failure_threshold consecutive failures seen, not yet recovery_threshold successes.
    failing            bool NOT NULL DEFAULT false,
    -- The same for warning/critical heartbeats (only when alert_on_degraded).
    degraded           bool NOT NULL DEFAULT false,
    -- The slot of the heartbeat that last flipped a flag.
    changed_at         timestamptz NOT NULL,
    last_error_kind    text,
    last_error_message text,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (monitor_id, datacenter_id)
);

-- ---------------------------------------------------------------------------------
-- Incidents
-- ---------------------------------------------------------------------------------

CREATE TABLE incidents (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            text NOT NULL
        CONSTRAINT incidents_kind_check
        CHECK (kind IN ('monitor_down', 'monitor_degraded', 'datacenter_impaired')),
    -- critical: monitor_down; warning: monitor_degraded and datacenter_impaired (a
    -- prober's own trouble, for whoever runs Vantage).
    severity        text NOT NULL
        CONSTRAINT incidents_severity_check CHECK (severity IN ('critical', 'warning')),
    -- No foreign keys, as on api_heartbeats: incidents outlive deleted monitors as
    -- history (the evaluator resolves the open ones of a deleted monitor).
    monitor_id      int,
    -- The impaired datacenter (datacenter_impaired only).
    datacenter_id   int,
    -- The slot that completed the quorum (or, for a datacenter, when its trouble began),
    -- not the moment the evaluator noticed.
    opened_at       timestamptz NOT NULL,
    resolved_at     timestamptz,
    acknowledged_at timestamptz,
    acknowledged_by text,
    -- Opened while the monitor was muted (api_monitors.mute_until): recorded, not told.
    muted           bool NOT NULL DEFAULT false,
    -- One readable sentence: "down from va, lon: connect_refused (connection refused)",
    -- "no leader", "no heartbeats for 31 s", "failing alone on 3 of 4 monitors".
    cause           text NOT NULL,
    -- The datacenters counting it failing now (after resolution: at the last change).
    datacenters     int[] NOT NULL DEFAULT '{}',
    error_kinds     text[] NOT NULL DEFAULT '{}',
    evaluator_term  bigint,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT incidents_subject_check CHECK (
        CASE kind WHEN 'datacenter_impaired' THEN monitor_id IS NULL AND datacenter_id IS NOT NULL
                  ELSE monitor_id IS NOT NULL AND datacenter_id IS NULL END),
    CONSTRAINT incidents_resolved_after_opened CHECK (resolved_at IS NULL OR resolved_at >= opened_at)
);

-- At most one open incident per monitor and kind, and per impaired datacenter.
CREATE UNIQUE INDEX incidents_one_open_per_monitor ON incidents (monitor_id, kind)
    WHERE resolved_at IS NULL AND monitor_id IS NOT NULL;
CREATE UNIQUE INDEX incidents_one_open_per_datacenter ON incidents (datacenter_id)
    WHERE resolved_at IS NULL AND kind = 'datacenter_impaired';
CREATE INDEX incidents_opened_at_idx ON incidents (opened_at);
CREATE INDEX incidents_open_idx ON incidents (opened_at) WHERE resolved_at IS NULL;
CREATE INDEX incidents_monitor_id_idx ON incidents (monitor_id, opened_at);

-- The timeline of an incident. `at` is the slot (or moment) the event describes.
CREATE TABLE incident_events (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    incident_id  bigint NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    kind         text NOT NULL
        CONSTRAINT incident_events_kind_check
        CHECK (kind IN ('opened', 'datacenter_joined', 'datacenter_left', 'acknowledged', 'resolved')),
    at           timestamptz NOT NULL,
    -- opened: the failing set; joined/left: the datacenters that changed; resolved: the
    -- datacenters still failing (below quorum).
    datacenters  int[] NOT NULL DEFAULT '{}',
    error_kinds  text[] NOT NULL DEFAULT '{}',
    sample_error text,
    -- Why, in words: "recovered", "datacenter impaired", "acknowledged by alice".
    detail       text,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX incident_events_incident_id_idx ON incident_events (incident_id, id);

CREATE TRIGGER incidents_touch BEFORE UPDATE ON incidents
    FOR EACH ROW EXECUTE FUNCTION vantage_touch_updated_at();

-- ---------------------------------------------------------------------------------
-- Maintenance windows
-- ---------------------------------------------------------------------------------

-- Planned work. Probing goes on; no incident is opened for a monitor in scope (an
-- incident already open stays open), and a datacenter in scope is neither counted in
-- quorums nor reported impaired. Scope: every non-empty list must match (monitor AND
-- tag AND datacenter), any element of a list matches; at least one list is set.
-- One-off: starts_at .. ends_at. Recurring: an occurrence of `duration` starts at
-- every `cron` time (UTC; 5 fields, or 6 with seconds first) from starts_at until
-- ends_at (NULL: forever).
CREATE TABLE maintenance_windows (
    id             int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    reason         text NOT NULL,
    monitor_ids    int[] NOT NULL DEFAULT '{}',
    tags           text[] NOT NULL DEFAULT '{}',
    datacenter_ids int[] NOT NULL DEFAULT '{}',
    starts_at      timestamptz NOT NULL DEFAULT now(),
    ends_at        timestamptz,
    cron           text,
    duration       interval,
    created_by     text,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION vantage_check_maintenance_window() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    fields int;
BEGIN
    IF btrim(coalesce(NEW.reason, '')) = '' THEN
        PERFORM vantage_reject('maintenance_windows.reason', 'must say why (it is shown with every heartbeat and incident it covers)');
    END IF;
    IF cardinality(NEW.monitor_ids) + cardinality(NEW.tags) + cardinality(NEW.datacenter_ids) = 0 THEN
        PERFORM vantage_reject('maintenance_windows.monitor_ids',
            'and tags and datacenter_ids are all empty: set at least one scope',
            'to cover everything in a datacenter, set datacenter_ids');
    END IF;
    IF NEW.cron IS NULL THEN
        IF NEW.duration IS NOT NULL THEN
            PERFORM vantage_reject('maintenance_windows.duration',
                'is for recurring windows: set cron too, or use ends_at for a one-off window');
        END IF;
        IF NEW.ends_at IS NULL OR NEW.ends_at <= NEW.starts_at THEN
            PERFORM vantage_reject('maintenance_windows.ends_at',
                format('must be after starts_at for a one-off window (starts_at %s, ends_at %s)',
                       NEW.starts_at, coalesce(NEW.ends_at::text, 'NULL')));
        END IF;
    ELSE
        fields := coalesce(array_length(regexp_split_to_array(btrim(NEW.cron), '\s+'), 1), 0);
        IF fields NOT IN (5, 6) THEN
            PERFORM vantage_reject('maintenance_windows.cron',
                format('must be a cron expression of 5 fields (or 6 with seconds first), such as ''0 3 * * SUN'' (got %s with %s fields)',
                       quote_literal(NEW.cron), fields));
        END IF;
        IF NEW.duration IS NULL OR NEW.duration <= interval '0' THEN
            PERFORM vantage_reject('maintenance_windows.duration',
                format('must be a positive interval such as ''2 hours'' for a recurring window (got %s)',
                       coalesce(NEW.duration::text, 'NULL')));
        END IF;
        IF NEW.ends_at IS NOT NULL AND NEW.ends_at <= NEW.starts_at THEN
            PERFORM vantage_reject('maintenance_windows.ends_at',
                format('must be after starts_at (starts_at %s, ends_at %s)', NEW.starts_at, NEW.ends_at));
        END IF;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER maintenance_windows_validate BEFORE INSERT OR UPDATE ON maintenance_windows
    FOR EACH ROW EXECUTE FUNCTION vantage_check_maintenance_window();

-- Every concrete period of every window. One-off windows get theirs from the trigger
-- below; the evaluator expands recurring ones a week ahead (croner, the same cron
-- dialect as schedules) and keeps the past ones as history.
CREATE TABLE maintenance_occurrences (
    window_id int NOT NULL REFERENCES maintenance_windows (id) ON DELETE CASCADE,
    starts_at timestamptz NOT NULL,
    ends_at   timestamptz NOT NULL,
    PRIMARY KEY (window_id, starts_at),
    CHECK (ends_at > starts_at)
);

CREATE INDEX maintenance_occurrences_time_idx ON maintenance_occurrences (starts_at, ends_at);

-- Keeps a one-off window's occurrence equal to the window, and clips a recurring
-- window's occurrences to its bounds when they change (`vantage maintenance end` sets
-- ends_at = now()).
CREATE FUNCTION vantage_sync_maintenance_occurrences() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.cron IS NULL THEN
        DELETE FROM maintenance_occurrences WHERE window_id = NEW.id;
        INSERT INTO maintenance_occurrences (window_id, starts_at, ends_at)
        VALUES (NEW.id, NEW.starts_at, NEW.ends_at);
    ELSE
        DELETE FROM maintenance_occurrences
        WHERE window_id = NEW.id
          AND (starts_at >= coalesce(NEW.ends_at, 'infinity') OR ends_at <= NEW.starts_at);
        UPDATE maintenance_occurrences SET ends_at = NEW.ends_at
        WHERE window_id = NEW.id AND NEW.ends_at IS NOT NULL AND ends_at > NEW.ends_at;
        IF TG_OP = 'UPDATE' AND (OLD.cron IS DISTINCT FROM NEW.cron OR OLD.duration IS DISTINCT FROM NEW.duration) THEN
            -- Re-expanded by the evaluator; what already happened stays.
            DELETE FROM maintenance_occurrences WHERE window_id = NEW.id AND starts_at > now();
        END IF;
    END IF;
    PERFORM pg_notify('vantage_maintenance', NEW.id::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER maintenance_windows_sync AFTER INSERT OR UPDATE ON maintenance_windows
    FOR EACH ROW EXECUTE FUNCTION vantage_sync_maintenance_occurrences();

-- Is this monitor, in this datacenter, in maintenance at `at`? It recognises one
-- heartbeat taken during planned work; it costs ~10 µs a call, so over many rows use
-- vantage_maintenance_periods (20261130000150_maintenance_rollups.sql) instead, which
-- asks it once per monitor, datacenter and stretch.
CREATE FUNCTION vantage_in_maintenance(monitor int, datacenter int, at timestamptz) RETURNS bool
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1
        FROM maintenance_occurrences o
        JOIN maintenance_windows w ON w.id = o.window_id
        WHERE o.starts_at <= at AND at < o.ends_at
          AND (cardinality(w.monitor_ids) = 0 OR monitor = ANY (w.monitor_ids))
          AND (cardinality(w.datacenter_ids) = 0 OR datacenter = ANY (w.datacenter_ids))
          AND (cardinality(w.tags) = 0
               OR EXISTS (SELECT 1 FROM api_monitors m WHERE m.id = monitor AND m.tags && w.tags)))
$$;

-- ---------------------------------------------------------------------------------
-- Gaps: slots a datacenter never probed
-- ---------------------------------------------------------------------------------

-- Missed slots per monitor and datacenter between from_ts and to_ts, for monitors on
-- an interval schedule: every stretch between two stored heartbeats (or between the
-- last one and to_ts, or from_ts — or the monitor's creation, if later — and the first)
-- longer than one interval. A gap is not a failure: nothing was measured. Cron
-- schedules are left out (their slots are not evenly spaced). The edges of the window
-- are exact to within one slot. NULL monitor_ids / datacenter_ids mean all; name some
-- to read only their heartbeats (fleet-wide, it reads every heartbeat in the window).
CREATE FUNCTION vantage_missed_slots(from_ts timestamptz, to_ts timestamptz DEFAULT now(),
                                     monitor_ids int[] DEFAULT NULL, datacenter_ids int[] DEFAULT NULL)
RETURNS TABLE (monitor_id int, datacenter_id int, after_slot timestamptz,
               before_slot timestamptz, missed int)
LANGUAGE sql STABLE AS $$
    WITH pairs AS (
        SELECT a.monitor_id, a.datacenter_id, s.interval_seconds,
               -- Slots before the monitor existed were never due.
               greatest(from_ts, m.created_at) AS since,
               -- A slot counts as missed only once its result is overdue.
               least(to_ts, now() - make_interval(secs => s.interval_seconds + s.timeout_ms / 1000.0)) AS until
        FROM monitor_assignments a
        JOIN api_monitors m ON m.id = a.monitor_id AND m.enabled
        JOIN schedules s ON s.id = m.schedule_id AND s.interval_seconds IS NOT NULL
        WHERE (monitor_ids IS NULL OR a.monitor_id = ANY (monitor_ids))
          AND (datacenter_ids IS NULL OR a.datacenter_id = ANY (datacenter_ids))
    ),
    points AS (
        SELECT p.monitor_id, p.datacenter_id, p.interval_seconds, p.since, h.scheduled_at AS at
        FROM pairs p
        JOIN api_heartbeats h ON h.monitor_id = p.monitor_id AND h.datacenter_id = p.datacenter_id
        WHERE h.scheduled_at >= p.since AND h.scheduled_at < p.until
        UNION ALL
        -- Sentinels one interval outside the window, so a gap at either edge counts.
        SELECT p.monitor_id, p.datacenter_id, p.interval_seconds, p.since,
               p.since - make_interval(secs => p.interval_seconds)
        FROM pairs p
        WHERE p.until > p.since
        UNION ALL
        SELECT p.monitor_id, p.datacenter_id, p.interval_seconds, p.since, p.until
        FROM pairs p
        WHERE p.until > p.since
    ),
    steps AS (
        SELECT monitor_id, datacenter_id, interval_seconds, since, at,
               lag(at) OVER (PARTITION BY monitor_id, datacenter_id ORDER BY at) AS previous
        FROM points
    )
    SELECT monitor_id, datacenter_id,
           CASE WHEN previous < since THEN NULL ELSE previous END,
           at,
           (floor(extract(epoch FROM at - previous) / interval_seconds + 0.5))::int - 1
    FROM steps
    WHERE previous IS NOT NULL
      AND (floor(extract(epoch FROM at - previous) / interval_seconds + 0.5))::int > 1
$$;
