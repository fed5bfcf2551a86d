//! What every channel kind implements ([`ChannelKind`]), the registry that builds one
//! from a `notification_channels` row ([`build`]), and what kinds share: reading their
//! config with errors that name the field ([`Fields`]) and POSTing JSON over a fresh
//! connection through the prober ([`post_json`]).
//!
//! A kind is one file (webhook, slack, telegram, pagerduty, email) and one line in
//! [`build`]. Kinds turn a message into their receiver's format and send it; they never
//! touch the outbox, retries or rate limits.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::Value;

use super::secret::{self, Redactor, Secret};
use super::{email, pagerduty, slack, telegram, webhook};
use crate::probe::{Monitor, MonitorSpec, Prober};

/// One message on its way to one channel.
#[derive(Debug)]
pub struct Outgoing<'a> {
    /// The idempotency key (`webhook-id`), the same on every attempt.
    pub event_id: &'a str,
    /// `incident.opened`, `certificate.expiring`, `test`, ...
    pub event: &'a str,
    /// The facts frozen in `notifications.payload` (see the migration).
    pub payload: &'a Value,
}

/// What a kind needs from the process to send.
#[derive(Debug, Clone)]
pub struct Transport {
    pub prober: Arc<Prober>,
    /// The whole attempt's deadline.
    pub timeout: Duration,
}

/// The receiver took the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// HTTP status or SMTP reply code.
    pub status_code: Option<i32>,
}

/// The attempt failed; it will be retried. The message is already scrubbed of secrets
/// by the kind that produced it (see [`Redactor`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub status_code: Option<i32>,
    pub message: String,
}

impl Failed {
    pub fn new(message: impl Into<String>) -> Failed {
        Failed {
            status_code: None,
            message: message.into(),
        }
    }
}

pub trait ChannelKind: Send + Sync {
    /// Sends `message` once. Errors are returned, never logged here.
    fn send<'a>(
        &'a self,
        transport: &'a Transport,
        message: &'a Outgoing<'a>,
    ) -> BoxFuture<'a, Result<Delivered, Failed>>;
}

/// A kind that POSTs one JSON document per message (webhook, Slack, Telegram,
/// PagerDuty): it only composes the request; [`JsonPost`] sends it.
pub trait JsonMessage: Send + Sync {
    /// Extra headers and the body for `message`.
    fn compose(&self, message: &Outgoing<'_>) -> (Vec<(String, String)>, String);
}

/// Sends what a [`JsonMessage`] composes to `url`, scrubbing errors with `redactor`.
pub struct JsonPost<K> {
    url: String,
    redactor: Redactor,
    kind: K,
}

impl<K> JsonPost<K> {
    pub fn new(url: String, redactor: &Redactor, kind: K) -> JsonPost<K> {
        JsonPost {
            url,
            redactor: redactor.clone(),
            kind,
        }
    }
}

impl<K: JsonMessage> ChannelKind for JsonPost<K> {
    fn send<'a>(
        &'a self,
        transport: &'a Transport,
        message: &'a Outgoing<'a>,
    ) -> BoxFuture<'a, Result<Delivered, Failed>> {
        let (headers, body) = self.kind.compose(message);
        Box::pin(post_json(
            transport,
            &self.url,
            headers,
            body,
            &self.redactor,
        ))
    }
}

/// A bad channel config, found when a message is about to be sent (the database checks
/// the shape on write; secrets are resolved only here).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("config.{field} {problem}")]
pub struct ConfigError {
    pub field: &'static str,
    pub problem: String,
}

impl ConfigError {
    pub fn new(field: &'static str, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            field,
            problem: problem.into(),
        }
    }
}

