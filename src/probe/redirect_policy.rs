//! Where a followed redirect may lead: the per-monitor [`RedirectPolicy`], what counts as
//! a public address, and the decision for one hop's candidate address.
//!
//! Why: a monitored public site can answer with `Location: http://169.254.169.254/...`
//! or `http://127.0.0.1:5432/` and have the prober fetch an internal address and store
//! the answer. So by default a redirect chain that started on a public address may
//! only connect to public addresses; a monitor that starts on a loopback or private
//! address (an internal service) may redirect within its own network.
//!
//! The decision is made on the addresses a hop is about to connect to, after DNS, so a
//! name that resolves to an internal address is caught as well as an IP literal, and
//! nothing re-resolves between the check and the connect. Owns the rule only; the
//! HTTP prober calls it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::Url;

/// What counts as a public address; [`is_public`] unless a test stands loopback in for
/// the internet.
pub type PublicTest = fn(IpAddr) -> bool;

/// Where redirects may lead (`api_monitors.redirect_policy`, `vantage check --redirects`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedirectPolicy {
    /// A chain that started on a public address stays on public addresses.
    #[default]
    Safe,
    /// Every redirect stays on the monitor's host name (scheme and port may change),
    /// and the `safe` rule applies too.
    SameHost,
    /// Anywhere.
    Any,
}

impl RedirectPolicy {
    pub const NAMES: &'static str = "safe, same-host or any";

    pub fn parse(text: &str) -> Result<RedirectPolicy, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "" | "safe" => Ok(RedirectPolicy::Safe),
            "same-host" => Ok(RedirectPolicy::SameHost),
            "any" => Ok(RedirectPolicy::Any),
            other => Err(format!(
                "{other:?} is not a redirect policy; use {}",
                Self::NAMES
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RedirectPolicy::Safe => "safe",
            RedirectPolicy::SameHost => "same-host",
            RedirectPolicy::Any => "any",
        }
    }

    /// Checks a redirect's target URL before anything is resolved: `same-host` refuses
    /// another host name here.
    pub(crate) fn check_target(self, first: &Url, next: &Url) -> Result<(), String> {
        if self == RedirectPolicy::SameHost && !same_host(first, next) {
            return Err(format!(
                "it leaves the monitor's host {} (redirect policy same-host)",
                first.host_str().unwrap_or_default()
            ));
        }
        Ok(())
    }

    /// Keeps the addresses a redirected hop may connect to. `first_hop_public` says
    /// whether the chain's first connection went to a public address; `None` when it
    /// is not known (nothing is refused then). Errors say which address was refused
    /// and why, when none is left.
    pub(crate) fn allowed_addresses(
        self,
        first_hop_public: Option<bool>,
        candidates: Vec<IpAddr>,
        is_public: PublicTest,
    ) -> Result<Vec<IpAddr>, String> {
        if self == RedirectPolicy::Any || first_hop_public != Some(true) {
            return Ok(candidates);
        }
        let (allowed, refused): (Vec<IpAddr>, Vec<IpAddr>) =
            candidates.into_iter().partition(|ip| is_public(*ip));
        match refused.first() {
            Some(ip) if allowed.is_empty() => Err(format!(
                "it leads from a public address to {ip}, {} (redirect policy {}; set it to any to allow)",
                AddressClass::of(*ip)
                    .map_or_else(|| "not a public address".to_string(), |c| c.to_string()),
                self.as_str()
            )),
            _ => Ok(allowed),
        }
    }
}

impl fmt::Display for RedirectPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn same_host(a: &Url, b: &Url) -> bool {
    let host = |u: &Url| {
        u.host_str()
            .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
    };
    host(a) == host(b)
}

/// Why an address is not public.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    Loopback,
    Private,
    LinkLocal,
    /// 100.64.0.0/10, carrier-grade NAT.
    Shared,
    Unspecified,
    Multicast,
    /// Documentation, benchmarking, reserved and other special-purpose ranges.
    Reserved,
}

impl AddressClass {
    /// The class of a non-public address; `None` for a public one. IPv4-mapped IPv6
    /// addresses are judged as the IPv4 address they carry.
    pub fn of(ip: IpAddr) -> Option<AddressClass> {
        match ip {
            IpAddr::V4(v4) => Self::of_v4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::of_v4(v4),
                None => Self::of_v6(v6),
            },
        }
    }

    fn of_v4(ip: Ipv4Addr) -> Option<AddressClass> {
        let [a, b, c, _] = ip.octets();
        Some(if ip.is_loopback() {
            AddressClass::Loopback
        } else if ip.is_private() {
            AddressClass::Private
        } else if ip.is_link_local() {
            AddressClass::LinkLocal
        } else if a == 100 && (64..128).contains(&b) {
            AddressClass::Shared
        } else if ip.is_unspecified() || a == 0 {
            AddressClass::Unspecified
        } else if ip.is_multicast() {
            AddressClass::Multicast
        } else if ip.is_broadcast()
            || ip.is_documentation()
            || a >= 240
            || (a == 198 && (b & 0xfe) == 18)
            || (a == 192 && b == 0 && c == 0)
        {
            AddressClass::Reserved
        } else {
            return None;
        })
    }

    fn of_v6(ip: Ipv6Addr) -> Option<AddressClass> {
        let first = ip.segments()[0];
        Some(if ip.is_loopback() {
            AddressClass::Loopback
        } else if ip.is_unspecified() {
            AddressClass::Unspecified
        } else if (first & 0xfe00) == 0xfc00 {
            AddressClass::Private
        } else if (first & 0xffc0) == 0xfe80 {
            AddressClass::LinkLocal
        } else if ip.is_multicast() {
            AddressClass::Multicast
        } else if first == 0x2001 && ip.segments()[1] == 0x0db8 {
            AddressClass::Reserved
        } else {
            return None;
        })
    }
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressClass::Loopback => "a loopback address",
            AddressClass::Private => "a private address",
            AddressClass::LinkLocal => "a link-local address",
            AddressClass::Shared => "a carrier-grade NAT address",
            AddressClass::Unspecified => "an unspecified address",
            AddressClass::Multicast => "a multicast address",
            AddressClass::Reserved => "a reserved address",
        })
    }
}

