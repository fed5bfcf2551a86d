//! `email`: a plain-text message over SMTP with lettre, STARTTLS (port 587) or implicit
//! TLS (port 465), through rustls with the process's one crypto provider (aws-lc-rs).
//! Config: `{"host", "port"?, "tls"?: "starttls"|"implicit", "from", "to": [..],
//! "username"?, "password"?, "ca_file"?}`; `ca_file` (PEM) replaces the public roots
//! for a server with a private certificate authority. Plain SMTP is not offered.

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::Value;

use super::channel::{ChannelKind, ConfigError, Delivered, Failed, Fields, Outgoing, Transport};
use super::render::render;
use super::secret::{Redactor, Secret};

pub struct Email {
    host: String,
    port: u16,
    implicit_tls: bool,
    from: Mailbox,
    to: Vec<Mailbox>,
    credentials: Option<(String, Secret)>,
    ca_pem: Option<Vec<u8>>,
    redactor: Redactor,
}

fn mailbox(field: &'static str, text: &str) -> Result<Mailbox, ConfigError> {
    text.parse()
        .map_err(|err| ConfigError::new(field, format!("{text:?} is not an e-mail address: {err}")))
}

impl Email {
    pub fn from_config(fields: &Fields<'_>, redactor: &mut Redactor) -> Result<Email, ConfigError> {
        let host = fields.string("host")?.to_string();
        let implicit_tls = match fields.optional_string("tls")? {
            None | Some("starttls") => false,
            Some("implicit") => true,
            Some(other) => {
                return Err(ConfigError::new(
                    "tls",
                    format!("must be \"starttls\" or \"implicit\" (got {other:?})"),
                ))
            }
        };
        let port = match fields.get("port") {
            None => {
                if implicit_tls {
                    465
                } else {
                    587
                }
            }
            Some(value) => value
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0)
                .ok_or_else(|| ConfigError::new("port", "must be a TCP port such as 587"))?,
        };
        let from = mailbox("from", fields.string("from")?)?;
        let to = fields
            .get("to")
            .and_then(Value::as_array)
            .filter(|list| !list.is_empty())
            .ok_or_else(|| ConfigError::new("to", "must be a non-empty list of addresses"))?
            .iter()
            .map(|v| mailbox("to", v.as_str().unwrap_or_default()))
            .collect::<Result<Vec<_>, _>>()?;
        let credentials = match fields.optional_string("username")? {
            Some(user) => Some((user.to_string(), fields.secret("password", redactor)?)),
            None => None,
        };
        let ca_pem = match fields.optional_string("ca_file")? {
            Some(path) => Some(std::fs::read(path).map_err(|err| {
                ConfigError::new("ca_file", format!("cannot read {path}: {}", err.kind()))
            })?),
            None => None,
        };
        Ok(Email {
            host,
            port,
            implicit_tls,
            from,
            to,
            credentials,
            ca_pem,
            redactor: redactor.clone(),
        })
    }

    fn transport(&self, timeout: Duration) -> Result<AsyncSmtpTransport<Tokio1Executor>, Failed> {
        let mut tls = TlsParameters::builder(self.host.clone());
        if let Some(pem) = &self.ca_pem {
            let ca = Certificate::from_pem(pem)
                .map_err(|err| Failed::new(format!("config.ca_file: {err}")))?;
            tls = tls
                .certificate_store(CertificateStore::None)
                .add_root_certificate(ca);
        }
        let tls = tls
            .build_rustls()
            .map_err(|err| Failed::new(format!("TLS setup: {err}")))?;
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(self.host.as_str())
                .port(self.port)
                .timeout(Some(timeout))
                .tls(if self.implicit_tls {
                    Tls::Wrapper(tls)
                } else {
                    Tls::Required(tls)
                });
        if let Some((user, password)) = &self.credentials {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose().to_string(),
            ));
        }
        Ok(builder.build())
    }

    fn message(&self, message: &Outgoing<'_>) -> Result<Message, Failed> {
        let text = render(message.event, message.payload);
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(format!("[vantage] {}", text.title))
            // Lets mail clients thread and deduplicate a message retried after a crash.
            .message_id(Some(format!("<{}@vantage>", message.event_id)))
            .header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        let body = format!(
            "{}\n\nEvent: {} ({})\n",
            text.plain(),
            message.event,
            message.event_id
        );
        builder
            .body(body)
            .map_err(|err| Failed::new(format!("building the message: {err}")))
    }
}

impl ChannelKind for Email {
    fn send<'a>(
        &'a self,
        transport: &'a Transport,
        message: &'a Outgoing<'a>,
    ) -> BoxFuture<'a, Result<Delivered, Failed>> {
        async move {
            let email = self.message(message)?;
            let smtp = self.transport(transport.timeout)?;
            match smtp.send(email).await {
                Ok(response) => Ok(Delivered {
                    status_code: response.code().to_string().parse().ok(),
                }),
                Err(err) => Err(Failed {
                    status_code: err.status().and_then(|code| code.to_string().parse().ok()),
                    message: self
                        .redactor
                        .scrub(&format!("SMTP {}:{}: {err}", self.host, self.port)),
                }),
            }
        }
        .boxed()
    }
}
