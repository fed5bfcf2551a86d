//! `vantage up` as a user runs it: the real binary with its real `vantage run`
//! instances, stopped the way a supervisor or `kill` stops it.

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use support::cluster::{free_port, http_get};
use support::eventually::eventually;
use support::pg::TestDb;

/// SIGTERM stops `vantage up` as Ctrl-C does: its instances stop with it and free their
/// ports. (It used to end `up` at once and leave them running.)
#[tokio::test]
async fn sigterm_stops_its_instances_too() {
    let db = TestDb::fresh().await;
    let dir = tempfile::tempdir().unwrap();
    let instance: SocketAddr = free_port();
    let mut up = tokio::process::Command::new(env!("CARGO_BIN_EXE_vantage"))
        .args([
            "up",
            "--datacenters",
            "va",
            "--instances",
            "1",
            "--base-port",
        ])
        .arg(instance.port().to_string())
        .arg("--dir")
        .arg(dir.path())
        .env("DATABASE_URL", &db.url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually(
        "the instance to answer on the base port",
        Duration::from_secs(60),
        || http_get(instance, "/healthz"),
    )
    .await;

    let pid = up.id().expect("running") as libc::pid_t;
    // SAFETY: kill(2) on the child this test spawned and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(40), up.wait())
        .await
        .expect("`vantage up` ends within 40 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "`vantage up` exited with {status}");
    assert!(
        tokio::net::TcpStream::connect(instance).await.is_err(),
        "an instance still listens on {instance} after `vantage up` ended"
    );
}
