//! The `dns` kind: `dns://name?type=MX&server=192.0.2.53`. One query of one record
//! type (A, AAAA, CNAME, MX, TXT, NS or SOA; A by default) to the system resolver, or
//! to `server` (ip or ip:port) when given. The answers and the response code are
//! stored in `details` (`{"rcode": "NOERROR", "answers": ["10 mx.example.com."]}`,
//! the response code as dig prints it).
//!
//! By default a probe succeeds on NOERROR with at least one answer. The settings can
//! ask for more: `answers` lists values that must all be among the answers (compared
//! without case and trailing dots), `rcode: NXDOMAIN` expects the name not to exist.
//!
//! Phases: `dns_ms` only. The query goes first from a socket of the probe's own to the
//! named server, or the system's first one, and is timed from the kernel's stamps: the
//! query leaving to the answer arriving, as for the `http` kind's lookups (#14). An
//! answer that settles nothing (truncated, SERVFAIL, REFUSED, silence) hands over to
//! the resolver's retries (TCP, other servers); the phase then spans both attempts on
//! the probe's clock.

use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, Record, RecordType};
use hickory_resolver::TokioResolver;
use serde::Deserialize;
use serde_json::json;
use url::Url;

use super::settings_of;
use crate::probe::dns::{build_resolver, parse_dns_servers, SERVER_TIMEOUT};
use crate::probe::dns_query;
use crate::probe::monitor::{invalid, MonitorSpec};
use crate::probe::observation::Observation;
use crate::probe::timings::Phase;
use crate::probe::{ErrorKind, Failure, InvalidMonitor, Prober};

const TYPES: [RecordType; 7] = [
    RecordType::A,
    RecordType::AAAA,
    RecordType::CNAME,
    RecordType::MX,
    RecordType::TXT,
    RecordType::NS,
    RecordType::SOA,
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DnsSettings {
    answers: Option<Vec<String>>,
    rcode: Option<String>,
}

/// The response code a monitor expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expected {
    /// NOERROR with at least one answer.
    Answers,
    /// The name does not exist.
    NxDomain,
}

/// A validated `dns` target.
#[derive(Clone)]
pub(crate) struct DnsTarget {
    /// Its host is the name asked for (see [`DnsTarget::fqdn`]).
    url: Url,
    record_type: RecordType,
    /// A resolver of its own when the monitor names a server; else the prober's.
    /// Boxed: a resolver is hundreds of bytes, and the `Target` enum is as large as its
    /// largest kind, so inline it would cost every monitor of every kind that much.
    server: Option<Box<(SocketAddr, TokioResolver)>>,
    answers: Box<[String]>,
    expected: Expected,
}

impl fmt::Debug for DnsTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsTarget")
            .field("fqdn", &self.fqdn())
            .field("type", &self.record_type)
            .field("server", &self.server.as_deref().map(|(addr, _)| addr))
            .field("answers", &self.answers)
            .field("expected", &self.expected)
            .finish()
    }
}

