//! Each kind of object as a table row: the conversion between a file's form
//! ([`super::model`]) and the row the database holds, and the SQL that reads, writes and
//! deletes rows of that kind in bulk.
//!
//! A row is the database's view with names instead of ids (a monitor's schedule by
//! name, its datacenters by code) and defaults filled in, so that "does the file match
//! the database" is plain equality of rows. Rows travel to Postgres as one JSON array
//! per statement (`jsonb_to_recordset`): one round trip per kind, whatever the count.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::load::{Diagnostic, Loaded, Section};
use super::model::{
    AllDatacenters, Channel, ConfigFile, Datacenter, Dur, HeaderValue, MaintenanceWindow, Monitor,
    Placement, Region, Route, Schedule,
};
use crate::notify::secret;

/// Converting one object, collecting its mistakes at their positions.
pub struct Cx<'a> {
    pub loaded: Option<&'a Loaded>,
    pub section: Section,
    pub name: &'a str,
    pub errors: Vec<Diagnostic>,
    /// Things export could not write faithfully (secrets it replaced by placeholders).
    pub warnings: Vec<String>,
}

impl<'a> Cx<'a> {
    pub fn new(loaded: Option<&'a Loaded>, section: Section, name: &'a str) -> Cx<'a> {
        Cx {
            loaded,
            section,
            name,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn error(&mut self, path: &[&str], message: String) {
        let pos = self
            .loaded
            .and_then(|l| l.field(self.section, self.name, path));
        self.errors.push(Diagnostic::at(
            pos,
            format!(
                "{} \"{}\" field `{}`: {message}",
                self.section.noun(),
                self.name,
                path.join(".")
            ),
        ));
    }
}

/// One kind of object.
pub trait Kind {
    const SECTION: Section;
    /// Reads every row: (the row as JSON, managed_by).
    const SELECT: &'static str;
    /// Inserts or updates rows: $1 a JSON array of rows, $2 the source.
    const UPSERT: &'static str;
    /// Deletes by key: $1 text[].
    const DELETE: &'static str;
    type Model: Serialize + Clone;
    type Row: Serialize + DeserializeOwned + Clone + PartialEq;

