//! Local targets for the benchmarks (`benches/curl_accuracy.sh`, `benches/probe_cost.rs`):
//! an HTTP server, an HTTPS server (HTTP/2 + HTTP/1.1 by ALPN, ECDSA P-256 leaf signed
//! by a private CA) and a UDP DNS responder answering `bench.vantage.test` with
//! 127.0.0.1. They are the test suite's own servers (`tests/support`).
//!
//! Usage: `bench_targets [--dns-port N] [--ca-out PATH]`; prints `KEY=VALUE` lines
//! (HTTP_PORT, HTTPS_PORT, DNS_ADDR, CA_FILE, NAME) and serves until killed.

#[allow(dead_code)]
#[path = "../tests/support/dns.rs"]
mod dns;
#[allow(dead_code)]
#[path = "../tests/support/http.rs"]
mod http;
#[allow(dead_code)]
#[path = "../tests/support/tls.rs"]
mod tls;

use std::io::Write as _;

pub const NAME: &str = "bench.vantage.test";

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let mut dns_port = 0u16;
    let mut ca_out = std::env::temp_dir().join("vantage-bench-ca.pem");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--dns-port" => {
                dns_port = args
                    .next()
                    .and_then(|p| p.parse().ok())
                    .expect("--dns-port N")
            }
            "--ca-out" => ca_out = args.next().expect("--ca-out PATH").into(),
            other => panic!("unknown argument {other:?}"),
        }
    }
    let dns = dns::DnsServer::builder()
        .a(NAME, &[std::net::Ipv4Addr::LOCALHOST])
        .start_on(dns_port)
        .await;
    let ca = tls::TestCa::new();
    std::fs::write(&ca_out, &ca.cert_pem).expect("writing the CA file");
    let identity = ca.leaf(&[NAME, "127.0.0.1"]);
    let https = http::TestServer::https(tls::server_config(&identity, &[b"h2", b"http/1.1"])).await;
    let plain = http::TestServer::http().await;
    let mut out = std::io::stdout().lock();
    writeln!(out, "HTTP_PORT={}", plain.port()).unwrap();
    writeln!(out, "HTTPS_PORT={}", https.port()).unwrap();
    writeln!(out, "DNS_ADDR={}", dns.addr).unwrap();
    writeln!(out, "CA_FILE={}", ca_out.display()).unwrap();
    writeln!(out, "NAME={NAME}").unwrap();
    out.flush().unwrap();
    drop(out);
    std::future::pending::<()>().await;
}
