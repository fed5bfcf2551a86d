//! `vantage check TARGET`: probe one target once, for people (a phase breakdown) and
//! scripts (`--json`, exit codes). The target's scheme picks the kind: an http(s)
//! URL, `tcp://host:port`, `tls://host:port` or `dns://name?type=A&server=ip`. It
//! turns flags into a [`MonitorSpec`], runs one probe with a [`Prober`] configured
//! from the environment, and prints the report.
//!
//! Exit codes: 0 the check succeeded (up, warning or critical), 1 it is down, 2 the
//! command line was unusable (bad URL, header, status set, CA file...).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chrono::Utc;

use serde_json::{json, Map, Value};

use crate::assertions::Assertions;
use crate::probe::{Kind, Monitor, MonitorSpec, ProbeReport, Prober};

/// Exit code for an unusable command line (clap uses the same for its own errors).
pub const EXIT_USAGE: u8 = 2;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// What to probe: an http:// or https:// URL, tcp://host:port, tls://host:port,
    /// or dns://name?type=A&server=ip[:port] (type A, AAAA, CNAME, MX, TXT, NS or SOA;
    /// the system resolver without server=).
    pub url: String,
    /// Request method (default GET, or POST with --data).
    #[arg(short = 'X', long = "method")]
    pub method: Option<String>,
    /// Request header "Name: value"; repeatable. Values of Authorization, Cookie,
    /// Proxy-Authorization and --secret-header names are never printed.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Header name whose value is secret (never printed); repeatable.
    #[arg(long = "secret-header", value_name = "NAME")]
    pub secret_headers: Vec<String>,
    /// Request body.
    #[arg(short = 'd', long = "data")]
    pub data: Option<String>,
    /// Overall deadline of the probe, e.g. 10s or 500ms.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Acceptable status codes, e.g. "200-299,301" (default 200-399).
    #[arg(long = "expect-status", default_value = "")]
    pub expect_status: String,
    /// Text the response body must contain.
    #[arg(long = "expect-body")]
    pub expect_body: Option<String>,
    /// Do not verify the server's TLS certificate.
    #[arg(long)]
    pub insecure: bool,
    /// Extra trusted root certificates (PEM), in addition to the compiled-in public roots.
    #[arg(long = "ca-file", env = "VANTAGE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Use IPv4 only.
    #[arg(long, conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// Use IPv6 only.
    #[arg(long)]
    pub ipv6: bool,
    /// Report a redirect as the final response instead of following it.
    #[arg(long = "no-follow")]
    pub no_follow: bool,
    /// Most redirects to follow.
    #[arg(long = "max-redirects", default_value_t = 10)]
    pub max_redirects: u32,
    /// Where redirects may lead: safe (a chain that started on a public address stays
    /// on public ones), same-host, or any.
    #[arg(long = "redirect-policy", default_value = "safe")]
    pub redirect_policy: String,
    /// Largest response body accepted, in bytes or with a binary suffix (512k, 4MiB,
    /// 1G); a longer body is `body_too_large`.
    #[arg(long = "max-body", default_value = "1MiB", value_parser = parse_byte_size)]
    pub max_body: usize,
    /// Total time above which the check is a warning.
    #[arg(long = "warning-ms")]
    pub warning_ms: Option<f64>,
    /// Total time above which the check is critical.
    #[arg(long = "critical-ms")]
    pub critical_ms: Option<f64>,
    /// A check of the answer, as in a monitor's assertions; repeatable. E.g.
    /// 'json:$.status == "ok"', 'header:content-type ~ json', 'time:ttfb < 200',
    /// 'cert:expires > 14d', 'body:!contains error', 'status:200-299'.
    #[arg(long = "assert", value_name = "ASSERTION")]
    pub asserts: Vec<String>,
    /// tcp: bytes to send after connecting (\r, \n, \t and \\ are unescaped).
    #[arg(long)]
    pub send: Option<String>,
    /// tcp: text the server's banner or reply must contain.
    #[arg(long)]
    pub expect: Option<String>,
    /// tls: speak this protocol before the handshake (smtp).
    #[arg(long)]
    pub starttls: Option<String>,
    /// dns: a value that must be among the answers; repeatable.
    #[arg(long = "answer", value_name = "VALUE")]
    pub answers: Vec<String>,
    /// dns: the response code expected, NOERROR (default) or NXDOMAIN.
    #[arg(long)]
    pub rcode: Option<String>,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub async fn execute(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let monitor = match monitor_from_args(&args) {
        Ok(monitor) => monitor,
        Err(message) => return Ok(usage_error(&message)),
    };
    // The CA file and VANTAGE_DNS_SERVERS are part of the command line's contract.
    let prober = match prober_from_args(&args) {
        Ok(prober) => prober,
        Err(err) => return Ok(usage_error(&format!("{err:#}"))),
    };
    let report = prober.probe(&monitor).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&monitor, &report));
    }
    Ok(if report.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(EXIT_USAGE)
}

