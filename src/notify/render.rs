//! A message for people: a one-line title and a few labelled lines, made from a
//! notification's payload. Slack, Telegram, e-mail and PagerDuty's summary all show
//! this; webhooks send the payload itself.

use serde_json::Value;

/// What a person reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text {
    /// "DOWN: checkout API", "RESOLVED: checkout API (down 5m 3s)", ...
    pub title: String,
    /// ("Datacenters", "va, lon"), ("First error", "connect_refused: ..."), ...
    pub lines: Vec<(&'static str, String)>,
}

impl Text {
    /// Title, then one `Label: value` line each.
    pub fn plain(&self) -> String {
        let mut out = self.title.clone();
        for (label, value) in &self.lines {
            out.push('\n');
            out.push_str(label);
            out.push_str(": ");
            out.push_str(value);
        }
        out
    }
}

/// Events listed one per line in a summary; chat messages have size limits (Telegram:
/// 4,096 characters, Slack: 50 blocks).
const MAX_SUMMARY_LINES: usize = 20;

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(value, |v, key| v.get(key))
        .and_then(Value::as_str)
}

fn codes(datacenters: Option<&Value>) -> Option<String> {
    let list: Vec<&str> = datacenters?
        .as_array()?
        .iter()
        .filter_map(|d| d.get("code").and_then(Value::as_str))
        .collect();
    (!list.is_empty()).then(|| list.join(", "))
}

/// "1h 2m 3s", "4m 0s", "12s".
pub fn duration(seconds: f64) -> String {
    let total = seconds.max(0.0).round() as u64;
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s}s"),
        _ => format!("{h}h {m}m {s}s"),
    }
}

pub fn render(event: &str, payload: &Value) -> Text {
    let monitor = str_at(payload, &["monitor", "name"]);
    let datacenter = str_at(payload, &["datacenter", "code"]);
    let subject = monitor.or(datacenter).unwrap_or("(deleted)").to_string();
    let kind = str_at(payload, &["incident", "kind"]).unwrap_or_default();
    let mut lines = Vec::new();

    let title = match event {
        "incident.opened" if kind == "monitor_degraded" => format!("DEGRADED: {subject}"),
        "incident.opened" => format!("DOWN: {subject}"),
        "incident.updated" => format!("UPDATED: {subject}"),
        "incident.reminder" => format!("STILL OPEN: {subject}"),
        "incident.acknowledged" => match str_at(payload, &["incident", "acknowledged_by"]) {
            Some(who) => format!("ACKNOWLEDGED: {subject} (by {who})"),
            None => format!("ACKNOWLEDGED: {subject}"),
        },
        "incident.resolved" => format!("RESOLVED: {subject}"),
        "datacenter.impaired" => format!("DATACENTER IMPAIRED: {subject}"),
        "datacenter.recovered" => format!("DATACENTER RECOVERED: {subject}"),
        "certificate.expiring" => {
            let days = payload
                .pointer("/certificate/days_left")
                .and_then(Value::as_f64)
                .unwrap_or_default();
            if let Some(at) = str_at(payload, &["certificate", "expires_at"]) {
                lines.push(("Expires", at.to_string()));
            }
            format!("CERTIFICATE EXPIRING in {days:.1} days: {subject}")
        }
        "notifications.coalesced" => {
            let items = payload
                .get("events")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for item in items.iter().take(MAX_SUMMARY_LINES) {
                let line = format!(
                    "{} {}",
                    str_at(item, &["event"]).unwrap_or("?"),
                    str_at(item, &["subject"]).unwrap_or("?")
                );
                lines.push(("Event", line));
            }
            if items.len() > MAX_SUMMARY_LINES {
                let more = items.len() - MAX_SUMMARY_LINES;
                lines.push((
                    "And",
                    format!("{more} more (all of them in the webhook body and in SQL)"),
                ));
            }
            return Text {
                title: format!(
                    "{} more notifications (rate limit reached; summarised here)",
                    items.len()
                ),
                lines,
            };
        }
        "test" => {
            let channel = str_at(payload, &["channel"]).unwrap_or("?");
            return Text {
                title: format!("Test notification from Vantage to channel {channel}"),
                lines: vec![("Sent by", "vantage notify test".to_string())],
            };
        }
        other => format!("{other}: {subject}"),
    };

    if let Some(url) = str_at(payload, &["monitor", "url"]) {
        lines.push(("Monitor", format!("{subject} ({url})")));
    }
    let event_dcs = codes(payload.pointer("/change/datacenters"));
    let incident_dcs = codes(payload.pointer("/incident/datacenters"));
    if let Some(dcs) = event_dcs.or(incident_dcs) {
        lines.push(("Datacenters", dcs));
    }
    if let Some(cause) = str_at(payload, &["incident", "cause"]) {
        lines.push(("Cause", cause.to_string()));
    }
    if let Some(error) = str_at(payload, &["change", "sample_error"]) {
        lines.push(("First error", error.to_string()));
    }
    if let Some(seconds) = payload
        .pointer("/incident/duration_seconds")
        .and_then(Value::as_f64)
    {
        lines.push(("Duration", duration(seconds)));
    }
    if let Some(id) = payload.pointer("/incident/id").and_then(Value::as_i64) {
        lines.push(("Incident", format!("#{id}")));
    }
    Text { title, lines }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_resolved_incident_says_what_where_and_how_long() {
        let payload = json!({
            "event": "incident.resolved",
            "incident": {"id": 7, "kind": "monitor_down", "cause": "down from va, lon",
                         "duration_seconds": 303.4,
                         "datacenters": [{"id": 1, "code": "va"}, {"id": 2, "code": "lon"}]},
            "change": {"kind": "resolved", "datacenters": [], "sample_error": null},
            "monitor": {"id": 3, "name": "checkout", "url": "https://shop.example/health"}
        });
        let text = render("incident.resolved", &payload);
        assert_eq!(text.title, "RESOLVED: checkout");
        assert_eq!(
            text.plain(),
            "RESOLVED: checkout\nMonitor: checkout (https://shop.example/health)\n\
             Datacenters: va, lon\nCause: down from va, lon\nDuration: 5m 3s\nIncident: #7"
        );
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(12.0), "12s");
        assert_eq!(duration(240.0), "4m 0s");
        assert_eq!(duration(3723.0), "1h 2m 3s");
    }
}
