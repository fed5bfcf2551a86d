//! `telegram`: the Bot API's `sendMessage`, plain text. Config: `{"bot_token",
//! "chat_id", "api_base"?}` (default `https://api.telegram.org`). The token is part of
//! the request path, so every error is scrubbed of it.

use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use serde_json::{json, Value};

use super::channel::{
    api_base, post_json, ChannelKind, ConfigError, Delivered, Failed, Fields, Outgoing, Transport,
};
use super::render::render;
use super::secret::Redactor;

const DEFAULT_API_BASE: &str = "https://api.telegram.org";

pub struct Telegram {
    url: String,
    chat_id: Value,
    redactor: Redactor,
}

impl Telegram {
    pub fn from_config(
        fields: &Fields<'_>,
        redactor: &mut Redactor,
    ) -> Result<Telegram, ConfigError> {
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
        Ok(Telegram {
            url,
            chat_id,
            redactor: redactor.clone(),
        })
    }
}

impl ChannelKind for Telegram {
    fn send<'a>(
        &'a self,
        transport: &'a Transport,
        message: &'a Outgoing<'a>,
    ) -> BoxFuture<'a, Result<Delivered, Failed>> {
        async move {
            let body = json!({
                "chat_id": self.chat_id,
                "text": render(message.event, message.payload).plain(),
                "disable_web_page_preview": true,
            })
            .to_string();
            post_json(transport, &self.url, Vec::new(), body, &self.redactor).await
        }
        .boxed()
    }
}