    fn models(config: &ConfigFile) -> &BTreeMap<String, Self::Model>;
    fn models_mut(config: &mut ConfigFile) -> &mut BTreeMap<String, Self::Model>;
    fn key(row: &Self::Row) -> &str;
    fn to_row(name: &str, model: &Self::Model, cx: &mut Cx<'_>) -> Self::Row;
    fn to_model(row: &Self::Row, cx: &mut Cx<'_>) -> Self::Model;

    /// What `diff` prints after a created object's name.
    fn summary(_model: &Self::Model) -> String {
        String::new()
    }

    /// Takes from the current row what the file leaves to the database.
    fn keep_unset(_row: &mut Self::Row, _current: &Self::Row) {}

    /// Names of secret values that differ (their references may be equal).
    fn changed_secrets(_desired: &Self::Row, _current: &Self::Row) -> Vec<String> {
        Vec::new()
    }
}

/// The SQL of one kind, for code that goes through the kinds by [`Section`].
pub struct Statements {
    pub select: &'static str,
    pub upsert: &'static str,
    pub delete: &'static str,
}

impl Statements {
    pub fn of(section: Section) -> Statements {
        fn of<K: Kind>() -> Statements {
            Statements {
                select: K::SELECT,
                upsert: K::UPSERT,
                delete: K::DELETE,
            }
        }
        match section {
            Section::Regions => of::<Regions>(),
            Section::Datacenters => of::<Datacenters>(),
            Section::Schedules => of::<Schedules>(),
            Section::NotificationChannels => of::<Channels>(),
            Section::Monitors => of::<Monitors>(),
            Section::NotificationRoutes => of::<Routes>(),
            Section::MaintenanceWindows => of::<Windows>(),
        }
    }
}

/// `Some(value)` unless it is the default: files leave defaults out.
fn unless_default<T: PartialEq>(value: T, default: T) -> Option<T> {
    (value != default).then_some(value)
}

// ---------------------------------------------------------------------------------
// Regions and datacenters
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionRow {
    code: String,
    name: String,
    group_name: Option<String>,
}

pub struct Regions;

impl Kind for Regions {
    const SECTION: Section = Section::Regions;
    const SELECT: &'static str = "SELECT jsonb_build_object('code', code, 'name', name, \
        'group_name', group_name), managed_by FROM regions";
    const UPSERT: &'static str = "INSERT INTO regions (code, name, group_name, managed_by) \
        SELECT r.code, r.name, r.group_name, $2 \
        FROM jsonb_to_recordset($1) AS r (code text, name text, group_name text) \
        ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name, group_name = EXCLUDED.group_name, \
            managed_by = EXCLUDED.managed_by";
    const DELETE: &'static str = "DELETE FROM regions WHERE code = ANY ($1)";
    type Model = Region;
    type Row = RegionRow;

    fn models(config: &ConfigFile) -> &BTreeMap<String, Region> {
        &config.regions
    }
    fn models_mut(config: &mut ConfigFile) -> &mut BTreeMap<String, Region> {
        &mut config.regions
    }
    fn key(row: &RegionRow) -> &str {
        &row.code
    }
    fn to_row(name: &str, model: &Region, _: &mut Cx<'_>) -> RegionRow {
        RegionRow {
            code: name.to_string(),
            name: model.name.clone(),
            group_name: model.group.clone(),
        }
    }
    fn to_model(row: &RegionRow, _: &mut Cx<'_>) -> Region {
        Region {
            name: row.name.clone(),
            group: row.group_name.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatacenterRow {
    code: String,
    name: String,
    region: Option<String>,
}

pub struct Datacenters;

impl Kind for Datacenters {
    const SECTION: Section = Section::Datacenters;
    const SELECT: &'static str = "SELECT jsonb_build_object('code', d.code, 'name', d.name, \
        'region', g.code), d.managed_by \
        FROM datacenters d LEFT JOIN regions g ON g.id = d.region_id";
    const UPSERT: &'static str = "INSERT INTO datacenters (code, name, region_id, managed_by) \
        SELECT r.code, r.name, g.id, $2 \
        FROM jsonb_to_recordset($1) AS r (code text, name text, region text) \
        LEFT JOIN regions g ON g.code = r.region \
        ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name, region_id = EXCLUDED.region_id, \
            managed_by = EXCLUDED.managed_by";
    const DELETE: &'static str = "DELETE FROM datacenters WHERE code = ANY ($1)";
    type Model = Datacenter;
    type Row = DatacenterRow;

    fn models(config: &ConfigFile) -> &BTreeMap<String, Datacenter> {
        &config.datacenters
    }
    fn models_mut(config: &mut ConfigFile) -> &mut BTreeMap<String, Datacenter> {
        &mut config.datacenters
    }
    fn key(row: &DatacenterRow) -> &str {
        &row.code
    }
    fn to_row(name: &str, model: &Datacenter, _: &mut Cx<'_>) -> DatacenterRow {
        DatacenterRow {
            code: name.to_string(),
            name: model.name.clone(),
            region: model.region.clone(),
        }
    }
    fn to_model(row: &DatacenterRow, _: &mut Cx<'_>) -> Datacenter {
        Datacenter {
            name: row.name.clone(),
            region: row.region.clone(),
        }
    }
}

// ---------------------------------------------------------------------------------
// Schedules
// ---------------------------------------------------------------------------------

const DEFAULT_TIMEOUT_MS: i32 = 10_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleRow {
    name: String,
    interval_seconds: Option<i64>,
    cron: Option<String>,
    timeout_ms: i64,
    warning_threshold_ms: Option<i64>,
    critical_threshold_ms: Option<i64>,
    include_response_body: bool,
}

pub struct Schedules;

impl Kind for Schedules {
    const SECTION: Section = Section::Schedules;
    const SELECT: &'static str =
        "SELECT to_jsonb(s) - 'id' - 'managed_by', s.managed_by FROM schedules s";
    const UPSERT: &'static str = "INSERT INTO schedules (name, interval_seconds, cron, \
            timeout_ms, warning_threshold_ms, critical_threshold_ms, include_response_body, managed_by) \
        SELECT r.name, r.interval_seconds, r.cron, r.timeout_ms, r.warning_threshold_ms, \
            r.critical_threshold_ms, r.include_response_body, $2 \
        FROM jsonb_to_recordset($1) AS r (name text, interval_seconds int, cron text, timeout_ms int, \
            warning_threshold_ms int, critical_threshold_ms int, include_response_body bool) \
        ON CONFLICT (name) DO UPDATE SET interval_seconds = EXCLUDED.interval_seconds, \
            cron = EXCLUDED.cron, timeout_ms = EXCLUDED.timeout_ms, \
            warning_threshold_ms = EXCLUDED.warning_threshold_ms, \
            critical_threshold_ms = EXCLUDED.critical_threshold_ms, \
            include_response_body = EXCLUDED.include_response_body, managed_by = EXCLUDED.managed_by";
    const DELETE: &'static str = "DELETE FROM schedules WHERE name = ANY ($1)";
    type Model = Schedule;
    type Row = ScheduleRow;

    fn models(config: &ConfigFile) -> &BTreeMap<String, Schedule> {
        &config.schedules
    }
    fn models_mut(config: &mut ConfigFile) -> &mut BTreeMap<String, Schedule> {
        &mut config.schedules
    }
    fn key(row: &ScheduleRow) -> &str {
        &row.name
    }
    fn to_row(name: &str, model: &Schedule, cx: &mut Cx<'_>) -> ScheduleRow {
        let interval_seconds = model.interval.map(|interval| {
            if interval.0.subsec_nanos() != 0 {
                cx.error(
                    &["interval"],
                    format!("{interval} is not a whole number of seconds; write e.g. 15s"),
                );
            }
            interval.millis() / 1000
        });
        ScheduleRow {
            name: name.to_string(),
            interval_seconds,
            cron: model.cron.clone(),
            timeout_ms: model
                .timeout
                .map_or(i64::from(DEFAULT_TIMEOUT_MS), Dur::millis),
            warning_threshold_ms: model.warning_threshold.map(Dur::millis),
            critical_threshold_ms: model.critical_threshold.map(Dur::millis),
            include_response_body: model.include_response_body.unwrap_or(false),
        }
    }
    fn to_model(row: &ScheduleRow, _: &mut Cx<'_>) -> Schedule {
        Schedule {
            interval: row.interval_seconds.map(|s| Dur::from_millis(s * 1000)),
            cron: row.cron.clone(),
            timeout: unless_default(row.timeout_ms, i64::from(DEFAULT_TIMEOUT_MS))
                .map(Dur::from_millis),
            warning_threshold: row.warning_threshold_ms.map(Dur::from_millis),
            critical_threshold: row.critical_threshold_ms.map(Dur::from_millis),
            include_response_body: unless_default(row.include_response_body, false),
        }
    }
    fn summary(model: &Schedule) -> String {
        match (&model.interval, &model.cron) {
            (Some(interval), _) => format!(" (every {interval})"),
            (None, Some(cron)) => format!(" (cron {cron})"),
            (None, None) => String::new(),
        }
    }
}

// ---------------------------------------------------------------------------------
// Monitors
// ---------------------------------------------------------------------------------

/// The column defaults of api_monitors, in one place for both directions.
mod monitor_defaults {
    pub const KIND: &str = "http";
    pub const METHOD: &str = "GET";
    pub const EXPECTED_STATUS_CODES: &str = "200-399";
    pub const MAX_REDIRECTS: i32 = 5;
    pub const IP_FAMILY: &str = "any";
    pub const MAX_BODY_BYTES: i32 = 1_048_576;
    pub const REDIRECT_POLICY: &str = "safe";
    pub const FAILURE_THRESHOLD: i32 = 2;
    pub const RECOVERY_THRESHOLD: i32 = 2;
    pub const CERT_EXPIRY_DAYS: [i32; 4] = [30, 14, 7, 1];
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorRow {
    name: String,
    kind: String,
    method: String,
    url: String,
    headers: BTreeMap<String, String>,
    secret_headers: Vec<String>,
    header_refs: BTreeMap<String, HeaderValue>,
    body: Option<String>,
    schedule: String,
    enabled: bool,
    expected_status_codes: String,
    body_contains: Option<String>,
    follow_redirects: bool,
    max_redirects: i32,
    verify_tls: bool,
    ip_family: String,
    all_datacenters: bool,
    datacenters: Vec<String>,
    tags: Vec<String>,
    failure_threshold: i32,
    recovery_threshold: i32,
    quorum: Option<i32>,
    mute_until: Option<DateTime<Utc>>,
    alert_on_degraded: bool,
    cert_expiry_days: Vec<i32>,
    max_body_bytes: i32,
    redirect_policy: String,
    settings: Value,
    assertions: Value,
    capture_headers: Vec<String>,
}

/// The monitor's assertions as the column holds them, after the checks only Vantage
/// can make (a regex that compiles, a JSONPath that parses, an assertion the kind can
/// answer), each reported at the `assertions` field.
fn checked_assertions(m: &Monitor, cx: &mut Cx<'_>) -> Value {
    let value = serde_json::to_value(&m.assertions).expect("assertion specs serialize to JSON");
    let kind = m
        .kind
        .as_deref()
        .unwrap_or("http")
        .trim()
        .to_ascii_lowercase();
    let checked = crate::assertions::Assertions::from_json(&value)
        .and_then(|assertions| assertions.check_applicable(&kind));
    if let Err(err) = checked {
        cx.error(&["assertions"], err.to_string());
    }
    value
}

impl MonitorRow {
    fn is_secret(&self, header: &str) -> bool {
        self.secret_headers
            .iter()
            .any(|s| s.eq_ignore_ascii_case(header))
    }
}

pub struct Monitors;

impl Kind for Monitors {
    const SECTION: Section = Section::Monitors;
    const SELECT: &'static str = "SELECT to_jsonb(m) - 'id' - 'schedule_id' - 'managed_by' \
            - 'created_at' - 'updated_at' \
            || jsonb_build_object('schedule', s.name, 'datacenters', \
                coalesce((SELECT jsonb_agg(d.code ORDER BY d.code) FROM datacenter_monitors dm \
                          JOIN datacenters d ON d.id = dm.datacenter_id WHERE dm.monitor_id = m.id), \
                         '[]')), \
            m.managed_by \
        FROM api_monitors m JOIN schedules s ON s.id = m.schedule_id";
    // One statement: the monitors, then their datacenters (rows no longer wanted go,
    // new ones come; the two sets are disjoint, so neither sees the other).
    const UPSERT: &'static str = "WITH r AS ( \
            SELECT * FROM jsonb_to_recordset($1) AS r (name text, kind text, method text, url text, \
                headers jsonb, secret_headers text[], header_refs jsonb, body text, schedule text, \
                enabled bool, expected_status_codes text, body_contains text, follow_redirects bool, \
                max_redirects int, verify_tls bool, ip_family text, all_datacenters bool, \
                datacenters text[], tags text[], failure_threshold int, recovery_threshold int, \
                quorum int, mute_until timestamptz, alert_on_degraded bool, cert_expiry_days int[], \
                max_body_bytes int, redirect_policy text, settings jsonb, assertions jsonb, \
                capture_headers text[])), \
        up AS ( \
            INSERT INTO api_monitors (name, kind, method, url, headers, secret_headers, header_refs, \
                body, schedule_id, enabled, expected_status_codes, body_contains, follow_redirects, \
                max_redirects, verify_tls, ip_family, all_datacenters, tags, failure_threshold, \
                recovery_threshold, quorum, mute_until, alert_on_degraded, cert_expiry_days, \
                max_body_bytes, redirect_policy, settings, assertions, capture_headers, managed_by) \
            SELECT r.name, r.kind, r.method, r.url, r.headers, r.secret_headers, r.header_refs, \
                r.body, s.id, r.enabled, r.expected_status_codes, r.body_contains, r.follow_redirects, \
                r.max_redirects, r.verify_tls, r.ip_family, r.all_datacenters, r.tags, \
                r.failure_threshold, r.recovery_threshold, r.quorum, r.mute_until, \
                r.alert_on_degraded, r.cert_expiry_days, r.max_body_bytes, r.redirect_policy, \
                r.settings, r.assertions, r.capture_headers, $2 \
            FROM r JOIN schedules s ON s.name = r.schedule \
            ON CONFLICT (name) DO UPDATE SET kind = EXCLUDED.kind, method = EXCLUDED.method, \
                url = EXCLUDED.url, headers = EXCLUDED.headers, \
                secret_headers = EXCLUDED.secret_headers, header_refs = EXCLUDED.header_refs, \
                body = EXCLUDED.body, schedule_id = EXCLUDED.schedule_id, \
                enabled = EXCLUDED.enabled, expected_status_codes = EXCLUDED.expected_status_codes, \
                body_contains = EXCLUDED.body_contains, follow_redirects = EXCLUDED.follow_redirects, \
                max_redirects = EXCLUDED.max_redirects, verify_tls = EXCLUDED.verify_tls, \
                ip_family = EXCLUDED.ip_family, all_datacenters = EXCLUDED.all_datacenters, \
                tags = EXCLUDED.tags, failure_threshold = EXCLUDED.failure_threshold, \
                recovery_threshold = EXCLUDED.recovery_threshold, quorum = EXCLUDED.quorum, \
                mute_until = EXCLUDED.mute_until, alert_on_degraded = EXCLUDED.alert_on_degraded, \
                cert_expiry_days = EXCLUDED.cert_expiry_days, \
                max_body_bytes = EXCLUDED.max_body_bytes, \
                redirect_policy = EXCLUDED.redirect_policy, settings = EXCLUDED.settings, \
                assertions = EXCLUDED.assertions, capture_headers = EXCLUDED.capture_headers, \
                managed_by = EXCLUDED.managed_by \
            RETURNING id, name), \
        gone AS ( \
            DELETE FROM datacenter_monitors dm USING up JOIN r ON r.name = up.name \
            WHERE dm.monitor_id = up.id \
              AND dm.datacenter_id NOT IN (SELECT d.id FROM datacenters d WHERE d.code = ANY (r.datacenters))) \
        INSERT INTO datacenter_monitors (datacenter_id, monitor_id) \
        SELECT d.id, up.id FROM up JOIN r ON r.name = up.name JOIN datacenters d ON d.code = ANY (r.datacenters) \
        ON CONFLICT DO NOTHING";
    const DELETE: &'static str = "DELETE FROM api_monitors WHERE name = ANY ($1)";
    type Model = Monitor;
    type Row = MonitorRow;

    fn models(config: &ConfigFile) -> &BTreeMap<String, Monitor> {
        &config.monitors
    }
    fn models_mut(config: &mut ConfigFile) -> &mut BTreeMap<String, Monitor> {
        &mut config.monitors
    }
    fn key(row: &MonitorRow) -> &str {
        &row.name
    }

    fn to_row(name: &str, m: &Monitor, cx: &mut Cx<'_>) -> MonitorRow {
        use monitor_defaults as d;
        let mut headers = BTreeMap::new();
        let mut secret_headers = Vec::new();
        let mut header_refs = BTreeMap::new();
        for (header, value) in &m.headers {
            let resolved = match value {
                HeaderValue::Text(text) if !text.contains("${") => {
                    headers.insert(header.clone(), text.clone());
                    continue;
                }
                HeaderValue::Text(template) => interpolate(template),
                HeaderValue::Secret { secret: reference } => {
                    if reference.starts_with("env:") || reference.starts_with("file:") {
                        secret::resolve(reference)
                            .map(|s| s.expose().to_string())
                            .map_err(|err| err.to_string())
                    } else {
                        Err(
                            "write the secret as env:NAME or file:/path, never the value itself"
                                .to_string(),
                        )
                    }
                }
            };
            match resolved {
                Ok(text) => {
                    headers.insert(header.clone(), text);
                }
                Err(message) => cx.error(&["headers", header], message),
            }
            secret_headers.push(header.clone());
            header_refs.insert(header.clone(), value.clone());
        }
        let (all_datacenters, mut datacenters) = match &m.datacenters {
            Placement::All(AllDatacenters::All) => (true, Vec::new()),
            Placement::Only(codes) => (false, codes.clone()),
        };
        datacenters.sort();
        datacenters.dedup();
        MonitorRow {
            name: name.to_string(),
            kind: m.kind.as_deref().unwrap_or(d::KIND).trim().to_lowercase(),
            method: m
                .method
                .as_deref()
                .unwrap_or(d::METHOD)
                .trim()
                .to_uppercase(),
            url: m.url.clone(),
            headers,
            secret_headers,
            header_refs,
            body: m.body.clone(),
            schedule: m.schedule.clone(),
            enabled: m.enabled.unwrap_or(true),
            expected_status_codes: m
                .expected_status_codes
                .clone()
                .unwrap_or_else(|| d::EXPECTED_STATUS_CODES.to_string()),
            body_contains: m.body_contains.clone(),
            follow_redirects: m.follow_redirects.unwrap_or(true),
            max_redirects: m.max_redirects.unwrap_or(d::MAX_REDIRECTS),
            verify_tls: m.verify_tls.unwrap_or(true),
            ip_family: m
                .ip_family
                .clone()
                .unwrap_or_else(|| d::IP_FAMILY.to_string()),
            all_datacenters,
            datacenters,
            tags: m.tags.clone(),
            failure_threshold: m.failure_threshold.unwrap_or(d::FAILURE_THRESHOLD),
            recovery_threshold: m.recovery_threshold.unwrap_or(d::RECOVERY_THRESHOLD),
            quorum: m.quorum,
            mute_until: m.mute_until,
            alert_on_degraded: m.alert_on_degraded.unwrap_or(false),
            cert_expiry_days: m
                .cert_expiry_days
                .clone()
                .unwrap_or_else(|| d::CERT_EXPIRY_DAYS.to_vec()),
            max_body_bytes: m.max_body_bytes.unwrap_or(d::MAX_BODY_BYTES),
            redirect_policy: m
                .redirect_policy
                .as_deref()
                .unwrap_or(d::REDIRECT_POLICY)
                .trim()
                .to_lowercase(),
            settings: m
                .settings
                .clone()
                .unwrap_or_else(|| Value::Object(Map::new())),
            assertions: checked_assertions(m, cx),
            capture_headers: m.capture_headers.clone(),
        }
    }

    fn to_model(row: &MonitorRow, cx: &mut Cx<'_>) -> Monitor {
        use monitor_defaults as d;
        let headers = row
            .headers
            .iter()
            .map(|(header, value)| {
                let value = if let Some(reference) = row.header_refs.get(header) {
                    reference.clone()
                } else if row.is_secret(header) {
                    let placeholder = placeholder(&[row.name.as_str(), header]);
                    cx.warnings.push(format!(
                        "monitor \"{}\": the secret header {header} holds a value, not a \
                         reference; exported as ${{{placeholder}}}: set that variable before \
                         applying the file",
                        row.name
                    ));
                    HeaderValue::Text(format!("${{{placeholder}}}"))
                } else {
                    HeaderValue::Text(value.clone())
                };
                (header.clone(), value)
            })
            .collect();
        let empty_settings = row.settings.as_object().is_some_and(Map::is_empty);
        Monitor {
            kind: unless_default(row.kind.as_str(), d::KIND).map(str::to_string),
            url: row.url.clone(),
            schedule: row.schedule.clone(),
            datacenters: if row.all_datacenters {
                Placement::All(AllDatacenters::All)
            } else {
                Placement::Only(row.datacenters.clone())
            },
            method: unless_default(row.method.as_str(), d::METHOD).map(str::to_string),
            headers,
            body: row.body.clone(),
            enabled: unless_default(row.enabled, true),
            expected_status_codes: unless_default(
                row.expected_status_codes.as_str(),
                d::EXPECTED_STATUS_CODES,
            )
            .map(str::to_string),
            body_contains: row.body_contains.clone(),
            follow_redirects: unless_default(row.follow_redirects, true),
            max_redirects: unless_default(row.max_redirects, d::MAX_REDIRECTS),
            verify_tls: unless_default(row.verify_tls, true),
            ip_family: unless_default(row.ip_family.as_str(), d::IP_FAMILY).map(str::to_string),
            max_body_bytes: unless_default(row.max_body_bytes, d::MAX_BODY_BYTES),
            redirect_policy: unless_default(row.redirect_policy.as_str(), d::REDIRECT_POLICY)
                .map(str::to_string),
            settings: (!empty_settings).then(|| row.settings.clone()),
            assertions: serde_json::from_value(row.assertions.clone()).unwrap_or_else(|err| {
                cx.warnings.push(format!(
                    "monitor {:?}: its assertions cannot be exported ({err}); fix the row",
                    row.name
                ));
                Vec::new()
            }),
            capture_headers: row.capture_headers.clone(),
            tags: row.tags.clone(),
            failure_threshold: unless_default(row.failure_threshold, d::FAILURE_THRESHOLD),
            recovery_threshold: unless_default(row.recovery_threshold, d::RECOVERY_THRESHOLD),
            quorum: row.quorum,
            mute_until: row.mute_until,
            alert_on_degraded: unless_default(row.alert_on_degraded, false),
            cert_expiry_days: unless_default(
                row.cert_expiry_days.as_slice(),
                d::CERT_EXPIRY_DAYS.as_slice(),
            )
            .map(<[i32]>::to_vec),
        }
    }

    fn summary(model: &Monitor) -> String {
        let kind = model.kind.as_deref().unwrap_or(monitor_defaults::KIND);
        match &model.datacenters {
            Placement::All(_) => format!(" ({kind}, all datacenters)"),
            Placement::Only(codes) if codes.len() == 1 => format!(" ({kind}, 1 datacenter)"),
            Placement::Only(codes) => format!(" ({kind}, {} datacenters)", codes.len()),
        }
    }

    fn changed_secrets(desired: &MonitorRow, current: &MonitorRow) -> Vec<String> {
        desired
            .headers
            .iter()
            .filter(|(header, value)| {
                desired.is_secret(header) && current.headers.get(*header) != Some(*value)
            })
            .map(|(header, _)| format!("headers.{header}"))
            .collect()
    }
}

/// Replaces every `${NAME}` in `template` by the environment variable NAME.
fn interpolate(template: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("`${{` without a closing `}}` in {template:?}"))?;
        let variable = &after[..end];
        if variable.is_empty()
            || !variable
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(format!(
                "`${{{variable}}}` is not an environment variable name (letters, digits, _)"
            ));
        }
        let value = std::env::var(variable).map_err(|_| {
            format!("the environment variable {variable} is not set; set it where you run `vantage apply`")
        })?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `VANTAGE_SECRET_<PARTS>`: the environment variable export names for a secret it
/// cannot write.
fn placeholder(parts: &[&str]) -> String {
    let mut name = String::from("VANTAGE_SECRET");
    for part in parts {
        name.push('_');
        name.extend(part.chars().map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        }));
    }
    name
}

// ---------------------------------------------------------------------------------
// Notification channels
// ---------------------------------------------------------------------------------

/// The config fields of each kind that hold a secret (the notifications migration).
fn secret_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "webhook" => &["secret"],
        "slack" => &["url"],
        "telegram" => &["bot_token"],
        "pagerduty" => &["routing_key"],
        "email" => &["password"],
        _ => &[],
    }
}

const DEFAULT_RATE_LIMIT: i32 = 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelRow {
    name: String,
    kind: String,
    config: Map<String, Value>,
    enabled: bool,
    rate_limit_per_minute: i32,
}

pub struct Channels;

impl Kind for Channels {
    const SECTION: Section = Section::NotificationChannels;
    const SELECT: &'static str = "SELECT jsonb_build_object('name', name, 'kind', kind, \
        'config', config, 'enabled', enabled, 'rate_limit_per_minute', rate_limit_per_minute), \
        managed_by FROM notification_channels";
    const UPSERT: &'static str = "INSERT INTO notification_channels (name, kind, config, enabled, \
            rate_limit_per_minute, managed_by) \
        SELECT r.name, r.kind, r.config, r.enabled, r.rate_limit_per_minute, $2 \
        FROM jsonb_to_recordset($1) AS r (name text, kind text, config jsonb, enabled bool, \
            rate_limit_per_minute int) \
        ON CONFLICT (name) DO UPDATE SET kind = EXCLUDED.kind, config = EXCLUDED.config, \
            enabled = EXCLUDED.enabled, rate_limit_per_minute = EXCLUDED.rate_limit_per_minute, \
            managed_by = EXCLUDED.managed_by";
    const DELETE: &'static str = "DELETE FROM notification_channels WHERE name = ANY ($1)";
    type Model = Channel;
    type Row = ChannelRow;

