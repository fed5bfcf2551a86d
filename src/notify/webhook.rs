//! `webhook`: a POST of the JSON payload, signed as Standard Webhooks 1.0 says
//! ([`super::signature`]). Config: `{"url", "secret": "whsec_..."}`.
//!
//! The body is the payload plus `"id"` (the event id); `webhook-id` is that id on every
//! attempt, `webhook-timestamp` the Unix time of this attempt (receivers reject ones
//! more than five minutes off, so a retry is signed anew).

use super::channel::{ConfigError, Fields, JsonMessage, JsonPost, Outgoing};
use super::secret::Redactor;
use super::signature::SigningKey;

pub struct Webhook {
    key: SigningKey,
}

impl Webhook {
    pub fn from_config(
        fields: &Fields<'_>,
        redactor: &mut Redactor,
    ) -> Result<JsonPost<Webhook>, ConfigError> {
        let url = fields.secret("url", redactor)?.expose().to_string();
        let secret = fields.secret("secret", redactor)?;
        let key = SigningKey::from_secret(&secret)
            .map_err(|err| ConfigError::new("secret", err.to_string()))?;
        Ok(JsonPost::new(url, redactor, Webhook { key }))
    }
}

/// The body a receiver gets: the payload with the event id added.
pub fn body(message: &Outgoing<'_>) -> String {
    let mut body = message.payload.clone();
    if let Some(object) = body.as_object_mut() {
        object.insert("id".into(), message.event_id.into());
    }
    body.to_string()
}

impl JsonMessage for Webhook {
    fn compose(&self, message: &Outgoing<'_>) -> (Vec<(String, String)>, String) {
        let body = body(message);
        let timestamp = chrono::Utc::now().timestamp();
        let signature = self.key.sign(message.event_id, timestamp, body.as_bytes());
        let headers = vec![
            ("webhook-id".to_string(), message.event_id.to_string()),
            ("webhook-timestamp".to_string(), timestamp.to_string()),
            ("webhook-signature".to_string(), signature),
        ];
        (headers, body)
    }
}
