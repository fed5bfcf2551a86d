//! How the probe tests build a monitor and run it: one spec shape and one call, so the
//! tests differ only in what they probe.

use std::time::Duration;

use super::tls::TestCa;
use vantage::probe::{Monitor, MonitorSpec, Prober};
use vantage::ProbeReport;

/// ALPN of a server that speaks both HTTP versions, as public servers do.
pub const H2_AND_H1: &[&[u8]] = &[b"h2", b"http/1.1"];

/// A GET of `url` with a 5 s deadline and every other setting at its default.
pub fn spec(url: &str) -> MonitorSpec {
    MonitorSpec {
        url: url.to_string(),
        timeout: Duration::from_secs(5),
        ..MonitorSpec::default()
    }
}

/// Validates `spec` (it must be valid) and probes it once with `prober`.
pub async fn probe_with(prober: &Prober, spec: MonitorSpec) -> ProbeReport {
    prober.probe(&Monitor::new(spec).unwrap()).await
}

/// A prober that trusts `ca` besides the public roots.
pub fn trusting(ca: &TestCa) -> Prober {
    Prober::builder()
        .extra_roots(vec![ca.cert_der.clone()])
        .build()
        .unwrap()
}