    fn models(config: &ConfigFile) -> &BTreeMap<String, Channel> {
        &config.notification_channels
    }
    fn models_mut(config: &mut ConfigFile) -> &mut BTreeMap<String, Channel> {
        &mut config.notification_channels
    }
    fn key(row: &ChannelRow) -> &str {
        &row.name
    }
    fn to_row(name: &str, model: &Channel, cx: &mut Cx<'_>) -> ChannelRow {
        let mut config = model.config.clone();
        for field in secret_fields(&model.kind) {
            let Some(Value::String(text)) = config.get(*field) else {
                continue;
            };
            // The delivering process resolves env: and file: itself; ${NAME} is the
            // same reference written the way headers are.
            let reference = match text.strip_prefix("${").and_then(|t| t.strip_suffix('}')) {
                Some(variable) => format!("env:{variable}"),
                None => text.clone(),
            };
            if reference.starts_with("env:") || reference.starts_with("file:") {
                config.insert((*field).to_string(), Value::String(reference));
            } else {
                cx.error(
                    &["config", field],
                    "is a secret: write a reference (env:NAME, file:/path or ${NAME}), never \
                     the value itself"
                        .to_string(),
                );
            }
        }
        ChannelRow {
            name: name.to_string(),
            kind: model.kind.clone(),
            config,
            enabled: model.enabled.unwrap_or(true),
            rate_limit_per_minute: model.rate_limit_per_minute.unwrap_or(DEFAULT_RATE_LIMIT),
        }
    }
    fn to_model(row: &ChannelRow, cx: &mut Cx<'_>) -> Channel {
        let mut config = row.config.clone();
        for field in secret_fields(&row.kind) {
            let Some(Value::String(text)) = config.get(*field) else {
                continue;
            };
            if !(text.starts_with("env:") || text.starts_with("file:")) {
                let placeholder = placeholder(&[row.name.as_str(), field]);
                cx.warnings.push(format!(
                    "channel \"{}\": config.{field} holds a secret value, not a reference; \
                     exported as env:{placeholder}: set that variable where notifications \
                     are sent",
                    row.name
                ));
                config.insert(
                    (*field).to_string(),
                    Value::String(format!("env:{placeholder}")),
                );
            }
        }
        Channel {
            kind: row.kind.clone(),
            config,
            enabled: unless_default(row.enabled, true),
            rate_limit_per_minute: unless_default(row.rate_limit_per_minute, DEFAULT_RATE_LIMIT),
        }
    }
    fn summary(model: &Channel) -> String {
        format!(" ({})", model.kind)
    }
}

// ---------------------------------------------------------------------------------
// Notification routes
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteRow {
    name: String,
    channel: String,
    monitors: Option<Vec<String>>,
    tags: Option<Vec<String>>,
    datacenters: Option<Vec<String>>,
    incident_kinds: Option<Vec<String>>,
    severities: Option<Vec<String>>,
    notify_on_resolve: bool,
    repeat_every_ms: Option<i64>,
}

pub struct Routes;

impl Kind for Routes {
    const SECTION: Section = Section::NotificationRoutes;
    const SELECT: &'static str = "SELECT jsonb_build_object('name', r.name, 'channel', c.name, \
            'monitors', CASE WHEN r.monitor_ids IS NOT NULL THEN coalesce((SELECT jsonb_agg(m.name ORDER BY m.name) \
                FROM api_monitors m WHERE m.id = ANY (r.monitor_ids)), '[]') END, \
            'tags', r.tags, \
            'datacenters', CASE WHEN r.datacenter_ids IS NOT NULL THEN coalesce((SELECT jsonb_agg(d.code ORDER BY d.code) \
                FROM datacenters d WHERE d.id = ANY (r.datacenter_ids)), '[]') END, \
            'incident_kinds', r.incident_kinds, 'severities', r.severities, \
            'notify_on_resolve', r.notify_on_resolve, \
            'repeat_every_ms', (extract(epoch FROM r.repeat_every) * 1000)::bigint), \
            r.managed_by \
        FROM notification_routes r JOIN notification_channels c ON c.id = r.channel_id";
    const UPSERT: &'static str = "INSERT INTO notification_routes (name, channel_id, monitor_ids, \
            tags, datacenter_ids, incident_kinds, severities, notify_on_resolve, repeat_every, managed_by) \
        SELECT r.name, c.id, \
            CASE WHEN r.monitors IS NOT NULL THEN ARRAY(SELECT m.id FROM api_monitors m \
                WHERE m.name = ANY (r.monitors) ORDER BY m.id) END, \
            r.tags, \
            CASE WHEN r.datacenters IS NOT NULL THEN ARRAY(SELECT d.id FROM datacenters d \
                WHERE d.code = ANY (r.datacenters) ORDER BY d.id) END, \
            r.incident_kinds, r.severities, r.notify_on_resolve, \
            make_interval(secs => r.repeat_every_ms / 1000.0), $2 \
        FROM jsonb_to_recordset($1) AS r (name text, channel text, monitors text[], tags text[], \
            datacenters text[], incident_kinds text[], severities text[], notify_on_resolve bool, \
            repeat_every_ms bigint) \
        JOIN notification_channels c ON c.name = r.channel \
        ON CONFLICT (name) DO UPDATE SET channel_id = EXCLUDED.channel_id, \
            monitor_ids = EXCLUDED.monitor_ids, tags = EXCLUDED.tags, \
            datacenter_ids = EXCLUDED.datacenter_ids, incident_kinds = EXCLUDED.incident_kinds, \
            severities = EXCLUDED.severities, notify_on_resolve = EXCLUDED.notify_on_resolve, \
            repeat_every = EXCLUDED.repeat_every, managed_by = EXCLUDED.managed_by";
    const DELETE: &'static str = "DELETE FROM notification_routes WHERE name = ANY ($1)";
    type Model = Route;
    type Row = RouteRow;

