//! A real UDP DNS responder on 127.0.0.1 (random port), hand-rolled so the wire
//! format under test is exactly what we send: A answers for configured names
//! (optionally after a delay), MX and TXT records, an empty NOERROR for other types
//! of a known name, NXDOMAIN for unknown names,
//! and silence for names configured never to answer. It counts queries, so tests can
//! prove every probe performs a real lookup.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
enum Answer {
    A(Vec<Ipv4Addr>, Duration),
    /// Records of other types: (QTYPE, RDATA in wire format).
    Records(Vec<(u16, Vec<u8>)>),
    Never,
}

#[derive(Default)]
pub struct DnsBuilder {
    names: HashMap<String, Answer>,
}

impl DnsBuilder {
    /// `name` answers with `addrs` (A records).
    pub fn a(mut self, name: &str, addrs: &[Ipv4Addr]) -> Self {
        self.names
            .insert(key(name), Answer::A(addrs.to_vec(), Duration::ZERO));
        self
    }

    /// `name` answers with `addrs`, but only after `delay`.
    pub fn slow_a(mut self, name: &str, addrs: &[Ipv4Addr], delay: Duration) -> Self {
        self.names
            .insert(key(name), Answer::A(addrs.to_vec(), delay));
        self
    }

    /// `name` answers MX queries with `(preference, exchange)` records.
    pub fn mx(self, name: &str, records: &[(u16, &str)]) -> Self {
        let rdata = records
            .iter()
            .map(|(preference, exchange)| {
                let mut data = preference.to_be_bytes().to_vec();
                data.extend(wire_name(exchange));
                (15, data)
            })
            .collect();
        self.records(name, rdata)
    }

    /// `name` answers TXT queries with one record per text.
    pub fn txt(self, name: &str, texts: &[&str]) -> Self {
        let rdata = texts
            .iter()
            .map(|text| {
                let mut data = vec![text.len() as u8];
                data.extend_from_slice(text.as_bytes());
                (16, data)
            })
            .collect();
        self.records(name, rdata)
    }

    /// Adds records of other types to `name`'s.
    fn records(mut self, name: &str, rdata: Vec<(u16, Vec<u8>)>) -> Self {
        match self
            .names
            .entry(key(name))
            .or_insert(Answer::Records(Vec::new()))
        {
            Answer::Records(existing) => existing.extend(rdata),
            other => *other = Answer::Records(rdata),
        }
        self
    }

    /// Queries for `name` are never answered.
    pub fn never(mut self, name: &str) -> Self {
        self.names.insert(key(name), Answer::Never);
        self
    }

    /// Starts on a random port.
    pub async fn start(self) -> DnsServer {
        self.start_on(0).await
    }

    /// Starts on 127.0.0.1:`port` (0 for a random one).
    pub async fn start_on(self, port: u16) -> DnsServer {
        self.start_at(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .await
    }

    /// Starts on `addr` (port 0 for a random one).
    pub async fn start_at(self, addr: SocketAddr) -> DnsServer {
        let socket = Arc::new(UdpSocket::bind(addr).await.unwrap());
        let addr = socket.local_addr().unwrap();
        let queries = Arc::new(AtomicUsize::new(0));
        let names = Arc::new(self.names);
        let counter = queries.clone();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let Some((reply, delay)) = respond(&buf[..n], &names) else {
                    continue;
                };
                if delay.is_zero() {
                    // Answer inline: a timer, even a zero one, would add up to a tick.
                    let _ = socket.send_to(&reply, peer).await;
                    continue;
                }
                let socket = socket.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = socket.send_to(&reply, peer).await;
                });
            }
        });
        DnsServer {
            addr,
            queries,
            task,
        }
    }
}

pub struct DnsServer {
    pub addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DnsServer {
    pub fn builder() -> DnsBuilder {
        DnsBuilder::default()
    }

    /// How many queries arrived so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

/// `name` as uncompressed DNS labels.
fn wire_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.trim_end_matches('.').split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Builds the reply to `query`, or `None` to stay silent.
fn respond(query: &[u8], names: &HashMap<String, Answer>) -> Option<(Vec<u8>, Duration)> {
    if query.len() < 12 {
        return None;
    }
    // Question: labels, then QTYPE and QCLASS.
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(pos..pos + len)?).to_ascii_lowercase());
        pos += len;
    }
    let qtype = u16::from_be_bytes([*query.get(pos)?, *query.get(pos + 1)?]);
    let question_end = pos + 4;
    if query.len() < question_end {
        return None;
    }
    let name = labels.join(".");

    let (rcode, records, delay) = match names.get(&name) {
        Some(Answer::Never) => return None,
        Some(Answer::A(addrs, delay)) if qtype == 1 => (
            0u8,
            addrs.iter().map(|a| (1u16, a.octets().to_vec())).collect(),
            *delay,
        ),
        Some(Answer::Records(records)) => (
            0,
            records
                .iter()
                .filter(|(t, _)| *t == qtype)
                .cloned()
                .collect(),
            Duration::ZERO,
        ),
        // Known name, other type (AAAA): NOERROR without answers.
        Some(Answer::A(_, delay)) => (0, Vec::new(), *delay),
        None => (3, Vec::new(), Duration::ZERO),
    };

    let mut reply = Vec::with_capacity(question_end + records.len() * 32);
    reply.extend_from_slice(&query[0..2]); // id
    let rd = query[2] & 0x01;
    reply.push(0x80 | 0x04 | rd); // QR, AA, RD copied
    reply.push(0x80 | rcode); // RA, RCODE
    reply.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    reply.extend_from_slice(&(records.len() as u16).to_be_bytes()); // ANCOUNT
    reply.extend_from_slice(&0u16.to_be_bytes()); // NSCOUNT
    reply.extend_from_slice(&0u16.to_be_bytes()); // ARCOUNT
    reply.extend_from_slice(&query[12..question_end]);
    for (rtype, rdata) in records {
        reply.extend_from_slice(&[0xC0, 0x0C]); // pointer to the question name
        reply.extend_from_slice(&rtype.to_be_bytes());
        reply.extend_from_slice(&1u16.to_be_bytes()); // CLASS IN
        reply.extend_from_slice(&30u32.to_be_bytes()); // TTL
        reply.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        reply.extend_from_slice(&rdata);
    }
    Some((reply, delay))
}
