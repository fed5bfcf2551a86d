//! One DNS exchange over UDP from a socket of the probe's own (#14): the queries a
//! lookup needs (A, AAAA or both), sent back to back to one server, and their answers,
//! with the kernel's transmit and receive stamps (`wire_clock`), so the DNS phase spans
//! the first query leaving to the last answer arriving and nothing of the resolver's
//! bookkeeping or the task's scheduling.
//!
//! It builds and parses messages with hickory-proto and owns only the socket and the
//! matching of answers to queries (id, type, source: the socket is connected). Whether
//! an answer is usable, and what happens when it is not (truncation, a server failure,
//! silence), is `dns`'s business.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use hickory_resolver::proto::op::{Message, MessageType, Query};
use hickory_resolver::proto::rr::{Name, RecordType};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::wire_clock::{self, ClockPair};

/// The answers to one exchange, in the order of the types asked.
pub(crate) struct Exchange {
    /// The first query left (transmit stamp, else just before it was sent).
    pub sent: Instant,
    /// The last answer arrived (receive stamp, else when it was read).
    pub answered: Instant,
    pub answers: Vec<Message>,
}

/// Asks `server` for `types` records of `name` (an FQDN) and waits up to `timeout`
/// for every answer. `None`: no complete set of answers (the socket failed, or the
/// server was silent for one of the queries).
pub(crate) async fn exchange(
    server: SocketAddr,
    name: &Name,
    types: &[RecordType],
    timeout: Duration,
) -> Option<Exchange> {
    let any: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(any).await.ok()?;
    let fd = socket.as_raw_fd();
    let stamped = wire_clock::enable_stamps(fd, true);
    // Connected: the kernel drops datagrams from anyone but the server.
    socket.connect(server).await.ok()?;
    let clock = ClockPair::now();

    let mut ids = Vec::with_capacity(types.len());
    let mut first_send = None;
    for &record_type in types {
        let id = random_id()?;
        let mut query = Message::query();
        query.metadata.id = id;
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(name.clone(), record_type));
        let bytes = query.to_vec().ok()?;
        first_send.get_or_insert_with(Instant::now);
        socket.send(&bytes).await.ok()?;
        ids.push((id, record_type));
    }

    let mut answers: Vec<Option<Message>> = types.iter().map(|_| None).collect();
    let mut answered = None;
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + timeout;
    while answers.iter().any(Option::is_none) {
        let (n, at) = tokio::time::timeout_at(deadline, async {
            loop {
                socket.readable().await?;
                match socket.try_io(Interest::READABLE, || {
                    wire_clock::recv_datagram(fd, &mut buf, &clock)
                }) {
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
                    other => return other,
                }
            }
        })
        .await
        .ok()?
        .ok()?;
        let Ok(message) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let asked = message.queries.first().map(Query::query_type);
        let slot = ids
            .iter()
            .position(|&(id, record_type)| id == message.metadata.id && Some(record_type) == asked);
        match slot {
            Some(i)
                if answers[i].is_none()
                    && message.metadata.message_type == MessageType::Response =>
            {
                answers[i] = Some(message);
                answered = Some(at);
            }
            // A late duplicate or a stray datagram: not ours.
            _ => continue,
        }
    }
    let sent = stamped
        .then(|| wire_clock::transmit_stamps(fd, &clock))
        .flatten()
        .map(|(first, _)| first)
        .or(first_send)?;
    Some(Exchange {
        sent,
        answered: answered?,
        answers: answers.into_iter().flatten().collect(),
    })
}

/// A query id from the system's random generator (ids are the only defence of a
/// plain UDP query against spoofed answers besides the random source port).
fn random_id() -> Option<u16> {
    let mut bytes = [0u8; 2];
    aws_lc_rs::rand::fill(&mut bytes).ok()?;
    Some(u16::from_ne_bytes(bytes))
}
