//! `pagerduty`: Events API v2 (`POST {api_base}/v2/enqueue`). Config: `{"routing_key",
//! "api_base"?}` (default `https://events.pagerduty.com`).
//!
//! An incident maps to one PagerDuty alert: `dedup_key` is the incident id, and its
//! events trigger (opened, updated, reminder), acknowledge or resolve it. Certificate
//! notices, summaries and tests trigger alerts of their own (keyed by their event id).

use serde_json::{json, Value};

use super::channel::{api_base, ConfigError, Fields, JsonMessage, JsonPost, Outgoing};
use super::render::render;
use super::secret::{Redactor, Secret};

const DEFAULT_API_BASE: &str = "https://events.pagerduty.com";

/// PagerDuty cuts a summary at 1024 characters.
const MAX_SUMMARY_CHARS: usize = 1024;

pub struct PagerDuty {
    routing_key: Secret,
}

impl PagerDuty {
    pub fn from_config(
        fields: &Fields<'_>,
        redactor: &mut Redactor,
    ) -> Result<JsonPost<PagerDuty>, ConfigError> {
        let routing_key = fields.secret("routing_key", redactor)?;
        let url = format!("{}/v2/enqueue", api_base(fields, DEFAULT_API_BASE)?);
        Ok(JsonPost::new(url, redactor, PagerDuty { routing_key }))
    }
}

/// The Events API v2 body for `message`.
pub fn event(routing_key: &str, message: &Outgoing<'_>) -> Value {
    let payload = message.payload;
    let action = match message.event {
        "incident.acknowledged" => "acknowledge",
        "incident.resolved" | "datacenter.recovered" => "resolve",
        _ => "trigger",
    };
    let dedup_key = match payload.pointer("/incident/id").and_then(Value::as_i64) {
        Some(id) => id.to_string(),
        None => message.event_id.to_string(),
    };
    let mut body = json!({
        "routing_key": routing_key,
        "event_action": action,
        "dedup_key": dedup_key,
    });
    if action == "trigger" {
        let text = render(message.event, payload);
        let severity = match payload
            .pointer("/incident/severity")
            .and_then(Value::as_str)
        {
            Some("critical") => "critical",
            Some(_) => "warning",
            None if message.event == "test" => "info",
            None => "warning",
        };
        let source = payload
            .pointer("/monitor/url")
            .or_else(|| payload.pointer("/datacenter/code"))
            .and_then(Value::as_str)
            .unwrap_or("vantage");
        body["payload"] = json!({
            "summary": text.title.chars().take(MAX_SUMMARY_CHARS).collect::<String>(),
            "source": source,
            "severity": severity,
            "timestamp": payload.get("occurred_at"),
            "component": payload.pointer("/monitor/name"),
            "class": payload.pointer("/incident/kind").or_else(|| payload.get("event")),
            "custom_details": payload,
        });
    }
    body
}

impl JsonMessage for PagerDuty {
    fn compose(&self, message: &Outgoing<'_>) -> (Vec<(String, String)>, String) {
        (
            Vec::new(),
            event(self.routing_key.expose(), message).to_string(),
        )
    }
}
