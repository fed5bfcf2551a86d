//! The HTTP/TLS edge cases of issue 13, each against a real local server, with the
//! verdict a user would expect (curl's or a browser's):
//!
//! - HEAD, 204 and 304 responses announcing a large Content-Length are not "too large";
//!   the body cap is per monitor and named in the message;
//! - a server requiring a client certificate is a `tls_handshake` failure in TLS 1.3 as
//!   in TLS 1.2, said in words;
//! - certificate failures are one readable sentence naming the reason (expiry date,
//!   host, unknown authority, CA used as a server certificate, SHA-1);
//! - 120 response headers and obsolete folded headers are accepted;
//! - a redirect from a public address to a loopback one is refused after DNS (loopback
//!   stands in for the internet through `ProberBuilder::public_addresses`), redirects
//!   within loopback are followed, and query strings never show in messages;
//! - the options are columns of `api_monitors` (validated by the database, applied by
//!   a running instance, whose heartbeats, logs, `/status` and `/metrics` never show a
//!   monitor's query string) and flags of `vantage check`.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, PKCS_RSA_SHA256};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use support::cluster::{seed_datacenters, Instance, InstanceOptions};
use support::dns::DnsServer;
use support::eventually::eventually;
use support::http::TestServer;
use support::pg::TestDb;
use support::probe::{probe_with as probe, spec, H2_AND_H1};
use support::tls::{server_config, Identity, TestCa};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use vantage::probe::redirect_policy::is_public;
use vantage::probe::Prober;
use vantage::{ErrorKind, ProbeStatus};

fn plain() -> Prober {
    Prober::builder().build().unwrap()
}

/// A raw HTTP/1.1 server on `ip` answering every request with `response` (bytes as
/// written), counting the connections it accepted.
struct Canned {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

impl Canned {
    async fn on(ip: Ipv4Addr, response: String) -> Canned {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let response = response.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let _ = stream.write_all(response.as_bytes()).await;
                    // Keep the connection open: a body the client waits for would
                    // show as a timeout rather than pass by accident.
                    let _ = stream.read(&mut chunk).await;
                });
            }
        });
        Canned {
            addr,
            connections,
            _task: task,
        }
    }

    async fn new(response: String) -> Canned {
        Canned::on(Ipv4Addr::LOCALHOST, response).await
    }

    fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }
}

// ---------------------------------------------------------------------------------
// Row 2: bodies
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn head_204_and_304_with_a_large_content_length_are_up() {
    let big = "Content-Length: 5000000000\r\n";
    let head_ok = Canned::new(format!("HTTP/1.1 200 OK\r\n{big}\r\n")).await;
    let mut s = spec(&head_ok.url("/big.iso"));
    s.method = "HEAD".into();
    let report = probe(&plain(), s).await;
    assert_eq!(report.status, ProbeStatus::Up, "{report:?}");
    assert_eq!(report.response_size_bytes, Some(0));

    for status in ["204 No Content", "304 Not Modified"] {
        let server = Canned::new(format!("HTTP/1.1 {status}\r\n{big}\r\n")).await;
        let report = probe(&plain(), spec(&server.url("/big.iso"))).await;
        assert_eq!(report.status, ProbeStatus::Up, "{status}: {report:?}");
    }
}

#[tokio::test]
async fn the_body_cap_is_per_monitor_and_named_in_the_message() {
    let server = TestServer::http().await;
    let mut s = spec(&server.url("/bytes/4096"));
    s.max_body_bytes = 1024;
    let report = probe(&plain(), s).await;
    assert_eq!(
        report.error_kind,
        Some(ErrorKind::BodyTooLarge),
        "{report:?}"
    );
    let message = report.error_message.unwrap();
    assert!(
        message.contains("cap of 1024 bytes (1 KiB)") && message.contains("max_body_bytes"),
        "{message}"
    );
    // A larger cap accepts it; the default (1 MiB) too.
    let mut s = spec(&server.url("/bytes/4096"));
    s.max_body_bytes = 8192;
    assert_eq!(probe(&plain(), s).await.status, ProbeStatus::Up);
    let report = probe(&plain(), spec(&server.url("/bytes/2000000"))).await;
    assert!(
        report
            .error_message
            .as_deref()
            .is_some_and(|m| m.contains("cap of 1048576 bytes (1 MiB)")),
        "{report:?}"
    );
}

// ---------------------------------------------------------------------------------
// Row 3: client certificates
// ---------------------------------------------------------------------------------

