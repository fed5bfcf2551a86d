//! Name resolution for probes: the IP-family policy of a monitor, and the lookup of a
//! host to connect to, timed as the wire sees it (#14).
//!
//! A lookup first asks the first configured server itself (`dns_query`: our own UDP
//! socket, kernel stamps, one query per record type, sent back to back), so `dns_ms`
//! is the first query leaving → the last answer arriving. The rest goes to one shared
//! hickory resolver without a cache (every probe measures a real lookup), configured
//! from the same servers: `localhost` and names in `/etc/hosts` (no server is asked),
//! and what the exchange does not settle: a truncated answer (it retries over TCP), a
//! server failure (SERVFAIL, REFUSED: the next server), silence for
//! [`SERVER_TIMEOUT`] (its own attempts and the other servers); then the phase spans
//! both attempts, on the probe's clock. Names are FQDNs (trailing dot), so
//! search domains and `ndots` never apply, with or without the resolver.
//!
//! The resolver's own `ip_strategy` is resolver-wide, but the family is a per-monitor
//! option, so we ask for A and/or AAAA records explicitly instead of `lookup_ip`.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ProtocolConfig, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::op::{Message, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::{Hosts, TokioResolver};

use rustls::pki_types::ServerName;
use url::Host;

use super::observation::Observation;
use super::timings::Phase;
use super::{dns_query, Failure, IpFamily, Prober, ProberError};
use crate::probe::ErrorKind;

/// How long one server gets to answer (our own exchange, and each resolver attempt).
pub(crate) const SERVER_TIMEOUT: Duration = Duration::from_secs(2);

/// What the probes of a `Prober` resolve hosts with.
pub(crate) struct Resolver {
    resolver: TokioResolver,
    /// The first configured server's UDP address, asked directly; `None`: every lookup
    /// goes through `resolver`.
    first_server: Option<SocketAddr>,
    /// `/etc/hosts`, as the resolver read it: names it answers without a server.
    hosts: Hosts,
}

impl Resolver {
    /// `servers` when given (ip:port), else the system configuration, read here once
    /// so that no probe pays for it.
    pub(crate) fn new(servers: Option<&[SocketAddr]>) -> Result<Resolver, ProberError> {
        let (config, options) = resolver_config(servers)?;
        Ok(Resolver {
            first_server: first_udp_server(&config),
            resolver: resolver_from(config, options)?,
            hosts: Hosts::from_system().unwrap_or_default(),
        })
    }

    /// The hickory resolver itself (the DNS kind's queries of any record type, when the
    /// wire exchange did not settle them).
    pub(crate) fn hickory(&self) -> &TokioResolver {
        &self.resolver
    }

    /// Asks the first configured server for `types` records of `name` from a socket of
    /// the probe's own, stamped on the wire (`dns_query`). `None` when there is no wire
    /// to time (no UDP server, or a name the resolver answers itself: RFC 6761's
    /// localhost, /etc/hosts) or no complete set of answers came back.
    pub(crate) async fn ask_first_server(
        &self,
        name: &Name,
        types: &[RecordType],
    ) -> Option<dns_query::Exchange> {
        let server = self.first_server?;
        let static_host = types.iter().any(|&record_type| {
            let query = Query::query(name.clone(), record_type);
            self.hosts.lookup_static_host(&query).is_some()
        });
        if name.is_localhost() || static_host {
            return None;
        }
        dns_query::exchange(server, name, types, SERVER_TIMEOUT).await
    }
}

/// The UDP address of the configuration's first server.
fn first_udp_server(config: &ResolverConfig) -> Option<SocketAddr> {
    config.name_servers().iter().find_map(|server| {
        server
            .connections
            .iter()
            .find(|c| matches!(c.protocol, ProtocolConfig::Udp))
            .map(|c| SocketAddr::new(server.ip, c.port))
    })
}

/// A lookup's addresses and its span on the wire (or on the probe's clock when the
/// resolver had to take over).
pub(crate) struct Resolved {
    pub addrs: Vec<IpAddr>,
    pub started: Instant,
    pub done: Instant,
}

/// Builds a hickory resolver: `servers` when given (ip:port), else the system
/// configuration (`/etc/resolv.conf`).
pub(crate) fn build_resolver(servers: Option<&[SocketAddr]>) -> Result<TokioResolver, ProberError> {
    let (config, options) = resolver_config(servers)?;
    resolver_from(config, options)
}

