//! TCP connect for probes: try the resolved addresses in order until one accepts.
//!
//! The connect phase covers every attempt (as curl's `time_connect` does), so a dead
//! first address shows up as a slow connect rather than disappearing. Each attempt
//! gets an equal share of the remaining time, the last one all of it, so one
//! black-holed address cannot starve the fallback.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::observation::Observation;
use super::timings::Phase;
use super::wire_clock::{self, StampedTcp};
use super::Failure;
use crate::probe::ErrorKind;

/// [`connect`] as a probe's connect phase: timed (earlier attempts on the probe's
/// clock, the successful one by the kernel's handshake RTT, see `wire_clock`), and
/// the address that accepted recorded as the probe's `remote_ip`. The stream comes
/// back stamping (`seen.stamps`).
pub(crate) async fn connect_timed(
    addrs: &[IpAddr],
    port: u16,
    deadline: Instant,
    seen: &mut Observation,
) -> Result<StampedTcp, Failure> {
    seen.phase = Phase::Connect;
    seen.timings.hop().connect_start = Some(std::time::Instant::now());
    let (tcp, addr, attempt_started) = connect(addrs, port, deadline).await?;
    seen.timings.hop().connected = Some(wire_clock::connected_at(&tcp, attempt_started));
    seen.remote_ip = Some(addr.ip());
    let (tcp, stamps) = StampedTcp::new(tcp);
    seen.stamps = stamps;
    Ok(tcp)
}

/// Connects to the first address of `addrs` that accepts, with `TCP_NODELAY` set;
/// also returns when that (successful) attempt started.
async fn connect(
    addrs: &[IpAddr],
    port: u16,
    deadline: Instant,
) -> Result<(TcpStream, SocketAddr, std::time::Instant), Failure> {
    let mut last: Option<Failure> = None;
    for (i, ip) in addrs.iter().enumerate() {
        let addr = SocketAddr::new(*ip, port);
        let left = addrs.len() - i;
        let now = Instant::now();
        let attempt_started = now.into_std();
        let attempt_deadline = if left == 1 {
            deadline
        } else {
            now + deadline.saturating_duration_since(now) / left as u32
        };
        match tokio::time::timeout_at(attempt_deadline, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                // Probes write one small request; Nagle would only add delay.
                let _ = stream.set_nodelay(true);
                return Ok((stream, addr, attempt_started));
            }
            Ok(Err(err)) => last = Some(classify(addr, &err)),
            Err(_) => {
                last = Some(Failure::new(
                    ErrorKind::ConnectTimeout,
                    format!("connecting to {addr} timed out"),
                ))
            }
        }
    }
    Err(last.unwrap_or_else(|| Failure::new(ErrorKind::ConnectError, "no address to connect to")))
}

fn classify(addr: SocketAddr, err: &io::Error) -> Failure {
    let kind = match err.kind() {
        io::ErrorKind::ConnectionRefused => ErrorKind::ConnectRefused,
        io::ErrorKind::TimedOut => ErrorKind::ConnectTimeout,
        _ => ErrorKind::ConnectError,
    };
    Failure::new(kind, format!("connecting to {addr}: {err}"))
}