fn requiring_client_certificates(
    ca: &TestCa,
    leaf: &Identity,
    version: &'static rustls::SupportedProtocolVersion,
) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der.clone()).unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(leaf.chain.clone(), leaf.key.clone_key())
        .unwrap();
    config.alpn_protocols = H2_AND_H1.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

#[tokio::test]
async fn a_required_client_certificate_is_a_handshake_failure_in_tls_1_3_and_1_2() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["127.0.0.1"]);
    let prober = Prober::builder()
        .extra_roots(vec![ca.cert_der.clone()])
        .build()
        .unwrap();
    for (name, version) in [
        ("TLS 1.3", &rustls::version::TLS13),
        ("TLS 1.2", &rustls::version::TLS12),
    ] {
        let server = TestServer::https(requiring_client_certificates(&ca, &leaf, version)).await;
        let report = probe(&prober, spec(&server.https_url("/"))).await;
        assert_eq!(
            report.error_kind,
            Some(ErrorKind::TlsHandshake),
            "{name}: {report:?}"
        );
        let message = report.error_message.unwrap();
        assert!(message.contains("client certificate"), "{name}: {message}");
    }
}

// ---------------------------------------------------------------------------------
// Row 4: certificate errors in one sentence
// ---------------------------------------------------------------------------------

/// One readable sentence: no debug dump of the library's error.
fn assert_readable(message: &str) {
    assert!(
        message.len() < 220
            && !message.contains('\n')
            && !["Other(", "Context", "OtherError", "DnsName(", "[", "{"]
                .iter()
                .any(|raw| message.contains(raw)),
        "not one readable sentence ({} chars): {message}",
        message.len()
    );
}

async fn certificate_failure(trusted: &[CertificateDer<'static>], served: &Identity) -> String {
    let server = TestServer::https(server_config(served, H2_AND_H1)).await;
    let prober = Prober::builder()
        .extra_roots(trusted.to_vec())
        .build()
        .unwrap();
    let report = probe(&prober, spec(&server.https_url("/"))).await;
    assert_eq!(
        report.error_kind,
        Some(ErrorKind::TlsCertificate),
        "{report:?}"
    );
    let message = report.error_message.unwrap();
    assert_readable(&message);
    message
}

#[tokio::test]
async fn certificate_errors_are_one_sentence_naming_the_reason() {
    let ca = TestCa::new();
    let trusted = [ca.cert_der.clone()];

    let message = certificate_failure(&trusted, &ca.expired_leaf(&["127.0.0.1"])).await;
    assert!(
        message.contains("expired on 2021-01-01 00:00:00 UTC"),
        "{message}"
    );

    let message = certificate_failure(&trusted, &ca.leaf(&["other.example"])).await;
    assert!(
        message.contains("not valid for 127.0.0.1 (it names other.example)"),
        "{message}"
    );

    let message = certificate_failure(&[], &ca.leaf(&["127.0.0.1"])).await;
    assert!(
        message.contains("issued by an unknown authority"),
        "{message}"
    );

    // openssl's default self-signed certificate: CA:TRUE, given as the trusted CA.
    let (ca_leaf, ca_leaf_der) = self_signed_ca_for("127.0.0.1");
    let message = certificate_failure(&[ca_leaf_der], &ca_leaf).await;
    assert!(
        message.contains("a CA certificate used as a server certificate"),
        "{message}"
    );

    let (sha1_root, sha1_leaf) = sha1_signed_leaf("127.0.0.1");
    let message = certificate_failure(&[sha1_root], &sha1_leaf).await;
    assert!(
        message.contains("signed with SHA-1, which is not accepted"),
        "{message}"
    );
}

/// A self-signed certificate with CA:TRUE for `name`, as `openssl req -x509` makes.
fn self_signed_ca_for(name: &str) -> (Identity, CertificateDer<'static>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    let der = cert.der().clone();
    let identity = Identity {
        chain: vec![der.clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        not_after_unix: params.not_after.unix_timestamp(),
    };
    (identity, der)
}

/// A root (RSA) and a leaf for `name` whose signature algorithm says SHA-1 with RSA:
/// rcgen signs with SHA-256, and the algorithm's OID (same length) is rewritten in
/// both places the certificate names it. The signature no longer matches, but the
/// algorithm is refused before any signature is checked, as for a real SHA-1 leaf.
fn sha1_signed_leaf(name: &str) -> (CertificateDer<'static>, Identity) {
    // rcgen's crypto backend here cannot generate RSA keys; aws-lc can.
    let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let pkcs8 =
        aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&rsa).unwrap();
    let ca_key = KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(pkcs8.as_ref()),
        &PKCS_RSA_SHA256,
    )
    .unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "SHA-1 Test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    let leaf = params.signed_by(&key, &issuer).unwrap();
    const SHA256_RSA: [u8; 9] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
    let mut der = leaf.der().to_vec();
    let mut rewritten = 0;
    for at in 0..der.len() - SHA256_RSA.len() {
        if der[at..at + SHA256_RSA.len()] == SHA256_RSA {
            der[at + SHA256_RSA.len() - 1] = 0x05; // sha1WithRSAEncryption
            rewritten += 1;
        }
    }
    assert_eq!(
        rewritten, 2,
        "the algorithm appears in the TBS and outside it"
    );
    let identity = Identity {
        chain: vec![CertificateDer::from(der)],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        not_after_unix: params.not_after.unix_timestamp(),
    };
    (ca_cert.der().clone(), identity)
}

