//! A small SMTP server on 127.0.0.1 for the e-mail channel's tests: real SMTP (RFC 5321
//! commands, dot-stuffed DATA) over STARTTLS or implicit TLS with a test certificate,
//! AUTH PLAIN against one user, and mail refused before TLS. It keeps what it accepted.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rustls::ServerConfig;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// One accepted message.
#[derive(Debug, Clone, Default)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    /// The message as sent (headers and body), dot-stuffing undone.
    pub data: String,
    /// The user that authenticated.
    pub user: Option<String>,
}

pub struct SmtpServer {
    pub addr: SocketAddr,
    mails: Arc<Mutex<Vec<Mail>>>,
    task: JoinHandle<()>,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether the dialogue ended or asked for STARTTLS.
enum Next {
    Closed,
    StartTls,
}

struct Session {
    tls: Arc<ServerConfig>,
    credentials: (String, String),
    mails: Arc<Mutex<Vec<Mail>>>,
}

impl SmtpServer {
    /// `implicit`: TLS from the first byte (port 465 style); otherwise STARTTLS.
    pub async fn start(
        tls: Arc<ServerConfig>,
        implicit: bool,
        user: &str,
        password: &str,
    ) -> SmtpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mails = Arc::new(Mutex::new(Vec::new()));
        let session = Arc::new(Session {
            tls,
            credentials: (user.to_string(), password.to_string()),
            mails: mails.clone(),
        });
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let session = session.clone();
                tokio::spawn(async move {
                    let acceptor = TlsAcceptor::from(session.tls.clone());
                    if implicit {
                        let Ok(tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        session.converse(&mut BufReader::new(tls), true, true).await;
                        return;
                    }
                    let mut plain = BufReader::new(stream);
                    if let Next::StartTls = session.converse(&mut plain, false, true).await {
                        // The client waits for our 220 before its handshake: nothing is buffered.
                        let Ok(tls) = acceptor.accept(plain.into_inner()).await else {
                            return;
                        };
                        session
                            .converse(&mut BufReader::new(tls), true, false)
                            .await;
                    }
                });
            }
        });
        SmtpServer { addr, mails, task }
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }
}

impl Session {
    /// The SMTP dialogue; `greet` on a new connection (not after STARTTLS).
    async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut BufReader<S>,
        secure: bool,
        greet: bool,
    ) -> Next {
        let mut mail = Mail::default();
        let mut line = String::new();
        if greet {
            let _ = reply(stream, "220 test.local ESMTP").await;
        }
        loop {
            line.clear();
            match stream.read_line(&mut line).await {
                Ok(0) | Err(_) => return Next::Closed,
                Ok(_) => {}
            }
            let command = line.trim_end().to_string();
            let verb = command
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_ascii_uppercase();
            let answer = match verb.as_str() {
                "EHLO" | "HELO" if secure => {
                    "250-test.local\r\n250-AUTH PLAIN\r\n250 8BITMIME".to_string()
                }
                "EHLO" | "HELO" => "250-test.local\r\n250-STARTTLS\r\n250 8BITMIME".to_string(),
                "STARTTLS" if !secure => {
                    let _ = reply(stream, "220 2.0.0 ready to start TLS").await;
                    return Next::StartTls;
                }
                "AUTH" if secure => {
                    let encoded = command.split_whitespace().nth(2).unwrap_or_default();
                    let decoded = STANDARD.decode(encoded).unwrap_or_default();
                    let parts: Vec<String> = decoded
                        .split(|b| *b == 0)
                        .map(|p| String::from_utf8_lossy(p).into_owned())
                        .collect();
                    if parts.len() == 3 && (parts[1].clone(), parts[2].clone()) == self.credentials
                    {
                        mail.user = Some(parts[1].clone());
                        "235 2.7.0 authenticated".to_string()
                    } else {
                        "535 5.7.8 authentication failed".to_string()
                    }
                }
                "MAIL" | "RCPT" | "DATA" if !secure => {
                    "530 5.7.0 must issue a STARTTLS command first".to_string()
                }
                "MAIL" if mail.user.is_none() => "530 5.7.0 authentication required".to_string(),
                "MAIL" => {
                    mail.from = address(&command);
                    "250 2.1.0 ok".to_string()
                }
                "RCPT" => {
                    mail.to.push(address(&command));
                    "250 2.1.5 ok".to_string()
                }
                "DATA" => {
                    let _ = reply(stream, "354 end data with <CR><LF>.<CR><LF>").await;
                    let mut data = String::new();
                    loop {
                        line.clear();
                        match stream.read_line(&mut line).await {
                            Ok(0) | Err(_) => return Next::Closed,
                            Ok(_) => {}
                        }
                        if line == ".\r\n" {
                            break;
                        }
                        data.push_str(line.strip_prefix('.').unwrap_or(&line));
                    }
                    mail.data = data;
                    self.mails.lock().unwrap().push(std::mem::take(&mut mail));
                    "250 2.0.0 queued".to_string()
                }
                "RSET" | "NOOP" => "250 2.0.0 ok".to_string(),
                "QUIT" => {
                    let _ = reply(stream, "221 2.0.0 bye").await;
                    return Next::Closed;
                }
                _ => "502 5.5.2 command not recognised".to_string(),
            };
            if reply(stream, &answer).await.is_err() {
                return Next::Closed;
            }
        }
    }
}

fn address(command: &str) -> String {
    command
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(a, _)| a.to_string())
        .unwrap_or_default()
}

async fn reply<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut BufReader<S>,
    text: &str,
) -> std::io::Result<()> {
    let stream = stream.get_mut();
    stream.write_all(text.as_bytes()).await?;
    stream.write_all(b"\r\n").await?;
    stream.flush().await
}
