//! The YAML format: one [`ConfigFile`] per file, each section a map from an object's
//! name (a datacenter's or region's code) to the object. Every optional field is an
//! `Option` whose `None` means the database's default, so `vantage export` leaves
//! defaults out and a file says only what differs. The JSON Schema
//! (`docs/vantage-config.schema.json`) is derived from these same types.
//!
//! These types only describe files; [`super::objects`] turns them into table rows and
//! back.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One configuration file. Files of one `apply` are merged; a name may appear once.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Vantage configuration")]
pub struct ConfigFile {
    /// Regions by code, e.g. `us-east`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub regions: BTreeMap<String, Region>,
    /// Datacenters by code, e.g. `va`: the code `vantage run --datacenter` takes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub datacenters: BTreeMap<String, Datacenter>,
    /// Schedules by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub schedules: BTreeMap<String, Schedule>,
    /// Monitors by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub monitors: BTreeMap<String, Monitor>,
    /// Notification channels by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub notification_channels: BTreeMap<String, Channel>,
    /// Notification routes by name: which incidents go to which channel.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub notification_routes: BTreeMap<String, Route>,
    /// Maintenance windows by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub maintenance_windows: BTreeMap<String, MaintenanceWindow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// Display name, e.g. "US East".
    pub name: String,
    /// A larger grouping, e.g. "americas".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Datacenter {
    /// Display name, e.g. "Virginia".
    pub name: String,
    /// Region code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Probe every this long (whole seconds, e.g. `30s`, `5m`). Exactly one of
    /// `interval` and `cron`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Dur>,
    /// A cron expression with a seconds field, e.g. `0 */5 * * * *`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// The probe's deadline (default 10s); shorter than the interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    /// Slower than this turns `up` into `warning`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning_threshold: Option<Dur>,
    /// Slower than this turns `up` into `critical`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical_threshold: Option<Dur>,
    /// Store the (capped) response body with each heartbeat (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_response_body: Option<bool>,
}

/// Where a monitor runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(
    untagged,
    expecting = "`all` or a list of datacenter codes such as [va, lon]"
)]
pub enum Placement {
    /// Every datacenter, including ones added later.
    All(AllDatacenters),
    /// These datacenters, by code.
    Only(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AllDatacenters {
    All,
}

/// A request header's value in a file: text, in which `${NAME}` is replaced by the
/// environment variable NAME when applying, or `{secret: env:NAME | file:/path}`.
/// A value with a reference is a secret header: never logged, shown or exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(
    untagged,
    expecting = "a string or {secret: \"env:NAME\" | \"file:/path\"}"
)]
pub enum HeaderValue {
    Text(String),
    Secret { secret: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Monitor {
    /// http (default), tcp, tls or dns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The target in the kind's form: https://..., tcp://host:port, tls://host:port,
    /// dns://name?type=A&server=ip.
    pub url: String,
    /// The schedule's name.
    pub schedule: String,
    /// `all`, or a list of datacenter codes.
    pub datacenters: Placement,
    /// HTTP method (default GET).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Request headers. Write secrets as `${ENV_NAME}` or `{secret: file:/path}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, HeaderValue>,
    /// Request body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Default `200-399`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_status_codes: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow_redirects: Option<bool>,
    /// Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_redirects: Option<i32>,
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_tls: Option<bool>,
    /// any (default), ipv4 or ipv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_family: Option<String>,
    /// Default 1048576.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<i32>,
    /// safe (default), same-host or any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_policy: Option<String>,
    /// Kind-specific settings: tcp {send, expect}, tls {starttls}, dns {answers, rcode}.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<serde_json::Value>,
    /// Checks on the response, as the api_monitors.assertions column holds them, e.g.
    /// `{type: json, path: $.status, op: "==", value: ok}` (README, "Assertions").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assertions: Vec<crate::assertions::AssertionSpec>,
    /// Response headers stored with every heartbeat.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capture_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Consecutive failed slots before a datacenter counts it failing (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<i32>,
    /// Consecutive successful slots before it recovers (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_threshold: Option<i32>,
    /// Datacenters that must agree it is down (default: a majority).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<i32>,
    /// Incidents are recorded but nobody is told until then (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mute_until: Option<DateTime<Utc>>,
    /// Open incidents for slow (warning/critical) heartbeats too (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_on_degraded: Option<bool>,
    /// Days before certificate expiry to notify (default [30, 14, 7, 1]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_expiry_days: Option<Vec<i32>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    /// webhook, slack, telegram, pagerduty or email.
    pub kind: String,
    /// The kind's settings (see the notifications migration). Secret fields (secret,
    /// slack url, bot_token, routing_key, password) must be references: `env:NAME`,
    /// `file:/path` or `${NAME}`.
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_minute: Option<i32>,
}

/// Which incidents go to a channel. Every filter set must match; a missing filter
/// matches everything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The channel's name.
    pub channel: String,
    /// Monitor names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitors: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// Datacenter codes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacenters: Option<Vec<String>>,
    /// monitor_down, monitor_degraded, datacenter_impaired, certificate_expiring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident_kinds: Option<Vec<String>>,
    /// critical, warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severities: Option<Vec<String>>,
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_on_resolve: Option<bool>,
    /// Remind every this long while open (at least 1m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_every: Option<Dur>,
}

/// Planned work: no incident opens for what it covers. One-off (`ends_at`) or
/// recurring (`cron` + `duration`, UTC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceWindow {
    pub reason: String,
    /// Monitor names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub monitors: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Datacenter codes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datacenters: Vec<String>,
    /// RFC 3339; default: when first applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<DateTime<Utc>>,
    /// 5 fields (or 6 with seconds first), e.g. `0 3 * * SUN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// How long each occurrence of a recurring window lasts, e.g. `2h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Dur>,
}

/// A duration written like `30s`, `1m 30s` or `250ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[schemars(with = "String")]
pub struct Dur(pub Duration);

impl Dur {
    pub fn millis(self) -> i64 {
        self.0.as_millis().try_into().unwrap_or(i64::MAX)
    }

    pub fn from_millis(millis: i64) -> Dur {
        Dur(Duration::from_millis(millis.max(0).unsigned_abs()))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map(Dur).map_err(|err| {
            serde::de::Error::custom(format!(
                "{text:?} is not a duration ({err}); write e.g. 30s, 5m or 1h 30m"
            ))
        })
    }
}