// ---------------------------------------------------------------------------------
// Row 5: generous header parsing
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn many_headers_and_obsolete_folding_are_accepted() {
    let many: String = (0..120).map(|i| format!("X-Header-{i}: {i}\r\n")).collect();
    let server = Canned::new(format!(
        "HTTP/1.1 200 OK\r\n{many}Content-Length: 2\r\n\r\nok"
    ))
    .await;
    let report = probe(&plain(), spec(&server.url("/"))).await;
    assert_eq!(report.status, ProbeStatus::Up, "{report:?}");

    let folded = Canned::new(
        "HTTP/1.1 200 OK\r\nX-Folded: first part\r\n second part\r\nContent-Length: 2\r\n\r\nok"
            .to_string(),
    )
    .await;
    let report = probe(&plain(), spec(&folded.url("/"))).await;
    assert_eq!(report.status, ProbeStatus::Up, "{report:?}");
}

// ---------------------------------------------------------------------------------
// Row 6: redirects
// ---------------------------------------------------------------------------------

/// 127.0.0.1 plays a public address; every other loopback address stays internal.
fn loopback_one_is_public(ip: IpAddr) -> bool {
    ip == IpAddr::from(Ipv4Addr::LOCALHOST) || is_public(ip)
}

fn internet_on_loopback(dns: Option<&DnsServer>) -> Prober {
    let mut builder = Prober::builder().public_addresses(loopback_one_is_public);
    if let Some(dns) = dns {
        builder = builder.dns_servers(vec![dns.addr]);
    }
    builder.build().unwrap()
}

fn redirect_to(location: &str) -> String {
    format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n")
}

fn ok() -> String {
    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_string()
}

