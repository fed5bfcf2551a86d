//! Property tests of every parser a monitor row or a command-line flag reaches: status
//! sets, headers, cron expressions, URLs (and their redaction), durations, byte sizes,
//! redirect policies, DNS server lists and address classes. Arbitrary input must give a
//! value or an error, never a panic; generated valid input must parse to what it says;
//! secrets (header values, query strings) never show in errors or `Debug` output.
//!
//! Cases are bounded (`CASES` per property) so the whole file runs in a few seconds in
//! CI; set `PROPTEST_CASES` to search longer locally.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use clap::Parser;
use proptest::prelude::*;
use vantage::assertions::StatusSet;
use vantage::check::{monitor_from_args, parse_byte_size, CheckArgs};
use vantage::probe::dns::parse_dns_servers;
use vantage::probe::redirect_policy::{is_public, AddressClass};
use vantage::probe::{redact_query, Monitor, MonitorSpec, RedirectPolicy};
use vantage::schedule::Cadence;

const CASES: u32 = 256;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(CASES),
        // Failures are reported with their minimal input; nothing to persist in CI.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// `vantage check` as the binary parses it.
#[derive(Parser)]
struct Check {
    #[command(flatten)]
    args: CheckArgs,
}

fn check_args(extra: &[String]) -> Result<CheckArgs, clap::Error> {
    let argv = std::iter::once("check".to_string()).chain(extra.iter().cloned());
    Check::try_parse_from(argv).map(|c| c.args)
}

/// One part of a status set, as text, and the codes it stands for.
fn status_part() -> impl Strategy<Value = (String, u16, u16)> {
    prop_oneof![
        (100u16..=599).prop_map(|c| (c.to_string(), c, c)),
        (100u16..=599, 0u16..100).prop_map(|(lo, span)| {
            let hi = (lo + span).min(599);
            (format!("{lo} - {hi}"), lo, hi)
        }),
        (1u16..=5).prop_map(|d| (format!("{d}xx"), d * 100, d * 100 + 99)),
    ]
}