/// Builds the kind named `kind` from its config, resolving its secrets and adding them
/// to `redactor`. The registry: one line per kind.
pub fn build(
    kind: &str,
    config: &Value,
    redactor: &mut Redactor,
) -> Result<Box<dyn ChannelKind>, ConfigError> {
    let fields = Fields::new(config)?;
    Ok(match kind {
        "webhook" => Box::new(webhook::Webhook::from_config(&fields, redactor)?),
        "slack" => Box::new(slack::Slack::from_config(&fields, redactor)?),
        "telegram" => Box::new(telegram::Telegram::from_config(&fields, redactor)?),
        "pagerduty" => Box::new(pagerduty::PagerDuty::from_config(&fields, redactor)?),
        "email" => Box::new(email::Email::from_config(&fields, redactor)?),
        other => {
            return Err(ConfigError::new(
                "kind",
                format!(
                "{other:?} is not a channel kind; use webhook, slack, telegram, pagerduty or email"
            ),
            ))
        }
    })
}

/// A channel's config object, read field by field.
pub struct Fields<'a>(&'a serde_json::Map<String, Value>);

impl<'a> Fields<'a> {
    pub fn new(config: &'a Value) -> Result<Fields<'a>, ConfigError> {
        config
            .as_object()
            .map(Fields)
            .ok_or_else(|| ConfigError::new("config", "must be a JSON object"))
    }

    pub fn optional_string(&self, field: &'static str) -> Result<Option<&'a str>, ConfigError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) if !text.trim().is_empty() => Ok(Some(text.trim())),
            Some(_) => Err(ConfigError::new(field, "must be a non-empty string")),
        }
    }

    pub fn string(&self, field: &'static str) -> Result<&'a str, ConfigError> {
        self.optional_string(field)?
            .ok_or_else(|| ConfigError::new(field, "is missing"))
    }

    /// A secret: the value, `env:NAME` or `file:/path`; added to `redactor`.
    pub fn secret(
        &self,
        field: &'static str,
        redactor: &mut Redactor,
    ) -> Result<Secret, ConfigError> {
        let reference = self.string(field)?;
        let secret =
            secret::resolve(reference).map_err(|err| ConfigError::new(field, err.to_string()))?;
        redactor.add(&secret);
        Ok(secret)
    }

    pub fn get(&self, field: &str) -> Option<&'a Value> {
        self.0.get(field)
    }
}

/// An http(s) base URL without its trailing slash, or `default`.
pub fn api_base(fields: &Fields<'_>, default: &str) -> Result<String, ConfigError> {
    let base = fields.optional_string("api_base")?.unwrap_or(default);
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(ConfigError::new(
            "api_base",
            format!("must be an http:// or https:// URL (got {base:?})"),
        ));
    }
    Ok(base.trim_end_matches('/').to_string())
}

/// Bytes of a receiver's answer kept in an error.
const ERROR_BODY_BYTES: usize = 300;

/// POSTs `body` as JSON to `url` over a fresh connection, with `headers`, under the
/// transport's timeout; any 2xx is success. Redirects are not followed: a receiver that
/// moved must be reconfigured, not guessed. `redactor` scrubs the error text (the URL
/// itself may hold a token).
pub async fn post_json(
    transport: &Transport,
    url: &str,
    headers: Vec<(String, String)>,
    body: String,
    redactor: &Redactor,
) -> Result<Delivered, Failed> {
    let mut all_headers = vec![("Content-Type".to_string(), "application/json".to_string())];
    all_headers.extend(headers);
    let spec = MonitorSpec {
        method: "POST".into(),
        url: url.to_string(),
        headers: all_headers,
        body: Some(body),
        timeout: transport.timeout,
        expected_status: "200-299".into(),
        follow_redirects: false,
        capture_body_bytes: Some(ERROR_BODY_BYTES),
        ..MonitorSpec::default()
    };
    let request =
        Monitor::new(spec).map_err(|err| Failed::new(redactor.scrub(&err.to_string())))?;
    let report = transport.prober.probe(&request).await;
    let status_code = report.http_status.map(i32::from);
    if report.success() {
        return Ok(Delivered { status_code });
    }
    let mut message = match (report.http_status, &report.error_message) {
        (Some(code), _) => format!("HTTP {code}"),
        (None, Some(error)) => error.clone(),
        (None, None) => "no answer".to_string(),
    };
    if let Some(answer) = report
        .response_body
        .as_deref()
        .filter(|b| !b.trim().is_empty())
    {
        message.push_str(": ");
        message.push_str(answer.trim());
    }
    Err(Failed {
        status_code,
        message: redactor.scrub(&message),
    })
}