    fn models(config: &ConfigFile) -> &BTreeMap<String, Route> {
        &config.notification_routes
    }
    fn models_mut(config: &mut ConfigFile) -> &mut BTreeMap<String, Route> {
        &mut config.notification_routes
    }
    fn key(row: &RouteRow) -> &str {
        &row.name
    }
    fn to_row(name: &str, model: &Route, _: &mut Cx<'_>) -> RouteRow {
        RouteRow {
            name: name.to_string(),
            channel: model.channel.clone(),
            monitors: model.monitors.clone().map(sorted),
            tags: model.tags.clone(),
            datacenters: model.datacenters.clone().map(sorted),
            incident_kinds: model.incident_kinds.clone(),
            severities: model.severities.clone(),
            notify_on_resolve: model.notify_on_resolve.unwrap_or(true),
            repeat_every_ms: model.repeat_every.map(Dur::millis),
        }
    }
    fn to_model(row: &RouteRow, _: &mut Cx<'_>) -> Route {
        Route {
            channel: row.channel.clone(),
            monitors: row.monitors.clone(),
            tags: row.tags.clone(),
            datacenters: row.datacenters.clone(),
            incident_kinds: row.incident_kinds.clone(),
            severities: row.severities.clone(),
            notify_on_resolve: unless_default(row.notify_on_resolve, true),
            repeat_every: row.repeat_every_ms.map(Dur::from_millis),
        }
    }
    fn summary(model: &Route) -> String {
        format!(" (to {})", model.channel)
    }
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names.dedup();
    names
}

// ---------------------------------------------------------------------------------
// Maintenance windows
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowRow {
    name: String,
    reason: String,
    monitors: Vec<String>,
    tags: Vec<String>,
    datacenters: Vec<String>,
    starts_at: Option<DateTime<Utc>>,
    ends_at: Option<DateTime<Utc>>,
    cron: Option<String>,
    duration_ms: Option<i64>,
}

pub struct Windows;

impl Kind for Windows {
    const SECTION: Section = Section::MaintenanceWindows;
    const SELECT: &'static str = "SELECT jsonb_build_object('name', w.name, 'reason', w.reason, \
            'monitors', coalesce((SELECT jsonb_agg(m.name ORDER BY m.name) FROM api_monitors m \
                WHERE m.id = ANY (w.monitor_ids)), '[]'), \
            'tags', w.tags, \
            'datacenters', coalesce((SELECT jsonb_agg(d.code ORDER BY d.code) FROM datacenters d \
                WHERE d.id = ANY (w.datacenter_ids)), '[]'), \
            'starts_at', w.starts_at, 'ends_at', w.ends_at, 'cron', w.cron, \
            'duration_ms', (extract(epoch FROM w.duration) * 1000)::bigint), \
            w.managed_by \
        FROM maintenance_windows w";
    const UPSERT: &'static str = "INSERT INTO maintenance_windows (name, reason, monitor_ids, tags, \
            datacenter_ids, starts_at, ends_at, cron, duration, created_by, managed_by) \
        SELECT r.name, r.reason, \
            ARRAY(SELECT m.id FROM api_monitors m WHERE m.name = ANY (r.monitors) ORDER BY m.id), \
            r.tags, \
            ARRAY(SELECT d.id FROM datacenters d WHERE d.code = ANY (r.datacenters) ORDER BY d.id), \
            coalesce(r.starts_at, now()), r.ends_at, r.cron, \
            make_interval(secs => r.duration_ms / 1000.0), 'vantage apply', $2 \
        FROM jsonb_to_recordset($1) AS r (name text, reason text, monitors text[], tags text[], \
            datacenters text[], starts_at timestamptz, ends_at timestamptz, cron text, duration_ms bigint) \
        ON CONFLICT (name) DO UPDATE SET reason = EXCLUDED.reason, monitor_ids = EXCLUDED.monitor_ids, \
            tags = EXCLUDED.tags, datacenter_ids = EXCLUDED.datacenter_ids, \
            starts_at = EXCLUDED.starts_at, ends_at = EXCLUDED.ends_at, cron = EXCLUDED.cron, \
            duration = EXCLUDED.duration, managed_by = EXCLUDED.managed_by";
    const DELETE: &'static str = "DELETE FROM maintenance_windows WHERE name = ANY ($1)";
    type Model = MaintenanceWindow;
    type Row = WindowRow;