#[tokio::test]
async fn a_redirect_from_a_public_to_an_internal_address_is_refused() {
    let internal = Canned::on(Ipv4Addr::new(127, 0, 0, 2), ok()).await;
    let public = Canned::new(redirect_to(&internal.url("/admin?token=abc"))).await;

    let report = probe(
        &internet_on_loopback(None),
        spec(&public.url("/start?session=s3cr3t")),
    )
    .await;
    assert_eq!(report.status, ProbeStatus::Down);
    assert_eq!(
        report.error_kind,
        Some(ErrorKind::RedirectBlocked),
        "{report:?}"
    );
    let message = report.error_message.clone().unwrap();
    assert!(
        message.contains(&format!("redirect to {}?…", internal.url("/admin")))
            && message.contains("127.0.0.2, a loopback address"),
        "{message}"
    );
    let shown = format!("{report:?}");
    assert!(
        !shown.contains("token=abc") && !shown.contains("s3cr3t"),
        "{shown}"
    );
    assert_eq!(
        internal.connections.load(Ordering::SeqCst),
        0,
        "the internal server was never contacted"
    );

    // `any` follows it.
    let mut s = spec(&public.url("/start"));
    s.redirect_policy = "any".into();
    let report = probe(&internet_on_loopback(None), s).await;
    assert_eq!(report.status, ProbeStatus::Up, "{report:?}");
    assert_eq!(internal.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_policy_judges_the_address_a_name_resolves_to() {
    let internal = Canned::on(Ipv4Addr::new(127, 0, 0, 3), ok()).await;
    let dns = DnsServer::builder()
        .a("innocent.vantage.test", &[Ipv4Addr::new(127, 0, 0, 3)])
        .start()
        .await;
    let public = Canned::new(redirect_to(&format!(
        "http://innocent.vantage.test:{}/",
        internal.addr.port()
    )))
    .await;
    let report = probe(&internet_on_loopback(Some(&dns)), spec(&public.url("/"))).await;
    assert_eq!(
        report.error_kind,
        Some(ErrorKind::RedirectBlocked),
        "{report:?}"
    );
    assert!(
        report.dns_ms.is_some(),
        "refused after the lookup: {report:?}"
    );
    assert_eq!(internal.connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn redirects_within_an_internal_network_are_followed() {
    // A monitor of an internal service (loopback, as judged for real) may redirect
    // within it: the rule is about leaving the public internet.
    let server = TestServer::http().await;
    let report = probe(&plain(), spec(&server.url("/redirect/3"))).await;
    assert_eq!(report.status, ProbeStatus::Up, "{report:?}");
    assert_eq!(report.redirect_count, 3);
}

#[tokio::test]
async fn same_host_refuses_another_host_name() {
    let target = Canned::new(ok()).await;
    let first = Canned::new(redirect_to(&format!(
        "http://localhost:{}/?key=k3y",
        target.addr.port()
    )))
    .await;
    let mut s = spec(&first.url("/"));
    s.redirect_policy = "same-host".into();
    let report = probe(&plain(), s).await;
    assert_eq!(
        report.error_kind,
        Some(ErrorKind::RedirectBlocked),
        "{report:?}"
    );
    let message = report.error_message.unwrap();
    assert!(
        message.contains("leaves the monitor's host 127.0.0.1") && !message.contains("k3y"),
        "{message}"
    );
}

#[tokio::test]
async fn query_strings_are_redacted_from_every_redirect_message() {
    // A redirect loop through URLs carrying tokens: the message names both ends.
    let server = TestServer::http().await;
    let looping = Canned::new(redirect_to("/again?token=t0k3n")).await;
    let report = probe(&plain(), spec(&looping.url("/again?token=t0k3n"))).await;
    assert_eq!(
        report.error_kind,
        Some(ErrorKind::RedirectLoop),
        "{report:?}"
    );
    let message = report.error_message.unwrap();
    assert!(message.contains("/again?…"), "{message}");
    assert!(!message.contains("t0k3n"), "{message}");

    let mut s = spec(&server.url("/redirect/3?token=t0k3n"));
    s.max_redirects = 1;
    let report = probe(&plain(), s).await;
    assert_eq!(report.error_kind, Some(ErrorKind::TooManyRedirects));
    assert!(!report.error_message.unwrap().contains("t0k3n"));
}

// ---------------------------------------------------------------------------------
// The options as columns of api_monitors, through a running instance
// ---------------------------------------------------------------------------------

/// The message of a statement the database refused.
async fn rejection(pool: &sqlx::PgPool, sql: &str) -> String {
    match sqlx::raw_sql(sql).execute(pool).await {
        Err(sqlx::Error::Database(err)) => err.message().to_string(),
        other => panic!("{sql}: expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn the_database_validates_the_new_columns_naming_them() {
    let db = TestDb::fresh().await;
    sqlx::raw_sql(
        "INSERT INTO schedules (name, interval_seconds) VALUES ('s', 60);
         INSERT INTO api_monitors (name, url, schedule_id, redirect_policy)
         SELECT 'm', 'https://example.com/', id, ' Same-Host ' FROM schedules;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let (cap, policy): (i32, String) =
        sqlx::query_as("SELECT max_body_bytes, redirect_policy FROM api_monitors")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((cap, policy.as_str()), (1 << 20, "same-host"));

    let message = rejection(&db.pool, "UPDATE api_monitors SET max_body_bytes = 0").await;
    assert!(
        message.starts_with("api_monitors.max_body_bytes must be between 1 and 1073741824"),
        "{message}"
    );
    let message = rejection(
        &db.pool,
        "UPDATE api_monitors SET redirect_policy = 'never'",
    )
    .await;
    assert!(
        message.starts_with("api_monitors.redirect_policy must be 'safe', 'same-host' or 'any'"),
        "{message}"
    );
}

const TOKEN: &str = "t0ken-never-shown";

#[tokio::test]
async fn a_running_instance_applies_the_row_and_never_shows_its_query_strings() {
    let db = TestDb::fresh().await;
    seed_datacenters(&db.pool, &["va"]).await;
    let bytes = TestServer::http().await;
    let looping = Canned::new(redirect_to(&format!("/next?token={TOKEN}"))).await;
    sqlx::query("INSERT INTO schedules (name, interval_seconds, timeout_ms) VALUES ('1s', 1, 500)")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for (name, url, cap) in [
        ("capped", bytes.url("/bytes/100"), 64),
        (
            "looping",
            looping.url(&format!("/start?token={TOKEN}")),
            1 << 20,
        ),
    ] {
        let id: i32 = sqlx::query_scalar(
            "INSERT INTO api_monitors (name, url, schedule_id, all_datacenters, max_body_bytes) \
             SELECT $1, $2, id, true, $3 FROM schedules WHERE name = '1s' RETURNING id",
        )
        .bind(name)
        .bind(url)
        .bind(cap)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        ids.push(id);
    }
    let mut instance = Instance::start(InstanceOptions {
        database_url: &db.url,
        datacenter: "va",
        name: "va-a",
        extra_env: vec![("RUST_LOG", "debug".to_string())],
    });
    let messages: Vec<(String, String)> = eventually(
        "a failed heartbeat of each",
        Duration::from_secs(30),
        || async {
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT DISTINCT ON (monitor_id) error_kind, error_message FROM api_heartbeats \
                 WHERE error_kind IS NOT NULL ORDER BY monitor_id",
            )
            .fetch_all(&db.pool)
            .await
            .unwrap();
            (rows.len() == 2).then_some(rows)
        },
    )
    .await;
    assert_eq!(messages[0].0, "body_too_large", "{messages:?}");
    assert!(messages[0].1.contains("cap of 64 bytes"), "{messages:?}");
    assert_eq!(messages[1].0, "redirect_loop", "{messages:?}");
    assert!(messages[1].1.contains("/next?…"), "{messages:?}");

    let stored: Vec<String> =
        sqlx::query_scalar("SELECT coalesce(error_message, '') FROM api_heartbeats")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let status = instance
        .status()
        .await
        .expect("/status answers")
        .to_string();
    let metrics = instance.metrics().await.expect("/metrics answers");
    let logs = instance.logs().join("\n");
    assert!(logs.contains("instance registered"), "the logs were read");
    for (what, text) in [
        ("heartbeats", stored.join("\n")),
        ("/status", status),
        ("/metrics", metrics),
        ("logs", logs),
    ] {
        assert!(
            !text.contains(TOKEN),
            "{what} shows the query string:\n{text}"
        );
    }
}

// ---------------------------------------------------------------------------------
// The same options as `vantage check` flags
// ---------------------------------------------------------------------------------

async fn check(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_vantage"))
        .arg("check")
        .args(args)
        .env_remove("VANTAGE_CA_FILE")
        .env_remove("VANTAGE_DNS_SERVERS")
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn check_takes_a_body_cap_and_a_redirect_policy() {
    let server = TestServer::http().await;
    let out = check(&["--json", "--max-body", "1k", &server.url("/bytes/2048")]).await;
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["error_kind"], "body_too_large");
    assert!(
        report["error_message"]
            .as_str()
            .unwrap()
            .contains("cap of 1024 bytes (1 KiB)"),
        "{report}"
    );
    let out = check(&["--max-body", "4KiB", &server.url("/bytes/2048")]).await;
    assert_eq!(out.status.code(), Some(0));

    // Same host name only: 127.0.0.1 -> localhost is another host. Neither the JSON
    // nor the text shows the query strings.
    let target = Canned::new(ok()).await;
    let first = Canned::new(redirect_to(&format!(
        "http://localhost:{}/?token={TOKEN}",
        target.addr.port()
    )))
    .await;
    let url = first.url(&format!("/?token={TOKEN}"));
    let out = check(&["--json", "--redirect-policy", "same-host", &url]).await;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["error_kind"], "redirect_blocked", "{report}");
    let out = check(&["--redirect-policy", "same-host", &url]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("redirect_blocked"), "{text}");
    for output in [&text, &String::from_utf8_lossy(&out.stderr)] {
        assert!(!output.contains(TOKEN), "{output}");
    }
    assert_eq!(
        check(&["--redirect-policy", "any", &url])
            .await
            .status
            .code(),
        Some(0)
    );

    // Bad values are usage errors naming the flag or field.
    let out = check(&["--max-body", "lots", &server.url("/")]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-body"));
    let out = check(&["--redirect-policy", "never", &server.url("/")]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("redirect_policy: \"never\" is not a redirect policy"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