/// `servers` (ip:port, UDP then TCP each) when given, else the system configuration,
/// read once here.
fn resolver_config(
    servers: Option<&[SocketAddr]>,
) -> Result<(ResolverConfig, ResolverOpts), ProberError> {
    match servers {
        Some(servers) => {
            let name_servers = servers
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                })
                .collect();
            Ok((
                ResolverConfig::from_name_servers(name_servers),
                ResolverOpts::default(),
            ))
        }
        None => hickory_resolver::system_conf::read_system_conf()
            .map_err(|err| ProberError::SystemDns(err.to_string())),
    }
}

fn resolver_from(
    config: ResolverConfig,
    mut options: ResolverOpts,
) -> Result<TokioResolver, ProberError> {
    // The default caches 8,192 entries: later probes would measure ~35 µs cache hits.
    options.cache_size = 0;
    // One slow server should not eat a whole probe budget; the probe's own deadline
    // still bounds everything.
    options.timeout = SERVER_TIMEOUT;
    options.attempts = 2;
    let mut builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
    *builder.options_mut() = options;
    builder
        .build()
        .map_err(|err| ProberError::Resolver(err.to_string()))
}

/// Parses `VANTAGE_DNS_SERVERS`: a comma-separated list of `ip` or `ip:port`
/// (IPv6 with a port as `[::1]:53`).
pub fn parse_dns_servers(text: &str) -> Result<Vec<SocketAddr>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let addr = if let Ok(ip) = part.parse::<IpAddr>() {
            SocketAddr::new(ip, 53)
        } else {
            part.parse::<SocketAddr>().map_err(|_| {
                format!("DNS server {part:?} is not an IP address or ip:port (e.g. 10.0.0.2 or 10.0.0.2:5353)")
            })?
        };
        out.push(addr);
    }
    if out.is_empty() {
        return Err("no DNS server given".into());
    }
    Ok(out)
}

/// The addresses to connect to for `host`, and the name TLS verifies: an IP literal
/// as it is (no DNS phase), a name looked up with the DNS phase timed.
pub(crate) async fn resolve_host<S: AsRef<str>>(
    prober: &Prober,
    host: &Host<S>,
    family: IpFamily,
    seen: &mut Observation,
) -> Result<(Vec<IpAddr>, ServerName<'static>), Failure> {
    match host {
        Host::Ipv4(ip) => Ok((
            vec![IpAddr::V4(*ip)],
            ServerName::IpAddress(IpAddr::V4(*ip).into()),
        )),
        Host::Ipv6(ip) => Ok((
            vec![IpAddr::V6(*ip)],
            ServerName::IpAddress(IpAddr::V6(*ip).into()),
        )),
        Host::Domain(name) => {
            let name = name.as_ref();
            let server_name = ServerName::try_from(name.trim_end_matches('.').to_string())
                .map_err(|_| {
                    Failure::new(
                        ErrorKind::InvalidRequest,
                        format!("{name:?} is not a valid host name"),
                    )
                })?;
            let fqdn = if name.ends_with('.') {
                name.to_string()
            } else {
                format!("{name}.")
            };
            seen.phase = Phase::Dns;
            let resolved = resolve(&prober.resolver, &fqdn, family).await?;
            let hop = seen.timings.hop();
            hop.dns_start = Some(resolved.started);
            hop.dns_done = Some(resolved.done);
            Ok((resolved.addrs, server_name))
        }
    }
}

/// Resolves `fqdn` (with its trailing dot) to the addresses to try, in order.
/// `Any` queries AAAA and A in parallel and puts IPv6 first; the connect step falls
/// back to the next address, so a broken IPv6 path still reaches the IPv4 one.
pub(crate) async fn resolve(
    resolver: &Resolver,
    fqdn: &str,
    family: IpFamily,
) -> Result<Resolved, Failure> {
    let types: &[RecordType] = match family {
        IpFamily::V4 => &[RecordType::A],
        IpFamily::V6 => &[RecordType::AAAA],
        IpFamily::Any => &[RecordType::AAAA, RecordType::A],
    };
    let started = Instant::now();
    let direct = match Name::from_ascii(fqdn) {
        Ok(name) => resolver.ask_first_server(&name, types).await,
        Err(_) => None,
    };
    let settled = direct.as_ref().and_then(|exchange| {
        let results = exchange
            .answers
            .iter()
            .map(|answer| settled(fqdn, answer))
            .collect::<Option<Vec<_>>>()?;
        Some((results, exchange.sent, exchange.answered))
    });
    if let Some((results, sent, answered)) = settled {
        return Ok(Resolved {
            addrs: combine(fqdn, family, results)?,
            started: sent,
            done: answered,
        });
    }
    let results = match family {
        IpFamily::V4 | IpFamily::V6 => vec![lookup(&resolver.resolver, fqdn, types[0]).await],
        IpFamily::Any => {
            let (v6, v4) = tokio::join!(
                lookup(&resolver.resolver, fqdn, RecordType::AAAA),
                lookup(&resolver.resolver, fqdn, RecordType::A)
            );
            vec![v6, v4]
        }
    };
    Ok(Resolved {
        addrs: combine(fqdn, family, results)?,
        started,
        done: Instant::now(),
    })
}