fn prober_from_args(args: &CheckArgs) -> anyhow::Result<Prober> {
    // clap already falls back to VANTAGE_CA_FILE for --ca-file.
    let mut builder = Prober::builder().dns_servers_from_env()?;
    if let Some(path) = &args.ca_file {
        builder = builder.ca_file(path);
    }
    Ok(builder.build()?)
}

/// Builds the monitor, or says what is wrong with the command line.
pub fn monitor_from_args(args: &CheckArgs) -> Result<Monitor, String> {
    let mut headers = Vec::with_capacity(args.headers.len());
    for raw in &args.headers {
        let Some((name, value)) = raw.split_once(':') else {
            return Err(format!(
                "header {:?} is not \"Name: value\" (missing ':')",
                raw.split_whitespace().next().unwrap_or_default()
            ));
        };
        if name.trim().is_empty() {
            return Err("a header has an empty name; write -H \"Name: value\"".into());
        }
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let method = match (&args.method, &args.data) {
        (Some(method), _) => method.clone(),
        (None, Some(_)) => "POST".into(),
        (None, None) => "GET".into(),
    };
    let kind = Kind::of_url(&args.url).unwrap_or_default();
    let asserts = Assertions::from_texts(&args.asserts).map_err(|err| err.to_string())?;
    let spec = MonitorSpec {
        kind,
        method,
        url: args.url.clone(),
        headers,
        secret_headers: args.secret_headers.clone(),
        body: args.data.clone(),
        timeout: args.timeout,
        expected_status: args.expect_status.clone(),
        body_contains: args.expect_body.clone(),
        follow_redirects: !args.no_follow,
        max_redirects: args.max_redirects,
        verify_tls: !args.insecure,
        ip_family: if args.ipv4 {
            "ipv4"
        } else if args.ipv6 {
            "ipv6"
        } else {
            "any"
        }
        .into(),
        capture_body_bytes: None,
        max_body_bytes: args.max_body,
        redirect_policy: args.redirect_policy.clone(),
        warning_ms: args.warning_ms,
        critical_ms: args.critical_ms,
        settings: settings_from_args(args),
        assertions: asserts,
        ..MonitorSpec::default()
    };
    Monitor::new(spec).map_err(|err| err.to_string())
}

/// The kind-specific flags as the monitor's `settings`; the kind rejects any that do
/// not belong to it.
fn settings_from_args(args: &CheckArgs) -> Value {
    let mut settings = Map::new();
    if let Some(send) = &args.send {
        settings.insert("send".into(), json!(unescape(send)));
    }
    let flags = [
        ("expect", args.expect.clone().map(Value::from)),
        ("starttls", args.starttls.clone().map(Value::from)),
        ("rcode", args.rcode.clone().map(Value::from)),
        (
            "answers",
            (!args.answers.is_empty()).then(|| json!(args.answers)),
        ),
    ];
    for (key, value) in flags {
        if let Some(value) = value {
            settings.insert(key.into(), value);
        }
    }
    Value::Object(settings)
}

/// `\r`, `\n`, `\t` and `\\` as the characters they name: a shell argument cannot
/// easily carry a carriage return, and line protocols want one.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// A byte count such as `1048576`, `512k`, `4MiB` or `1G` (suffixes are powers of 1024,
/// as curl's `--max-filesize` reads them).
pub fn parse_byte_size(text: &str) -> Result<usize, String> {
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, suffix) = trimmed.split_at(digits_end);
    let shift = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => {
            return Err(format!(
                "{text:?} is not a size; write bytes or a number with k, M or G, e.g. 4MiB"
            ))
        }
    };
    let value: usize = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size; write e.g. 1048576 or 4MiB"))?;
    value
        .checked_mul(1 << shift)
        .filter(|&bytes| bytes > 0)
        .ok_or_else(|| format!("{text:?} is out of range; use at least 1 byte"))
}

