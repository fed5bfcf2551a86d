//! `slack`: an incoming-webhook message. Config: `{"url"}` (the hook URL, which is
//! itself the credential: write it as `env:NAME` or `file:/path` to keep it out of the
//! database). A `text` fallback for notifications and a block layout: the title, then
//! the status, monitor, datacenters, first error and duration as fields.

use serde_json::{json, Value};

use super::channel::{ConfigError, Fields, JsonMessage, JsonPost, Outgoing};
use super::render::{render, Text};
use super::secret::Redactor;

pub struct Slack;

impl Slack {
    pub fn from_config(
        fields: &Fields<'_>,
        redactor: &mut Redactor,
    ) -> Result<JsonPost<Slack>, ConfigError> {
        let url = fields.secret("url", redactor)?.expose().to_string();
        Ok(JsonPost::new(url, redactor, Slack))
    }
}

/// Slack's Block Kit message for `text`.
pub fn message(text: &Text) -> Value {
    let fields: Vec<Value> = text
        .lines
        .iter()
        .map(|(label, value)| json!({"type": "mrkdwn", "text": format!("*{label}*\n{value}")}))
        .collect();
    let mut blocks = vec![json!({
        "type": "header",
        "text": {"type": "plain_text", "text": text.title},
    })];
    // A section holds at most ten fields.
    for chunk in fields.chunks(10) {
        blocks.push(json!({"type": "section", "fields": chunk}));
    }
    json!({"text": text.title, "blocks": blocks})
}

impl JsonMessage for Slack {
    fn compose(&self, message: &Outgoing<'_>) -> (Vec<(String, String)>, String) {
        let text = render(message.event, message.payload);
        (Vec::new(), self::message(&text).to_string())
    }
}
