//! Where a probe's clock readings live while it runs.
//!
//! Probers only record `Instant`s at phase boundaries, hop by hop; nothing here is
//! converted to milliseconds until [`Timings::phases`] runs once, at the edge, when
//! the report is built. A boundary that was never reached stays `None`, so a phase
//! that did not happen comes out as `None` rather than a zero.

use std::time::{Duration, Instant};

/// The phase a probe is in; named in timeout messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Dns,
    Connect,
    Tls,
    /// Writing the request and waiting for the response head.
    Head,
    /// Reading the response body.
    Body,
    /// Reading what a TCP server says (its banner, or its reply to what was sent).
    Reply,
}

impl Phase {
    /// Completes "timed out after N ms waiting for ...".
    pub fn waiting_for(self) -> &'static str {
        match self {
            Phase::Dns => "the DNS answer",
            Phase::Connect => "the TCP connection",
            Phase::Tls => "the TLS handshake",
            Phase::Head => "the response head",
            Phase::Body => "the response body",
            Phase::Reply => "the server's reply",
        }
    }
}

/// Clock readings of one request/response exchange (one hop of a redirect chain).
#[derive(Debug, Clone, Copy, Default)]
pub struct Hop {
    /// Before the name lookup; `None` when the host is an IP literal.
    pub dns_start: Option<Instant>,
    pub dns_done: Option<Instant>,
    pub connect_start: Option<Instant>,
    pub connected: Option<Instant>,
    /// The ClientHello left (else the handshake starts at `connected`).
    pub tls_start: Option<Instant>,
    pub tls_done: Option<Instant>,
    /// The connection is ready for the request (after TCP, TLS and the HTTP handshake).
    pub ready: Option<Instant>,
    /// The request's last byte left (else ttfb starts at `ready`).
    pub request_sent: Option<Instant>,
    /// The response head arrived: the kernel's receive stamp of the data that
    /// completed it where the kind reads one, else when it was parsed.
    pub head: Option<Instant>,
    pub body_done: Option<Instant>,
}

/// Clock readings of a whole probe: its start and every hop.
#[derive(Debug, Clone)]
pub struct Timings {
    pub start: Instant,
    pub hops: Vec<Hop>,
}

/// Phase durations in milliseconds with microsecond precision, summed over hops.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PhaseMs {
    pub dns_ms: Option<f64>,
    pub connect_ms: Option<f64>,
    pub tls_ms: Option<f64>,
    pub ttfb_ms: Option<f64>,
    pub transfer_ms: Option<f64>,
}

impl Timings {
    pub fn start_now() -> Timings {
        Timings {
            start: Instant::now(),
            hops: Vec::with_capacity(1),
        }
    }

    /// Starts a new hop and returns it for recording.
    pub fn new_hop(&mut self) -> &mut Hop {
        self.hops.push(Hop::default());
        self.hops.last_mut().expect("just pushed")
    }

    pub fn hop(&mut self) -> &mut Hop {
        if self.hops.is_empty() {
            self.hops.push(Hop::default());
        }
        self.hops.last_mut().expect("not empty")
    }

    /// Per-phase durations summed over the hops in which the phase completed.
    pub fn phases(&self) -> PhaseMs {
        fn sum(
            hops: &[Hop],
            span: impl Fn(&Hop) -> (Option<Instant>, Option<Instant>),
        ) -> Option<f64> {
            let mut total: Option<Duration> = None;
            for hop in hops {
                if let (Some(a), Some(b)) = span(hop) {
                    *total.get_or_insert(Duration::ZERO) += b.saturating_duration_since(a);
                }
            }
            total.map(ms)
        }
        let hops = &self.hops;
        PhaseMs {
            dns_ms: sum(hops, |h| (h.dns_start, h.dns_done)),
            connect_ms: sum(hops, |h| (h.connect_start, h.connected)),
            tls_ms: sum(hops, |h| {
                (
                    h.tls_start.or(h.connected).filter(|_| h.tls_done.is_some()),
                    h.tls_done,
                )
            }),
            ttfb_ms: sum(hops, |h| (h.request_sent.or(h.ready), h.head)),
            transfer_ms: sum(hops, |h| (h.head, h.body_done)),
        }
    }

    pub fn total_ms(&self, end: Instant) -> f64 {
        ms(end.saturating_duration_since(self.start))
    }
}

/// Milliseconds with microsecond precision (not sub-microsecond noise).
pub fn ms(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_that_did_not_happen_are_none() {
        let t0 = Instant::now();
        let mut t = Timings {
            start: t0,
            hops: vec![],
        };
        let hop = t.new_hop();
        hop.connect_start = Some(t0);
        hop.connected = Some(t0 + Duration::from_micros(1500));
        let p = t.phases();
        assert_eq!(p.dns_ms, None);
        assert_eq!(p.connect_ms, Some(1.5));
        assert_eq!(p.tls_ms, None);
        assert_eq!(p.ttfb_ms, None);
    }

    #[test]
    fn phases_sum_over_hops() {
        let t0 = Instant::now();
        let mut t = Timings {
            start: t0,
            hops: vec![],
        };
        for _ in 0..2 {
            let hop = t.new_hop();
            hop.ready = Some(t0);
            hop.head = Some(t0 + Duration::from_micros(2250));
        }
        assert_eq!(t.phases().ttfb_ms, Some(4.5));
    }
}