/// True for an address on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    AddressClass::of(ip).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn classifies_addresses() {
        for (text, class) in [
            ("127.0.0.1", Some(AddressClass::Loopback)),
            ("::1", Some(AddressClass::Loopback)),
            ("::ffff:127.0.0.1", Some(AddressClass::Loopback)),
            ("10.1.2.3", Some(AddressClass::Private)),
            ("172.16.0.1", Some(AddressClass::Private)),
            ("192.168.1.1", Some(AddressClass::Private)),
            ("fd00::1", Some(AddressClass::Private)),
            ("169.254.169.254", Some(AddressClass::LinkLocal)),
            ("fe80::1", Some(AddressClass::LinkLocal)),
            ("100.64.0.1", Some(AddressClass::Shared)),
            ("0.0.0.0", Some(AddressClass::Unspecified)),
            ("::", Some(AddressClass::Unspecified)),
            ("224.0.0.1", Some(AddressClass::Multicast)),
            ("198.18.0.1", Some(AddressClass::Reserved)),
            ("93.184.216.34", None),
            ("172.32.0.1", None),
            ("100.128.0.1", None),
            ("2606:4700::1111", None),
        ] {
            assert_eq!(AddressClass::of(ip(text)), class, "{text}");
        }
    }

    /// Stand-in for the internet in these tests: 127.0.0.1 is "public", every other
    /// address is judged as usual.
    fn loopback_one_is_public(ip: IpAddr) -> bool {
        ip == IpAddr::from([127, 0, 0, 1]) || is_public(ip)
    }

    #[test]
    fn safe_refuses_public_to_private_moves_only() {
        let safe = RedirectPolicy::Safe;
        // From a public first hop: internal addresses are dropped, and when nothing is
        // left the hop is refused, naming the address and its class.
        let err = safe
            .allowed_addresses(Some(true), vec![ip("127.0.0.2")], loopback_one_is_public)
            .unwrap_err();
        assert!(
            err.contains("127.0.0.2, a loopback address") && err.contains("redirect policy safe"),
            "{err}"
        );
        let err = safe
            .allowed_addresses(Some(true), vec![ip("169.254.169.254")], is_public)
            .unwrap_err();
        assert!(err.contains("a link-local address"), "{err}");
        assert_eq!(
            safe.allowed_addresses(
                Some(true),
                vec![ip("10.0.0.1"), ip("127.0.0.1")],
                loopback_one_is_public
            ),
            Ok(vec![ip("127.0.0.1")])
        );
        // Public to public, and chains that started internal, are left alone.
        assert_eq!(
            safe.allowed_addresses(Some(true), vec![ip("93.184.216.34")], is_public),
            Ok(vec![ip("93.184.216.34")])
        );
        assert_eq!(
            safe.allowed_addresses(Some(false), vec![ip("10.0.0.1")], is_public),
            Ok(vec![ip("10.0.0.1")])
        );
        // `any` follows everywhere.
        assert_eq!(
            RedirectPolicy::Any.allowed_addresses(Some(true), vec![ip("10.0.0.1")], is_public),
            Ok(vec![ip("10.0.0.1")])
        );
        // same-host also applies the public rule.
        assert!(RedirectPolicy::SameHost
            .allowed_addresses(Some(true), vec![ip("10.0.0.1")], is_public)
            .is_err());
    }

    #[test]
    fn same_host_compares_host_names_only() {
        let first: Url = "https://example.com/a".parse().unwrap();
        let policy = RedirectPolicy::SameHost;
        assert!(policy
            .check_target(&first, &"http://EXAMPLE.com.:8080/b".parse().unwrap())
            .is_ok());
        let err = policy
            .check_target(&first, &"https://evil.example/".parse().unwrap())
            .unwrap_err();
        assert!(
            err.contains("leaves the monitor's host example.com"),
            "{err}"
        );
        assert!(RedirectPolicy::Safe
            .check_target(&first, &"https://evil.example/".parse().unwrap())
            .is_ok());
    }

    #[test]
    fn parses_policy_names() {
        assert_eq!(RedirectPolicy::parse(""), Ok(RedirectPolicy::Safe));
        assert_eq!(RedirectPolicy::parse(" Any "), Ok(RedirectPolicy::Any));
        assert_eq!(
            RedirectPolicy::parse("same-host"),
            Ok(RedirectPolicy::SameHost)
        );
        let err = RedirectPolicy::parse("never").unwrap_err();
        assert!(err.contains("safe, same-host or any"), "{err}");
    }
}
