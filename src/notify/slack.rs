//! `slack`: an incoming-webhook message. Config: `{"url"}` (the hook URL, which is
//! itself the credential: write it as `env:NAME` or `file:/path` to keep it out of the
//! database). A `text` fallback for notifications and a block layout: the title, then
//! the status, monitor, datacenters, first error and duration as fields.

use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use serde_json::{json, Value};

use super::channel::{
    post_json, ChannelKind, ConfigError, Delivered, Failed, Fields, Outgoing, Transport,
};
use super::render::{render, Text};
use super::secret::Redactor;

pub struct Slack {
    url: String,
    redactor: Redactor,
}

impl Slack {
    pub fn from_config(fields: &Fields<'_>, redactor: &mut Redactor) -> Result<Slack, ConfigError> {
        let url = fields.secret("url", redactor)?.expose().to_string();
        Ok(Slack {
            url,
            redactor: redactor.clone(),
        })
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

impl ChannelKind for Slack {
    fn send<'a>(
        &'a self,
        transport: &'a Transport,
        message: &'a Outgoing<'a>,
    ) -> BoxFuture<'a, Result<Delivered, Failed>> {
        async move {
            let body = self::message(&render(message.event, message.payload)).to_string();
            post_json(transport, &self.url, Vec::new(), body, &self.redactor).await
        }
        .boxed()
    }
}