/// What an answer says about the name, as the resolver would report it; `None` when it
/// settles nothing (truncated, or a server failure another server may not have).
fn settled(fqdn: &str, answer: &Message) -> Option<Result<Vec<IpAddr>, Failure>> {
    if answer.metadata.truncation {
        return None;
    }
    match answer.metadata.response_code {
        ResponseCode::NoError if answer.answers.is_empty() => Some(Err(no_records(fqdn))),
        ResponseCode::NoError => Some(Ok(addresses(&answer.answers))),
        ResponseCode::NXDomain => Some(Err(nxdomain(fqdn))),
        _ => None,
    }
}

/// The addresses to try, in order, from one result per record type (AAAA before A
/// when both were asked).
fn combine(
    fqdn: &str,
    family: IpFamily,
    mut results: Vec<Result<Vec<IpAddr>, Failure>>,
) -> Result<Vec<IpAddr>, Failure> {
    let last = results.pop().expect("one result per record type");
    let combined = match results.pop() {
        None => last,
        Some(v6) => match (v6, last) {
            (Ok(mut a), Ok(b)) => {
                a.extend(b);
                Ok(a)
            }
            (Ok(a), Err(_)) | (Err(_), Ok(a)) if !a.is_empty() => Ok(a),
            // Both failed: the IPv4 error is the more telling one (AAAA often
            // legitimately has no records).
            (Ok(_), Err(err)) | (Err(_), Err(err)) => Err(err),
            (Err(err), Ok(_)) => Err(err),
        },
    };
    let addrs = combined?;
    if addrs.is_empty() {
        return Err(Failure::new(
            ErrorKind::DnsNxdomain,
            format!(
                "{} has no {} address",
                fqdn.trim_end_matches('.'),
                family.record_names()
            ),
        ));
    }
    Ok(addrs)
}

async fn lookup(
    resolver: &TokioResolver,
    fqdn: &str,
    record_type: RecordType,
) -> Result<Vec<IpAddr>, Failure> {
    let lookup = resolver
        .lookup(fqdn, record_type)
        .await
        .map_err(|err| classify(fqdn, &err))?;
    Ok(addresses(lookup.answers()))
}

fn addresses(records: &[Record]) -> Vec<IpAddr> {
    records
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect()
}

fn nxdomain(fqdn: &str) -> Failure {
    Failure::new(
        ErrorKind::DnsNxdomain,
        format!("{}: no such domain (NXDOMAIN)", fqdn.trim_end_matches('.')),
    )
}

fn no_records(fqdn: &str) -> Failure {
    Failure::new(
        ErrorKind::DnsNxdomain,
        format!("{}: no address records", fqdn.trim_end_matches('.')),
    )
}

fn classify(fqdn: &str, err: &NetError) -> Failure {
    let name = fqdn.trim_end_matches('.');
    if err.is_nx_domain() {
        nxdomain(fqdn)
    } else if err.is_no_records_found() {
        no_records(fqdn)
    } else if matches!(err, NetError::Timeout) {
        Failure::new(
            ErrorKind::DnsTimeout,
            format!("{name}: no DNS server answered in time"),
        )
    } else {
        Failure::new(
            ErrorKind::DnsError,
            format!("{name}: DNS lookup failed: {err}"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_servers_parse_with_and_without_port() {
        let got = parse_dns_servers("127.0.0.1:5353, 10.0.0.2,[::1]:54").unwrap();
        assert_eq!(
            got,
            vec![
                "127.0.0.1:5353".parse().unwrap(),
                "10.0.0.2:53".parse().unwrap(),
                "[::1]:54".parse().unwrap()
            ]
        );
        assert!(parse_dns_servers("dns.example").is_err());
        assert!(parse_dns_servers("").is_err());
    }
}