impl DnsTarget {
    pub(crate) fn new(spec: &MonitorSpec) -> Result<DnsTarget, InvalidMonitor> {
        let example = "write e.g. dns://example.com?type=MX&server=192.0.2.53";
        let url = Url::parse(spec.url.trim()).map_err(|err| {
            invalid(
                "url",
                format!("{:?} is not a valid URL: {err}; {example}", spec.url),
            )
        })?;
        url.host_str()
            .filter(|name| !name.is_empty())
            .ok_or_else(|| invalid("url", format!("{} names no domain; {example}", url)))?;
        if !matches!(url.path(), "" | "/") {
            return Err(invalid(
                "url",
                format!("{url} has a path; the name goes where the host does: {example}"),
            ));
        }
        let mut record_type = RecordType::A;
        let mut server = None;
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "type" => {
                    let wanted = value.to_ascii_uppercase();
                    record_type = TYPES
                        .into_iter()
                        .find(|t| t.to_string() == wanted)
                        .ok_or_else(|| {
                            invalid(
                                "url",
                                format!("type={value} is not supported; use A, AAAA, CNAME, MX, TXT, NS or SOA"),
                            )
                        })?;
                }
                "server" => {
                    let addr = parse_dns_servers(&value)
                        .map_err(|err| invalid("url", format!("server={value}: {err}")))?;
                    if addr.len() != 1 {
                        return Err(invalid("url", "give one server=ip[:port]"));
                    }
                    let resolver = build_resolver(Some(&addr))
                        .map_err(|err| invalid("url", format!("server={value}: {err}")))?;
                    server = Some(Box::new((addr[0], resolver)));
                }
                other => {
                    return Err(invalid(
                        "url",
                        format!("unknown parameter {other:?}; use type= and server="),
                    ))
                }
            }
        }
        let settings: DnsSettings = settings_of(spec)?;
        let expected = match settings
            .rcode
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            None | Some("NOERROR") => Expected::Answers,
            Some("NXDOMAIN") => Expected::NxDomain,
            Some(other) => {
                return Err(invalid(
                    "settings",
                    format!("rcode {other:?} cannot be expected; use NOERROR or NXDOMAIN"),
                ))
            }
        };
        let answers = settings.answers.unwrap_or_default();
        if expected == Expected::NxDomain && !answers.is_empty() {
            return Err(invalid(
                "settings",
                "answers and rcode NXDOMAIN contradict each other; keep one",
            ));
        }
        Ok(DnsTarget {
            url,
            record_type,
            server,
            answers: answers.into_boxed_slice(),
            expected,
        })
    }

    /// The name asked for, absolute (with its final dot). Derived from the URL on each
    /// probe rather than kept: a `dns` target kept no larger than an `http` one keeps
    /// every monitor of any kind in a smaller allocation (see `monitors`' size test).
    fn fqdn(&self) -> String {
        let name = self.url.host_str().unwrap_or_default();
        if name.ends_with('.') {
            name.to_string()
        } else {
            format!("{name}.")
        }
    }

    pub(crate) fn url(&self) -> &Url {
        &self.url
    }
}

pub(crate) async fn probe(
    prober: &Prober,
    dns: &DnsTarget,
    seen: &mut Observation,
) -> Result<(), Failure> {
    let resolver = match dns.server.as_deref() {
        Some((addr, resolver)) => {
            seen.remote_ip = Some(addr.ip());
            resolver
        }
        None => prober.resolver.hickory(),
    };
    let fqdn = dns.fqdn();
    let name = fqdn.trim_end_matches('.');
    seen.phase = Phase::Dns;
    let started = Instant::now();
    let direct = match (Name::from_ascii(&fqdn), dns.server.as_deref()) {
        (Err(_), _) => None,
        (Ok(query), Some((addr, _))) => {
            dns_query::exchange(*addr, &query, &[dns.record_type], SERVER_TIMEOUT).await
        }
        (Ok(query), None) => {
            prober
                .resolver
                .ask_first_server(&query, &[dns.record_type])
                .await
        }
    };
    let settled = direct.and_then(|exchange| {
        let answer = exchange.answers.first()?;
        let rcode = answer.metadata.response_code;
        let final_answer = !answer.metadata.truncation
            && matches!(rcode, ResponseCode::NoError | ResponseCode::NXDomain);
        final_answer.then(|| {
            let answers = of_type(&answer.answers, dns.record_type);
            (exchange.sent, exchange.answered, rcode, answers)
        })
    });
    let (rcode, answers) = match settled {
        Some((sent, answered, rcode, answers)) => {
            let hop = seen.timings.hop();
            hop.dns_start = Some(sent);
            hop.dns_done = Some(answered);
            (rcode, answers)
        }
        // Truncated, a server failure, silence: the resolver retries (over TCP, with the
        // other servers), and the phase spans both attempts on the probe's clock.
        None => {
            let result = resolver.lookup(fqdn.as_str(), dns.record_type).await;
            let hop = seen.timings.hop();
            hop.dns_start = Some(started);
            hop.dns_done = Some(Instant::now());
            match result {
                Ok(lookup) => (
                    ResponseCode::NoError,
                    of_type(lookup.answers(), dns.record_type),
                ),
                Err(NetError::Dns(DnsError::NoRecordsFound(NoRecords {
                    response_code, ..
                }))) => (response_code, Vec::new()),
                Err(NetError::Dns(DnsError::ResponseCode(code))) => (code, Vec::new()),
                Err(NetError::Timeout) => {
                    return Err(Failure::new(
                        ErrorKind::DnsTimeout,
                        format!("{name}: no DNS server answered in time"),
                    ))
                }
                Err(err) => {
                    return Err(Failure::new(
                        ErrorKind::DnsError,
                        format!("{name}: DNS query failed: {err}"),
                    ))
                }
            }
        }
    };
    seen.details = Some(json!({ "rcode": mnemonic(rcode), "answers": answers }));
    judge(dns, name, rcode, &answers)
}