/// A header value made of printable ASCII (what `HeaderValue::from_str` takes).
fn header_value() -> impl Strategy<Value = String> {
    "[!-~][ -~]{0,40}[!-~]"
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn status_sets_never_panic(text in any::<String>()) {
        let _ = StatusSet::parse(&text);
    }

    #[test]
    fn valid_status_sets_parse_to_their_codes(parts in prop::collection::vec(status_part(), 1..6),
                                              probe in 100u16..=599) {
        let text = parts.iter().map(|p| p.0.as_str()).collect::<Vec<_>>().join(" , ");
        let set = StatusSet::parse(&text).unwrap();
        let expected = parts.iter().any(|&(_, lo, hi)| (lo..=hi).contains(&probe));
        prop_assert_eq!(set.contains(probe), expected);
        // Its display is itself a valid set with the same members.
        prop_assert_eq!(StatusSet::parse(&set.to_string()).unwrap(), set);
    }

    #[test]
    fn header_flags_never_panic_and_never_show_secret_values(
        name in "[A-Za-z][A-Za-z0-9-]{0,20}",
        raw in any::<String>(),
        secret in header_value(),
    ) {
        let args = check_args(&[
            "-H".into(), raw,
            "-H".into(), format!("Authorization: Bearer {secret}"),
            "-H".into(), format!("{name}: {secret}"),
            "--secret-header".into(), name,
            "http://127.0.0.1/".into(),
        ]);
        if let Ok(args) = args {
            match monitor_from_args(&args) {
                Ok(monitor) => {
                    let shown = format!("{monitor:?} {:?}", monitor.redacted_headers());
                    prop_assert!(!shown.contains(&secret), "{}", shown);
                }
                Err(message) => prop_assert!(!message.contains(&secret), "{}", message),
            }
        }
    }

    #[test]
    fn header_rows_give_a_monitor_or_an_error_naming_headers(
        name in any::<String>(),
        value in any::<String>(),
    ) {
        let spec = MonitorSpec {
            url: "https://example.com/".into(),
            headers: vec![(name, value)],
            ..MonitorSpec::default()
        };
        if let Err(err) = Monitor::new(spec) {
            prop_assert_eq!(err.field, "headers");
        }
    }

    #[test]
    fn cron_expressions_never_panic(text in any::<String>()) {
        let _ = Cadence::from_parts(None, Some(&text));
    }

    #[test]
    fn valid_cron_expressions_fire_in_the_future(
        second in 0u32..60, minute in 0u32..60, hour in 0u32..24, step in 1u32..30,
        from in 0i64..4_000_000_000,
    ) {
        for pattern in [
            format!("{second} {minute} {hour} * * *"),
            format!("*/{step} * * * * *"),
            format!("{second} */{step} * * * MON-FRI"),
        ] {
            let cadence = Cadence::from_parts(None, Some(&pattern)).unwrap();
            let t = Utc.timestamp_opt(from, 0).unwrap();
            let next = cadence.next_slot_after(1, t).unwrap();
            prop_assert!(next > t && next - t <= chrono::Duration::days(4), "{} after {}: {}", pattern, t, next);
        }
    }

    #[test]
    fn intervals_give_slots_on_their_grid(seconds in any::<i32>(), from in 0i64..4_000_000_000) {
        match Cadence::from_parts(Some(seconds), None) {
            Ok(cadence) => {
                prop_assert!(seconds > 0);
                let t = Utc.timestamp_opt(from, 0).unwrap();
                let next = cadence.next_slot_after(7, t).unwrap();
                prop_assert!(next > t && next - t <= chrono::Duration::seconds(seconds.into()));
            }
            Err(_) => prop_assert!(seconds <= 0),
        }
    }

    #[test]
    fn urls_never_panic_and_never_show_their_query(
        text in any::<String>(),
        token in "[a-zA-Z0-9]{12}",
    ) {
        let with_token = format!("{text}?token={token}");
        for url in [text, with_token] {
            let spec = MonitorSpec { url, ..MonitorSpec::default() };
            let shown = match Monitor::new(spec.clone()) {
                Ok(monitor) => format!("{monitor:?} {} {spec:?}", monitor.redacted_target()),
                Err(err) => {
                    prop_assert_eq!(err.field, "url");
                    format!("{err} {spec:?}")
                }
            };
            prop_assert!(!shown.contains(&token), "{}", shown);
        }
    }

    #[test]
    fn valid_urls_parse_and_display_without_query(
        https in any::<bool>(),
        host in "[a-z][a-z0-9]{0,15}(\\.[a-z][a-z0-9]{0,15}){1,3}",
        port in proptest::option::of(1u16..),
        path in "(/[a-zA-Z0-9._~-]{0,10}){0,4}",
        query in "[a-z]{1,8}=[a-zA-Z0-9]{1,16}",
    ) {
        let scheme = if https { "https" } else { "http" };
        let port = port.map(|p| format!(":{p}")).unwrap_or_default();
        let url = format!("{scheme}://{host}{port}{path}?{query}");
        let monitor = Monitor::new(MonitorSpec { url: url.clone(), ..MonitorSpec::default() }).unwrap();
        prop_assert_eq!(monitor.http_url().and_then(|u| u.query()), Some(query.as_str()));
        let shown = monitor.redacted_target();
        prop_assert!(shown.ends_with("?…") && !shown.contains(&query), "{}", shown);
    }

    #[test]
    fn redaction_keeps_nothing_after_the_question_mark(text in any::<String>()) {
        let shown = redact_query(&text);
        match text.split_once('?') {
            Some((before, _)) if !before.contains('#') => {
                prop_assert!(shown.starts_with(before));
                prop_assert!(shown.len() <= before.len() + "?…".len());
            }
            _ => prop_assert!(text.starts_with(&shown)),
        }
        prop_assert_eq!(redact_query(&shown), shown.clone());
    }

    #[test]
    fn durations_from_flags(value in 1u64..100_000, unit in prop::sample::select(vec!["ms", "s", "m"]),
                            garbage in any::<String>()) {
        let text = format!("{value}{unit}");
        let args = check_args(&["--timeout".into(), text, "http://127.0.0.1/".into()]).unwrap();
        let expected = match unit {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            _ => Duration::from_secs(value * 60),
        };
        prop_assert_eq!(args.timeout, expected);
        // Anything else is a clean usage error, never a panic.
        let _ = check_args(&["--timeout".into(), garbage, "http://127.0.0.1/".into()]);
    }

    #[test]
    fn byte_sizes(value in 1usize..1_000_000, suffix in prop::sample::select(vec!["", "b", "k", "KiB", "M", "mib", "G"]),
                  garbage in any::<String>()) {
        let shift = match suffix.to_ascii_lowercase().chars().next() {
            Some('k') => 10,
            Some('m') => 20,
            Some('g') => 30,
            _ => 0,
        };
        prop_assert_eq!(parse_byte_size(&format!("{value}{suffix}")), Ok(value << shift));
        if let Ok(bytes) = parse_byte_size(&garbage) {
            prop_assert!(bytes > 0);
        }
    }

    #[test]
    fn redirect_policies(text in any::<String>()) {
        match RedirectPolicy::parse(&text) {
            Ok(policy) => prop_assert_eq!(RedirectPolicy::parse(policy.as_str()), Ok(policy)),
            Err(message) => prop_assert!(message.contains("safe, same-host or any")),
        }
    }

    #[test]
    fn dns_server_lists(servers in prop::collection::vec((any::<IpAddr>(), any::<u16>()), 1..4),
                        garbage in any::<String>()) {
        let addrs: Vec<SocketAddr> = servers.into_iter().map(SocketAddr::from).collect();
        let text = addrs.iter().map(SocketAddr::to_string).collect::<Vec<_>>().join(",");
        prop_assert_eq!(parse_dns_servers(&text), Ok(addrs));
        let _ = parse_dns_servers(&garbage);
    }

    #[test]
    fn mapped_addresses_are_judged_as_ipv4(v4 in any::<Ipv4Addr>(), v6 in any::<Ipv6Addr>()) {
        let mapped = IpAddr::V6(v4.to_ipv6_mapped());
        prop_assert_eq!(AddressClass::of(mapped), AddressClass::of(IpAddr::V4(v4)));
        prop_assert_eq!(is_public(IpAddr::V6(v6)), AddressClass::of(IpAddr::V6(v6)).is_none());
    }
}
