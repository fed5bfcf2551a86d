//! `telegram`: the Bot API's `sendMessage`, plain text. Config: `{"bot_token",
//! "chat_id", "api_base"?}` (default `https://api.telegram.org`). The token is part of
//! the request path, so every error is scrubbed of it.

use serde_json::{json, Value};

use super::channel::{api_base, ConfigError, Fields, JsonMessage, JsonPost, Outgoing};
use super::render::render;
use super::secret::Redactor;

const DEFAULT_API_BASE: &str = "https://api.telegram.org";

pub struct Telegram {
    chat_id: Value,
}

impl Telegram {
    pub fn from_config(
        fields: &Fields<'_>,
        redactor: &mut Redactor,
    ) -> Result<JsonPost<Telegram>, ConfigError> {
        let token = fields.secret("bot_token", redactor)?;
        let chat_id = match fields.get("chat_id") {
            Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
            _ => {
                return Err(ConfigError::new(
                    "chat_id",
                    "must be a chat number or an @channel name",
                ))
            }
        };
        let url = format!(
            "{}/bot{}/sendMessage",
            api_base(fields, DEFAULT_API_BASE)?,
            token.expose()
        );
        Ok(JsonPost::new(url, redactor, Telegram { chat_id }))
    }
}

impl JsonMessage for Telegram {
    fn compose(&self, message: &Outgoing<'_>) -> (Vec<(String, String)>, String) {
        let body = json!({
            "chat_id": self.chat_id,
            "text": render(message.event, message.payload).plain(),
            "disable_web_page_preview": true,
        });
        (Vec::new(), body.to_string())
    }
}