/// The answers of the type asked, as dig prints their data (a CNAME chain's records
/// are left out).
fn of_type(records: &[Record], record_type: RecordType) -> Vec<String> {
    records
        .iter()
        .filter(|record| record.record_type() == record_type)
        .map(|record| record.data.to_string())
        .collect()
}

fn judge(
    dns: &DnsTarget,
    name: &str,
    rcode: ResponseCode,
    answers: &[String],
) -> Result<(), Failure> {
    let rtype = dns.record_type;
    match (dns.expected, rcode) {
        (Expected::NxDomain, ResponseCode::NXDomain) => Ok(()),
        (Expected::NxDomain, _) => Err(Failure::new(
            ErrorKind::AssertionFailed,
            format!(
                "rcode: expected NXDOMAIN, got {} with {} {rtype} answer(s)",
                mnemonic(rcode),
                answers.len()
            ),
        )),
        (Expected::Answers, ResponseCode::NXDomain) => Err(Failure::new(
            ErrorKind::DnsNxdomain,
            format!("{name}: no such domain (NXDOMAIN)"),
        )),
        (Expected::Answers, ResponseCode::NoError) if answers.is_empty() => Err(Failure::new(
            ErrorKind::DnsNxdomain,
            format!("{name}: no {rtype} records"),
        )),
        (Expected::Answers, ResponseCode::NoError) => {
            let normal = |text: &str| text.trim_end_matches('.').to_ascii_lowercase();
            let seen: Vec<String> = answers.iter().map(|a| normal(a)).collect();
            let missing: Vec<&String> = dns
                .answers
                .iter()
                .filter(|wanted| !seen.contains(&normal(wanted)))
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(Failure::new(
                    ErrorKind::AssertionFailed,
                    format!(
                        "answers: expected {missing:?} among the {rtype} answers, got {answers:?}"
                    ),
                ))
            }
        }
        (Expected::Answers, other) => Err(Failure::new(
            ErrorKind::DnsError,
            format!("{name}: the server answered {}", mnemonic(other)),
        )),
    }
}

/// The response code as dig prints it (`NOERROR`, `NXDOMAIN`, `SERVFAIL`, ...).
fn mnemonic(rcode: ResponseCode) -> String {
    match rcode {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        other => format!("RCODE{}", u16::from(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::Kind;

    fn spec(url: &str, settings: serde_json::Value) -> MonitorSpec {
        MonitorSpec {
            kind: Kind::Dns,
            url: url.into(),
            settings,
            ..MonitorSpec::default()
        }
    }

    #[tokio::test]
    async fn targets_are_validated_with_a_fix() {
        let ok = DnsTarget::new(&spec(
            "dns://example.com?type=mx&server=127.0.0.1:5353",
            json!({"answers": ["10 mx.example.com"]}),
        ))
        .unwrap();
        assert_eq!(ok.record_type, RecordType::MX);
        assert_eq!(ok.fqdn(), "example.com.");
        assert_eq!(ok.server.as_deref().map(|(a, _)| a.port()), Some(5353));
        let err = DnsTarget::new(&spec("dns://example.com?type=PTR", json!({}))).unwrap_err();
        assert!(
            err.to_string().contains("type=PTR is not supported"),
            "{err}"
        );
        let err = DnsTarget::new(&spec("dns://example.com?srv=1.1.1.1", json!({}))).unwrap_err();
        assert!(
            err.to_string().contains("unknown parameter \"srv\""),
            "{err}"
        );
        let err =
            DnsTarget::new(&spec("dns://example.com", json!({"rcode": "SERVFAIL"}))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "settings: rcode \"SERVFAIL\" cannot be expected; use NOERROR or NXDOMAIN"
        );
    }
}