    fn models(config: &ConfigFile) -> &BTreeMap<String, MaintenanceWindow> {
        &config.maintenance_windows
    }
    fn models_mut(config: &mut ConfigFile) -> &mut BTreeMap<String, MaintenanceWindow> {
        &mut config.maintenance_windows
    }
    fn key(row: &WindowRow) -> &str {
        &row.name
    }
    fn to_row(name: &str, model: &MaintenanceWindow, _: &mut Cx<'_>) -> WindowRow {
        WindowRow {
            name: name.to_string(),
            reason: model.reason.clone(),
            monitors: sorted(model.monitors.clone()),
            tags: model.tags.clone(),
            datacenters: sorted(model.datacenters.clone()),
            starts_at: model.starts_at,
            ends_at: model.ends_at,
            cron: model.cron.clone(),
            duration_ms: model.duration.map(Dur::millis),
        }
    }
    fn to_model(row: &WindowRow, _: &mut Cx<'_>) -> MaintenanceWindow {
        MaintenanceWindow {
            reason: row.reason.clone(),
            monitors: row.monitors.clone(),
            tags: row.tags.clone(),
            datacenters: row.datacenters.clone(),
            starts_at: row.starts_at,
            ends_at: row.ends_at,
            cron: row.cron.clone(),
            duration: row.duration_ms.map(Dur::from_millis),
        }
    }
    // A window without starts_at started when it was first applied; later applies
    // keep that start.
    fn keep_unset(row: &mut WindowRow, current: &WindowRow) {
        if row.starts_at.is_none() {
            row.starts_at = current.starts_at;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_names_the_missing_variable() {
        std::env::set_var("VANTAGE_TEST_TOKEN_A", "abc");
        assert_eq!(
            interpolate("Bearer ${VANTAGE_TEST_TOKEN_A}").unwrap(),
            "Bearer abc"
        );
        let err = interpolate("${VANTAGE_TEST_UNSET_B}").unwrap_err();
        assert!(err.contains("VANTAGE_TEST_UNSET_B is not set"), "{err}");
        assert!(interpolate("${bad name}").is_err());
    }

    #[test]
    fn placeholders_are_variable_names() {
        assert_eq!(
            placeholder(&["api health", "X-Api-Key"]),
            "VANTAGE_SECRET_API_HEALTH_X_API_KEY"
        );
    }
}
