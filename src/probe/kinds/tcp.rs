//! The `tcp` kind: `tcp://host:port`. Connects; then, if the settings say so, sends
//! bytes (`send`) and reads until the answer contains `expect` (a banner such as
//! `SSH-2.0` or `220 `, or a reply such as `+PONG`).
//!
//! Phases: `dns_ms` and `connect_ms` as for http; `ttfb_ms` from the connection (the
//! SYN/ACK arriving) or, when something is sent, its last byte leaving, to the first
//! bytes of the answer arriving; `transfer_ms` from there to the arrival of the data
//! holding the expected text. Kernel stamps, as for http (`wire_clock`). The first 256
//! bytes of the answer are kept in `details.banner`.

use std::fmt;

use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use url::{Host, Url};

use super::{host_and_port, settings_of};
use crate::probe::monitor::MonitorSpec;
use crate::probe::observation::Observation;
use crate::probe::timings::Phase;
use crate::probe::wire_clock::StampedTcp;
use crate::probe::{connect, dns, ErrorKind, Failure, InvalidMonitor, Monitor, Prober};

/// How much of an answer is read looking for `expect`.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Bytes of the answer kept in `details.banner`.
const BANNER_BYTES: usize = 256;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TcpSettings {
    send: Option<String>,
    expect: Option<String>,
}

/// A validated `tcp` target.
#[derive(Clone)]
pub(crate) struct TcpTarget {
    url: Url,
    host: Host,
    port: u16,
    /// `None` when the monitor only connects, as most do. Boxed: inline, these were
    /// the largest fields of any kind, and `Target` is as large as its largest kind.
    exchange: Option<Box<TcpExchange>>,
}

/// What a `tcp` monitor sends and expects back.
#[derive(Clone)]
struct TcpExchange {
    send: Option<Vec<u8>>,
    expect: Option<String>,
}

impl fmt::Debug for TcpTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // What is sent may be a password (an AUTH line): only its size is shown.
        f.debug_struct("TcpTarget")
            .field("url", &self.url.as_str())
            .field("send_bytes", &self.send().map(<[u8]>::len))
            .field("expect", &self.expect())
            .finish()
    }
}

impl TcpTarget {
    pub(crate) fn new(spec: &MonitorSpec) -> Result<TcpTarget, InvalidMonitor> {
        let (url, host, port) = host_and_port(spec, "tcp", "tcp://db.example.com:5432")?;
        let settings: TcpSettings = settings_of(spec)?;
        if settings.expect.as_deref() == Some("") {
            return Err(crate::probe::monitor::invalid(
                "settings",
                "expect is empty; leave it out to only connect",
            ));
        }
        let exchange = (settings.send.is_some() || settings.expect.is_some()).then(|| {
            Box::new(TcpExchange {
                send: settings.send.map(String::into_bytes),
                expect: settings.expect,
            })
        });
        Ok(TcpTarget {
            url,
            host,
            port,
            exchange,
        })
    }

    pub(crate) fn url(&self) -> &Url {
        &self.url
    }

    fn send(&self) -> Option<&[u8]> {
        self.exchange.as_ref()?.send.as_deref()
    }

    fn expect(&self) -> Option<&str> {
        self.exchange.as_ref()?.expect.as_deref()
    }
}

pub(crate) async fn probe(
    prober: &Prober,
    monitor: &Monitor,
    tcp: &TcpTarget,
    seen: &mut Observation,
    deadline: Instant,
) -> Result<(), Failure> {
    let (addrs, _) = dns::resolve_host(prober, &tcp.host, monitor.ip_family, seen).await?;
    let mut stream = connect::connect_timed(&addrs, tcp.port, deadline, seen).await?;
    // Without anything sent, the answer is a banner the server writes once connected.
    let hop = seen.timings.hop();
    hop.ready = hop.connected;
    if let Some(bytes) = tcp.send() {
        seen.phase = Phase::Reply;
        seen.stamps.await_reply();
        stream
            .write_all(bytes)
            .await
            .map_err(|err| closed("sending", &err))?;
        seen.timings.hop().ready = Some(std::time::Instant::now());
    }
    match tcp.expect() {
        Some(expected) => read_until(&mut stream, expected, seen).await,
        None => Ok(()),
    }
}

/// Reads the answer until it contains `expected`; the end of the stream or the byte
/// limit before that is a failed expectation that shows what the server said.
async fn read_until(
    stream: &mut StampedTcp,
    expected: &str,
    seen: &mut Observation,
) -> Result<(), Failure> {
    seen.phase = Phase::Reply;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(n) => n,
            // A server that answers and hangs up before reading what was sent resets
            // the connection; what it said is still its answer.
            Err(err) if !answer.is_empty() && err.kind() == std::io::ErrorKind::ConnectionReset => {
                0
            }
            Err(err) => return Err(closed("reading the reply", &err)),
        };
        if n > 0 && answer.is_empty() {
            let head = seen.stamps.last_arrival();
            let hop = seen.timings.hop();
            hop.request_sent = seen
                .stamps
                .request_sent()
                .filter(|at| Some(*at) >= hop.connected);
            hop.head = Some(head);
        }
        answer.extend_from_slice(&chunk[..n]);
        seen.details = Some(json!({ "banner": banner(&answer) }));
        let found = contains(&answer, expected.as_bytes());
        if found || n == 0 || answer.len() >= MAX_ANSWER_BYTES {
            seen.response_size = Some(answer.len() as u64);
            if found {
                seen.timings.hop().body_done = Some(seen.stamps.last_arrival());
                return Ok(());
            }
            let ending = if n == 0 {
                "before the connection closed"
            } else {
                "in the first 64 KiB"
            };
            return Err(Failure::new(
                ErrorKind::AssertionFailed,
                format!(
                    "reply: expected {expected:?} {ending}, got {:?}",
                    banner(&answer)
                ),
            ));
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The first [`BANNER_BYTES`] of an answer, as text.
fn banner(answer: &[u8]) -> String {
    String::from_utf8_lossy(&answer[..answer.len().min(BANNER_BYTES)]).into_owned()
}

fn closed(doing: &str, err: &std::io::Error) -> Failure {
    Failure::new(
        ErrorKind::ConnectError,
        format!("the connection failed while {doing}: {err}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::Kind;

    fn spec(url: &str, settings: serde_json::Value) -> MonitorSpec {
        MonitorSpec {
            kind: Kind::Tcp,
            url: url.into(),
            settings,
            ..MonitorSpec::default()
        }
    }

    #[test]
    fn targets_are_validated_with_a_fix() {
        let ok = TcpTarget::new(&spec("tcp://db.example.com:5432", json!({}))).unwrap();
        assert_eq!(ok.port, 5432);
        let err = TcpTarget::new(&spec("tcp://db.example.com", json!({}))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "url: tcp://db.example.com has no port; write e.g. tcp://db.example.com:5432"
        );
        let err = TcpTarget::new(&spec("tcp://h:1", json!({"sned": "x"}))).unwrap_err();
        assert_eq!(err.field, "settings");
        assert!(err.to_string().contains("unknown field `sned`"), "{err}");
        let err = TcpTarget::new(&spec("tcp://h:1", json!({"expect": ""}))).unwrap_err();
        assert!(err.to_string().contains("expect is empty"), "{err}");
    }

    #[test]
    fn debug_hides_what_is_sent() {
        let target = TcpTarget::new(&spec(
            "tcp://h:1",
            json!({"send": "AUTH hunter2\r\n", "expect": "+OK"}),
        ))
        .unwrap();
        let shown = format!("{target:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("+OK"),
            "{shown}"
        );
    }
}
