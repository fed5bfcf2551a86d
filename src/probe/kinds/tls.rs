//! The `tls` kind: `tls://host:port`. Connects and completes a TLS handshake, with
//! the certificate verified unless the monitor turns verification off; reports the
//! protocol version, the leaf certificate's expiry (`tls_cert_expires_at`) and its
//! subject, issuer and names (`details`). With `starttls: smtp` it first speaks SMTP
//! (greeting, `EHLO`, `STARTTLS`) as a mail client does, then upgrades.
//!
//! Phases: `dns_ms` and `connect_ms` as for http; `tls_ms` the handshake alone (after
//! the SMTP exchange, with STARTTLS); `ttfb_ms`, with STARTTLS, from the connection
//! (the SYN/ACK arriving) to the arrival of the data completing the SMTP greeting
//! (kernel stamps, as for http). A `cert_expiry` assertion turns "expires in 9 days"
//! into a failure.

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::time::Instant;
use url::{Host, Url};

use super::{host_and_port, settings_of};
use crate::probe::certificate::LeafFacts;
use crate::probe::monitor::{invalid, MonitorSpec};
use crate::probe::observation::Observation;
use crate::probe::timings::Phase;
use crate::probe::wire_clock::StampedTcp;
use crate::probe::{connect, dns, ErrorKind, Failure, InvalidMonitor, Monitor, Prober};

/// Longest SMTP reply line read (RFC 5321 allows 512 bytes; servers send less).
const MAX_SMTP_LINE: usize = 4096;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSettings {
    starttls: Option<String>,
}

/// Which protocol to speak before the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StartTls {
    Smtp,
}

/// A validated `tls` target.
#[derive(Debug, Clone)]
pub(crate) struct TlsTarget {
    url: Url,
    host: Host,
    port: u16,
    starttls: Option<StartTls>,
}

impl TlsTarget {
    pub(crate) fn new(spec: &MonitorSpec) -> Result<TlsTarget, InvalidMonitor> {
        let (url, host, port) = host_and_port(spec, "tls", "tls://mail.example.com:465")?;
        let settings: TlsSettings = settings_of(spec)?;
        let starttls = match settings.starttls.as_deref().map(str::to_ascii_lowercase) {
            None => None,
            Some(protocol) if protocol == "smtp" => Some(StartTls::Smtp),
            Some(other) => {
                return Err(invalid(
                    "settings",
                    format!("starttls {other:?} is not supported; use \"smtp\" or leave it out"),
                ))
            }
        };
        Ok(TlsTarget {
            url,
            host,
            port,
            starttls,
        })
    }

    pub(crate) fn url(&self) -> &Url {
        &self.url
    }
}

pub(crate) async fn probe(
    prober: &Prober,
    monitor: &Monitor,
    tls: &TlsTarget,
    seen: &mut Observation,
    deadline: Instant,
) -> Result<(), Failure> {
    let (addrs, server_name) =
        dns::resolve_host(prober, &tls.host, monitor.ip_family, seen).await?;
    let mut tcp = connect::connect_timed(&addrs, tls.port, deadline, seen).await?;
    if tls.starttls == Some(StartTls::Smtp) {
        smtp_starttls(&mut tcp, &tls.host, seen).await?;
        seen.timings.hop().tls_start = Some(std::time::Instant::now());
    }
    prober
        .tls
        .handshake_timed(tcp, server_name, monitor.verify_tls, seen)
        .await?;
    seen.details = seen.leaf_facts(LeafFacts::to_details).flatten();
    Ok(())
}

/// Greeting, `EHLO`, `STARTTLS`: the server must answer 220, 250, 220. The stream is
/// read line by line without reading ahead, so no byte of the handshake is consumed.
async fn smtp_starttls(
    tcp: &mut StampedTcp,
    host: &Host,
    seen: &mut Observation,
) -> Result<(), Failure> {
    seen.phase = Phase::Reply;
    let hop = seen.timings.hop();
    hop.ready = hop.connected;
    let mut reader = BufReader::with_capacity(1, &mut *tcp);
    smtp_reply(&mut reader, "220", "greeting").await?;
    seen.timings.hop().head = Some(seen.stamps.last_arrival());
    // EHLO names the client; a prober has no name of its own worth giving.
    let client = match host {
        Host::Domain(_) => "vantage.invalid".to_string(),
        Host::Ipv4(ip) => format!("[{ip}]"),
        Host::Ipv6(ip) => format!("[IPv6:{ip}]"),
    };
    send(&mut reader, format!("EHLO {client}\r\n").as_bytes()).await?;
    smtp_reply(&mut reader, "250", "EHLO").await?;
    send(&mut reader, b"STARTTLS\r\n").await?;
    smtp_reply(&mut reader, "220", "STARTTLS").await?;
    Ok(())
}

async fn send(reader: &mut BufReader<&mut StampedTcp>, bytes: &[u8]) -> Result<(), Failure> {
    reader.get_mut().write_all(bytes).await.map_err(|err| {
        Failure::new(
            ErrorKind::ConnectError,
            format!("SMTP: sending failed: {err}"),
        )
    })
}

/// Reads one (possibly multi-line) SMTP reply and checks its code.
async fn smtp_reply(
    reader: &mut BufReader<&mut StampedTcp>,
    expected: &str,
    step: &str,
) -> Result<(), Failure> {
    loop {
        let mut line = Vec::new();
        let n = (&mut *reader)
            .take(MAX_SMTP_LINE as u64)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|err| Failure::new(ErrorKind::ConnectError, format!("SMTP {step}: {err}")))?;
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        if n == 0 {
            return Err(Failure::new(
                ErrorKind::ConnectError,
                format!("SMTP {step}: the server closed the connection"),
            ));
        }
        if !text.starts_with(expected) {
            return Err(Failure::new(
                ErrorKind::AssertionFailed,
                format!("SMTP {step}: expected a {expected} reply, got {text:?}"),
            ));
        }
        // "250-..." continues, "250 ..." (or a bare code) ends the reply.
        if text.as_bytes().get(3) != Some(&b'-') {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::Kind;
    use serde_json::json;

    fn spec(url: &str, settings: serde_json::Value) -> MonitorSpec {
        MonitorSpec {
            kind: Kind::Tls,
            url: url.into(),
            settings,
            ..MonitorSpec::default()
        }
    }

    #[test]
    fn targets_are_validated_with_a_fix() {
        let ok = TlsTarget::new(&spec(
            "tls://mail.example.com:587",
            json!({"starttls": "SMTP"}),
        ))
        .unwrap();
        assert_eq!((ok.port, ok.starttls), (587, Some(StartTls::Smtp)));
        let err = TlsTarget::new(&spec("tls://h:1", json!({"starttls": "imap"}))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "settings: starttls \"imap\" is not supported; use \"smtp\" or leave it out"
        );
        let err = TlsTarget::new(&spec("tls://h:1/path", json!({}))).unwrap_err();
        assert_eq!(err.field, "url");
    }
}
