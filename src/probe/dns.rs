//! Name resolution for probes: one shared hickory resolver without a cache, so every
//! probe measures a real lookup, and the IP-family policy of a monitor.
//!
//! The resolver's own `ip_strategy` is resolver-wide, but the family is a per-monitor
//! option, so we ask for A and/or AAAA records explicitly instead of `lookup_ip`.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;

use rustls::pki_types::ServerName;
use url::Host;

use super::observation::Observation;
use super::timings::Phase;
use super::{Failure, IpFamily, Prober, ProberError};
use crate::probe::ErrorKind;

/// Builds the shared resolver: `servers` when given (ip:port), else the system
/// configuration (`/etc/resolv.conf`).
pub(crate) fn build_resolver(servers: Option<&[SocketAddr]>) -> Result<TokioResolver, ProberError> {
    let mut builder = match servers {
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
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(name_servers),
                TokioRuntimeProvider::default(),
            )
        }
        None => {
            TokioResolver::builder_tokio().map_err(|err| ProberError::SystemDns(err.to_string()))?
        }
    };
    let opts = builder.options_mut();
    // The default caches 8,192 entries: later probes would measure ~35 µs cache hits.
    opts.cache_size = 0;
    // One slow server should not eat a whole probe budget; the probe's own deadline
    // still bounds everything.
    opts.timeout = std::time::Duration::from_secs(2);
    opts.attempts = 2;
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
            seen.timings.hop().dns_start = Some(std::time::Instant::now());
            let addrs = resolve(&prober.resolver, &fqdn, family).await?;
            seen.timings.hop().dns_done = Some(std::time::Instant::now());
            Ok((addrs, server_name))
        }
    }
}

/// Resolves `fqdn` (with its trailing dot) to the addresses to try, in order.
/// `Any` queries AAAA and A in parallel and puts IPv6 first; the connect step falls
/// back to the next address, so a broken IPv6 path still reaches the IPv4 one.
pub(crate) async fn resolve(
    resolver: &TokioResolver,
    fqdn: &str,
    family: IpFamily,
) -> Result<Vec<IpAddr>, Failure> {
    let result = match family {
        IpFamily::V4 => lookup(resolver, fqdn, RecordType::A).await,
        IpFamily::V6 => lookup(resolver, fqdn, RecordType::AAAA).await,
        IpFamily::Any => {
            let (v6, v4) = tokio::join!(
                lookup(resolver, fqdn, RecordType::AAAA),
                lookup(resolver, fqdn, RecordType::A)
            );
            match (v6, v4) {
                (Ok(mut a), Ok(b)) => {
                    a.extend(b);
                    Ok(a)
                }
                (Ok(a), Err(_)) | (Err(_), Ok(a)) if !a.is_empty() => Ok(a),
                // Both failed: the IPv4 error is the more telling one (AAAA often
                // legitimately has no records).
                (Ok(_), Err(err)) | (Err(_), Err(err)) => Err(err),
                (Err(err), Ok(_)) => Err(err),
            }
        }
    };
    let addrs = result.map_err(|err| classify(fqdn, &err))?;
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
) -> Result<Vec<IpAddr>, NetError> {
    let lookup = resolver.lookup(fqdn, record_type).await?;
    Ok(lookup
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect())
}

fn classify(fqdn: &str, err: &NetError) -> Failure {
    let name = fqdn.trim_end_matches('.');
    if err.is_nx_domain() {
        Failure::new(
            ErrorKind::DnsNxdomain,
            format!("{name}: no such domain (NXDOMAIN)"),
        )
    } else if err.is_no_records_found() {
        Failure::new(
            ErrorKind::DnsNxdomain,
            format!("{name}: no address records"),
        )
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