/// A kind's own findings, one line each: a banner, DNS answers, a certificate's names.
fn detail_lines(details: &Value) -> Vec<String> {
    let text = |v: &Value| match v {
        Value::String(s) => s.trim_end().to_string(),
        other => other.to_string(),
    };
    let mut lines = Vec::new();
    if let Some(banner) = details.get("banner") {
        lines.push(format!("banner: {:?}", text(banner)));
    }
    if let Some(rcode) = details.get("rcode") {
        lines.push(format!("rcode: {}", text(rcode)));
    }
    for answer in details
        .get("answers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        lines.push(format!("answer: {}", text(answer)));
    }
    for key in ["subject", "issuer"] {
        if let Some(value) = details.get(key) {
            lines.push(format!("{key}: {}", text(value)));
        }
    }
    if let Some(names) = details.get("dns_names").and_then(Value::as_array) {
        let names: Vec<String> = names.iter().map(text).collect();
        lines.push(format!("names: {}", names.join(", ")));
    }
    lines
}

/// The human report: where we went, each phase, the verdict.
pub fn render(monitor: &Monitor, report: &ProbeReport) -> String {
    let mut out = String::new();
    let _ = match monitor.method() {
        Some(method) => writeln!(out, "{method} {}", monitor.redacted_target()),
        None => writeln!(out, "{}", monitor.redacted_target()),
    };
    for (name, value) in monitor.redacted_headers() {
        let _ = writeln!(out, "  > {name}: {value}");
    }
    let mut conn = Vec::new();
    if let Some(ip) = report.remote_ip {
        conn.push(format!("connected to {ip}"));
    }
    if let Some(v) = &report.http_version {
        conn.push(v.clone());
    }
    if let Some(v) = &report.tls_version {
        conn.push(v.clone());
    }
    if !conn.is_empty() {
        let _ = writeln!(out, "  {}", conn.join(", "));
    }
    if let Some(expires) = report.tls_cert_expires_at {
        let days = (expires - Utc::now()).num_days();
        let when = if days >= 0 {
            format!("in {days} days")
        } else {
            format!("{} days ago", -days)
        };
        let _ = writeln!(
            out,
            "  certificate expires {} ({when})",
            expires.format("%Y-%m-%d %H:%M:%S UTC")
        );
    }
    if let Some(details) = &report.details {
        for line in detail_lines(details) {
            let _ = writeln!(out, "  {line}");
        }
    }
    out.push('\n');
    let phases = [
        ("DNS lookup", report.dns_ms),
        ("TCP connect", report.connect_ms),
        ("TLS handshake", report.tls_ms),
        ("Server processing", report.ttfb_ms),
        ("Content transfer", report.transfer_ms),
    ];
    for (name, ms) in phases {
        let value = match ms {
            Some(ms) => format!("{ms:>10.3} ms"),
            None => format!("{:>10}", "-"),
        };
        let _ = writeln!(out, "  {name:<18}{value}");
    }
    let _ = writeln!(out, "  {:-<31}", "");
    let _ = writeln!(out, "  {:<18}{:>10.3} ms", "Total", report.total_ms);
    out.push('\n');

    let mut verdict = format!("  {}", report.status.as_str().to_uppercase());
    if let Some(code) = report.http_status {
        let _ = write!(verdict, "  HTTP {code}");
    }
    if let Some(size) = report.response_size_bytes {
        let _ = write!(verdict, "  {size} bytes");
    }
    if report.redirect_count > 0 {
        let _ = write!(verdict, "  {} redirects", report.redirect_count);
    }
    let _ = writeln!(out, "{verdict}");
    if let (Some(kind), Some(message)) = (report.error_kind, &report.error_message) {
        let _ = writeln!(out, "  {kind}: {message}");
    }
    out
}
