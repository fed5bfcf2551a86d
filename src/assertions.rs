//! Checks of a probe's answer (placeholder of the assertion language: status sets and
//! body text only, until the full module lands).

use std::fmt;

use crate::probe::ErrorKind;

/// A set of acceptable status codes such as `200-299,301`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSet {
    ranges: Vec<(u16, u16)>,
}

impl StatusSet {
    pub fn parse(text: &str) -> Result<StatusSet, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(StatusSet {
                ranges: vec![(200, 399)],
            });
        }
        let code = |s: &str| -> Result<u16, String> {
            let s = s.trim();
            match s.parse::<u16>() {
                Ok(c) if (100..=599).contains(&c) => Ok(c),
                _ => Err(format!(
                    "{s:?} is not a status code between 100 and 599; write e.g. \"200-299,301\""
                )),
            }
        };
        let mut ranges = Vec::new();
        for part in text.split(',') {
            // `2xx` is a class, as the database's check accepts it.
            let class = part.trim().to_ascii_lowercase();
            if let Some(digit) = class.strip_suffix("xx").and_then(|d| d.parse::<u16>().ok()) {
                if (1..=5).contains(&digit) {
                    ranges.push((digit * 100, digit * 100 + 99));
                    continue;
                }
            }
            let range = match part.split_once('-') {
                Some((lo, hi)) => (code(lo)?, code(hi)?),
                None => {
                    let c = code(part)?;
                    (c, c)
                }
            };
            if range.0 > range.1 {
                return Err(format!("range {part:?} is backwards; write low-high"));
            }
            ranges.push(range);
        }
        Ok(StatusSet { ranges })
    }

    pub fn contains(&self, code: u16) -> bool {
        self.ranges
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&code))
    }
}

impl fmt::Display for StatusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (lo, hi)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Assertion {
    Status(StatusSet),
    BodyContains(String),
}

impl Assertion {
    pub fn status(codes: &str) -> Result<Assertion, String> {
        StatusSet::parse(codes).map(Assertion::Status)
    }

    pub fn body_contains(text: &str) -> Assertion {
        Assertion::BodyContains(text.to_string())
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Assertions(Vec<Assertion>);

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidAssertion(String);

pub struct Response<'a> {
    pub status: Option<u16>,
    pub headers: Option<&'a http::HeaderMap>,
    pub body: Option<&'a [u8]>,
    pub total_ms: f64,
    pub ttfb_ms: Option<f64>,
    pub cert_expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub now: chrono::DateTime<chrono::Utc>,
}

pub struct Failed {
    pub kind: ErrorKind,
    pub message: String,
}

impl Assertions {
    pub fn from_json(value: &serde_json::Value) -> Result<Assertions, InvalidAssertion> {
        match value {
            serde_json::Value::Array(items) if items.is_empty() => Ok(Assertions::default()),
            other => Err(InvalidAssertion(format!("not supported yet: {other}"))),
        }
    }

    pub fn from_texts<S: AsRef<str>>(texts: &[S]) -> Result<Assertions, InvalidAssertion> {
        match texts.first() {
            None => Ok(Assertions::default()),
            Some(text) => Err(InvalidAssertion(format!("not supported yet: {}", text.as_ref()))),
        }
    }

    pub fn push(&mut self, a: Assertion) {
        self.0.push(a);
    }

    pub fn iter(&self) -> impl Iterator<Item = &Assertion> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn needs_body(&self) -> bool {
        self.0
            .iter()
            .any(|a| matches!(a, Assertion::BodyContains(_)))
    }

    pub fn needs_headers(&self) -> bool {
        false
    }

    pub fn has_status(&self) -> bool {
        self.0.iter().any(|a| matches!(a, Assertion::Status(_)))
    }

    pub fn check_applicable(&self, kind: &str) -> Result<(), InvalidAssertion> {
        if kind != "http" && !self.0.is_empty() {
            return Err(InvalidAssertion(format!(
                "needs an http monitor, not {kind}"
            )));
        }
        Ok(())
    }

    pub fn check(&self, response: &Response<'_>) -> Result<(), Failed> {
        for assertion in &self.0 {
            match assertion {
                Assertion::Status(set) => {
                    let code = response.status.unwrap_or(0);
                    if !set.contains(code) {
                        return Err(Failed {
                            kind: ErrorKind::StatusMismatch,
                            message: format!("status {code} is not in the expected set {set}"),
                        });
                    }
                }
                Assertion::BodyContains(needle) => {
                    let body = response.body.unwrap_or_default();
                    let needle = needle.as_bytes();
                    if !body.windows(needle.len()).any(|w| w == needle) {
                        return Err(Failed {
                            kind: ErrorKind::BodyMismatch,
                            message: format!(
                                "response body ({} bytes) does not contain {:?}",
                                body.len(),
                                String::from_utf8_lossy(needle)
                            ),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}
