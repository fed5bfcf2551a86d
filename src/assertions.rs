//! Assertions: the language of checks on a probe's response, and their evaluation.
//!
//! An assertion is data. It is stored as a JSON array in `api_monitors.assertions`
//! (later also in YAML), written as text on the command line (`vantage check --assert
//! 'json:$.status == "ok"'`), and printed in that text form in messages. Both forms
//! meet in one [`AssertionSpec`] (the serde shape, unvalidated) that is validated into
//! an [`Assertion`] (regexes compiled, JSONPath parsed, operators paired with the
//! values they need), so a mistake is reported when a monitor is loaded, naming the
//! assertion and the fix, never discovered at probe time. [`Assertions::check`]
//! evaluates them in order against a [`Response`], the few facts a probe observed.
//!
//! The module is pure: no I/O, no clock (the caller passes `now`), nothing about how a
//! probe is made or where monitors are stored.
//!
//! Semantics worth knowing:
//! - `json` paths starting with `$` are JSONPath (RFC 9535) and may select several
//!   nodes: the assertion holds when any node satisfies it, and every operator but
//!   `not_exists` needs at least one node. Paths starting with `/` are JSON Pointers
//!   (RFC 6901) and select at most one node.
//! - `==` and `!=` compare JSON values, numbers by value (`3` equals `3.0`). `<`, `>`,
//!   `<=` and `>=` compare two numbers, or two strings by Unicode code points; any
//!   other pair does not satisfy them. `contains` holds for a string containing the
//!   value as a substring, or an array with an element equal to the value.
//! - In the text form, a `json` value is JSON; a bare word that is not JSON (and does
//!   not start like JSON: a quote, bracket, brace, digit or `-`) is taken as a string,
//!   so `json:$.status == ok` means `"ok"`.
//! - `time:total < 500` passes at exactly 500 ms: the stored form is `max_ms`.
//! - A header name is case-insensitive; when the response has several lines of it, any
//!   one of them may satisfy the assertion. Messages never show the values of
//!   `set-cookie`, `cookie`, `authorization` or the authentication challenges.
//! - A JSON Pointer may not contain whitespace (the text form ends a path there); name
//!   such a key with JSONPath, `$['a b']`.

use std::fmt;

use chrono::{DateTime, Utc};
use http::header::{HeaderMap, HeaderName};
use regex::bytes::{Regex, RegexBuilder};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use serde_json_path::JsonPath;

use crate::probe::ErrorKind;

/// A compiled regex may use at most this much memory (the regex crate's default is
/// 10 MiB): every probe of the monitor runs it, and a monitor row is not trusted code.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Values shown in messages are cut to about this many characters.
const SHOWN_CHARS: usize = 100;

/// Response headers whose values are never shown in a message.
const CREDENTIAL_HEADERS: [&str; 5] = [
    "set-cookie",
    "cookie",
    "authorization",
    "proxy-authenticate",
    "www-authenticate",
];

const TYPES: &str = "status, body, json, header, response_time or cert_expiry";

// ---------------------------------------------------------------------------------
// The stored shape
// ---------------------------------------------------------------------------------

/// One assertion as stored (`api_monitors.assertions` is a JSON array of these) or
/// written in YAML: the serde and JSON Schema shape, not yet validated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AssertionSpec {
    /// The HTTP status is in a set, e.g. `200-299,301` or `2xx`.
    Status { codes: String },
    /// The response body contains a text, does not contain it, or matches a regex.
    Body { op: BodyOp, value: String },
    /// A value in a JSON response body, selected by a JSONPath (`$.status`) or a JSON
    /// Pointer (`/status`).
    Json {
        path: String,
        op: JsonOp,
        /// Any JSON; required by every operator but `exists` and `not_exists`, which
        /// take none.
        #[serde(
            default,
            deserialize_with = "present",
            skip_serializing_if = "Option::is_none"
        )]
        value: Option<Value>,
    },
    /// A response header, by case-insensitive name.
    Header {
        name: String,
        op: HeaderOp,
        /// Required by `equals` and `matches`; `exists` and `not_exists` take none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<String>,
    },
    /// The total time or the time to first byte is at most `max_ms` milliseconds.
    ResponseTime { phase: TimePhase, max_ms: f64 },
    /// The leaf certificate expires more than `min_days` days after the probe.
    CertExpiry { min_days: u32 },
}

/// `"value": null` is a value to compare with, not an absent one: a present field is
/// always `Some`, and `default` makes an absent one `None`.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BodyOp {
    Contains,
    NotContains,
    /// A regex search anywhere in the body.
    Matches,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum JsonOp {
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "contains")]
    Contains,
    #[serde(rename = "exists")]
    Exists,
    #[serde(rename = "not_exists")]
    NotExists,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HeaderOp {
    Exists,
    NotExists,
    /// Exactly this value.
    Equals,
    /// A regex search in the value.
    Matches,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TimePhase {
    /// The whole probe (`total_ms`).
    Total,
    /// Time to first byte (`ttfb_ms`).
    Ttfb,
}

impl TimePhase {
    fn as_str(self) -> &'static str {
        match self {
            TimePhase::Total => "total",
            TimePhase::Ttfb => "ttfb",
        }
    }
}

// ---------------------------------------------------------------------------------
// The validated shape
// ---------------------------------------------------------------------------------

/// One validated assertion. `Display` prints its text form, which parses back to an
/// equal assertion.
#[derive(Clone, Debug, PartialEq)]
pub enum Assertion {
    Status(StatusSet),
    Body(BodyCheck),
    Json {
        path: JsonTarget,
        check: JsonCheck,
    },
    Header {
        name: HeaderName,
        check: HeaderCheck,
    },
    ResponseTime {
        phase: TimePhase,
        max_ms: f64,
    },
    CertExpiry {
        min_days: u32,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum BodyCheck {
    Contains(String),
    NotContains(String),
    Matches(Pattern),
}

#[derive(Clone, Debug, PartialEq)]
pub enum JsonCheck {
    Compare(Comparison, Value),
    Contains(Value),
    Exists,
    NotExists,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
}

#[derive(Clone, Debug, PartialEq)]
pub enum HeaderCheck {
    Exists,
    NotExists,
    Equals(String),
    Matches(Pattern),
}

/// A size-limited regex, equal to another when their sources are equal. It searches
/// bytes, so a body that is not UTF-8 can still be matched.
#[derive(Clone, Debug)]
pub struct Pattern(Regex);

impl Pattern {
    pub fn new(source: &str) -> Result<Pattern, String> {
        RegexBuilder::new(source)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map(Pattern)
            .map_err(|err| match err {
                regex::Error::CompiledTooBig(_) => format!(
                    "the regex {} is too large once compiled (over 1 MiB); write a simpler one",
                    quoted(source)
                ),
                // The syntax error is a multi-line drawing; its last line says why.
                other => {
                    let text = other.to_string();
                    let why = text.lines().last().unwrap_or_default();
                    format!(
                        "{} is not a regex ({}); escape special characters with \\, e.g. \\(",
                        quoted(source),
                        why.trim_start_matches("error: ")
                    )
                }
            })
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.as_str() == other.as_str()
    }
}

/// Where a `json` assertion looks: a JSONPath (`$...`) or a JSON Pointer (`/...`).
#[derive(Clone, Debug, PartialEq)]
pub struct JsonTarget {
    text: String,
    path: Option<JsonPath>,
}

impl JsonTarget {
    pub fn parse(text: &str) -> Result<JsonTarget, String> {
        if text.starts_with('$') {
            let path = JsonPath::parse(text).map_err(|err| {
                format!(
                    "{} is not a JSONPath ({err}); write e.g. $.status",
                    quoted(text)
                )
            })?;
            Ok(JsonTarget {
                text: text.to_string(),
                path: Some(path),
            })
        } else if text.starts_with('/') {
            // The text form ends a path at whitespace; JSONPath can name such keys.
            if text.chars().any(char::is_whitespace) {
                return Err(format!(
                    "the JSON Pointer {} has a space; write it as a JSONPath, e.g. $['a b']",
                    quoted(text)
                ));
            }
            let bad_escape = text
                .split('~')
                .skip(1)
                .any(|after| !after.starts_with(['0', '1']));
            if bad_escape {
                return Err(format!(
                    "the JSON Pointer {} has a ~ not followed by 0 or 1; write ~0 for ~ and ~1 for /",
                    quoted(text)
                ));
            }
            Ok(JsonTarget {
                text: text.to_string(),
                path: None,
            })
        } else {
            Err(format!(
                "{} is neither a JSONPath (starting with $) nor a JSON Pointer (starting with /); write e.g. $.status or /status",
                quoted(text)
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn nodes<'v>(&self, value: &'v Value) -> Vec<&'v Value> {
        match &self.path {
            Some(path) => path.query(value).all(),
            None => value.pointer(&self.text).into_iter().collect(),
        }
    }
}

impl fmt::Display for JsonTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

// ---------------------------------------------------------------------------------
// A monitor's assertions
// ---------------------------------------------------------------------------------

/// A monitor's assertions, checked in order. A boxed slice, not a `Vec`: a monitor
/// keeps them for its whole life, and the slice is 8 bytes smaller for every monitor.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Assertions(Box<[Assertion]>);

impl From<Vec<Assertion>> for Assertions {
    fn from(assertions: Vec<Assertion>) -> Self {
        Assertions(assertions.into_boxed_slice())
    }
}

/// Why assertions cannot be used; the message names the assertion (its index in the
/// array, from 0, as `assertions->2` in SQL, and its text form) and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidAssertion {
    #[error(
        "assertions must be a JSON array (got {got}); write e.g. [{{\"type\": \"status\", \"codes\": \"200-299\"}}]"
    )]
    NotAnArray { got: String },
    #[error("assertion {index} ({text}): {problem}")]
    Invalid {
        index: usize,
        text: String,
        problem: String,
    },
    /// Valid, but the monitor's kind does not produce what it checks.
    #[error("assertion {index} ({text}): {problem}")]
    NotApplicable {
        index: usize,
        text: String,
        problem: String,
    },
}

/// What a probe observed, borrowed for one [`Assertions::check`].
#[derive(Clone, Debug)]
pub struct Response<'a> {
    pub status: Option<u16>,
    pub headers: Option<&'a HeaderMap>,
    /// `None` when the body was not kept.
    pub body: Option<&'a [u8]>,
    pub total_ms: f64,
    pub ttfb_ms: Option<f64>,
    pub cert_expires_at: Option<DateTime<Utc>>,
    pub now: DateTime<Utc>,
}

/// The first assertion that did not hold: becomes `error_kind` and `error_message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failed {
    pub kind: ErrorKind,
    pub message: String,
}

impl Assertions {
    /// From the `api_monitors.assertions` column: a JSON array of [`AssertionSpec`].
    pub fn from_json(value: &Value) -> Result<Assertions, InvalidAssertion> {
        let Value::Array(items) = value else {
            return Err(InvalidAssertion::NotAnArray { got: shown(value) });
        };
        let mut assertions = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let spec = spec_from_json(item).map_err(|problem| InvalidAssertion::Invalid {
                index,
                text: shown(item),
                problem,
            })?;
            let assertion =
                Assertion::from_spec(&spec).map_err(|problem| InvalidAssertion::Invalid {
                    index,
                    text: truncated(spec.to_string()),
                    problem,
                })?;
            assertions.push(assertion);
        }
        Ok(assertions.into())
    }

    /// The column's form; [`Assertions::from_json`] reads it back equal.
    pub fn to_json(&self) -> Value {
        Value::Array(
            self.0
                .iter()
                .map(|a| serde_json::to_value(a.to_spec()).expect("an assertion is JSON"))
                .collect(),
        )
    }

    /// From text forms such as `json:$.status == "ok"` (`vantage check --assert`).
    pub fn from_texts<S: AsRef<str>>(texts: &[S]) -> Result<Assertions, InvalidAssertion> {
        let mut assertions = Vec::with_capacity(texts.len());
        for (index, text) in texts.iter().enumerate() {
            let text = text.as_ref();
            let invalid = |problem| InvalidAssertion::Invalid {
                index,
                text: truncated(text.to_string()),
                problem,
            };
            let spec = parse_text(text).map_err(invalid)?;
            assertions.push(Assertion::from_spec(&spec).map_err(invalid)?);
        }
        Ok(assertions.into())
    }

    pub fn iter(&self) -> impl Iterator<Item = &Assertion> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Body or json assertions need the response body kept.
    pub fn needs_body(&self) -> bool {
        self.iter()
            .any(|a| matches!(a, Assertion::Body(_) | Assertion::Json { .. }))
    }

    /// Header assertions need the response headers kept.
    pub fn needs_headers(&self) -> bool {
        self.iter().any(|a| matches!(a, Assertion::Header { .. }))
    }

    /// A status assertion replaces the monitor's default status set.
    pub fn has_status(&self) -> bool {
        self.iter().any(|a| matches!(a, Assertion::Status(_)))
    }

    /// The first assertion that does not hold, in order.
    pub fn check(&self, response: &Response<'_>) -> Result<(), Failed> {
        // Several json assertions parse the body once.
        let mut json = None;
        for assertion in &self.0 {
            assertion.check(response, &mut json)?;
        }
        Ok(())
    }

    /// Kinds other than http have no status, body or headers (and no time to first
    /// byte); only http and tls have a certificate. Err names the first assertion the
    /// monitor's `kind` cannot satisfy.
    pub fn check_applicable(&self, kind: &str) -> Result<(), InvalidAssertion> {
        for (index, assertion) in self.0.iter().enumerate() {
            // What it checks, and whether a tls monitor has it too.
            let (what, tls_too) = match assertion {
                Assertion::Status(_) => ("a status", false),
                Assertion::Body(_) => ("a body", false),
                Assertion::Json { .. } => ("a json", false),
                Assertion::Header { .. } => ("a header", false),
                Assertion::ResponseTime {
                    phase: TimePhase::Ttfb,
                    ..
                } => ("a ttfb", false),
                Assertion::ResponseTime { .. } => continue,
                Assertion::CertExpiry { .. } => ("a cert", true),
            };
            let allowed = kind == "http" || (tls_too && kind == "tls");
            let kinds = if tls_too { "an http or tls" } else { "an http" };
            if !allowed {
                return Err(InvalidAssertion::NotApplicable {
                    index,
                    text: truncated(assertion.to_string()),
                    problem: format!("{what} assertion needs {kinds} monitor; this one is {kind}"),
                });
            }
        }
        Ok(())
    }
}

fn spec_from_json(item: &Value) -> Result<AssertionSpec, String> {
    let kind = item.get("type").and_then(Value::as_str);
    let example = match kind {
        Some("status") => r#"{"type": "status", "codes": "200-299"}"#,
        Some("body") => r#"{"type": "body", "op": "contains", "value": "ok"}"#,
        Some("json") => r#"{"type": "json", "path": "$.status", "op": "==", "value": "ok"}"#,
        Some("header") => {
            r#"{"type": "header", "name": "content-type", "op": "matches", "value": "json"}"#
        }
        Some("response_time") => r#"{"type": "response_time", "phase": "total", "max_ms": 500}"#,
        Some("cert_expiry") => r#"{"type": "cert_expiry", "min_days": 14}"#,
        _ => {
            return Err(format!(
                "each assertion is an object with a \"type\" of {TYPES}"
            ))
        }
    };
    serde_json::from_value(item.clone()).map_err(|err| format!("{err}; write e.g. {example}"))
}

// ---------------------------------------------------------------------------------
// Validation and printing
// ---------------------------------------------------------------------------------

impl Assertion {
    fn from_spec(spec: &AssertionSpec) -> Result<Assertion, String> {
        Ok(match spec {
            AssertionSpec::Status { codes } => {
                // An empty set would silently mean the default 200-399.
                if codes.trim().is_empty() {
                    return Err("the status codes are empty; write e.g. 200-299,301".into());
                }
                Assertion::Status(StatusSet::parse(codes)?)
            }
            AssertionSpec::Body { op, value } => {
                if value.is_empty() {
                    return Err("the body value is empty; write e.g. body:contains ok".into());
                }
                Assertion::Body(match op {
                    BodyOp::Contains => BodyCheck::Contains(value.clone()),
                    BodyOp::NotContains => BodyCheck::NotContains(value.clone()),
                    BodyOp::Matches => BodyCheck::Matches(Pattern::new(value)?),
                })
            }
            AssertionSpec::Json { path, op, value } => {
                let path = JsonTarget::parse(path)?;
                let comparison = |c| match value {
                    Some(v) => Ok(JsonCheck::Compare(c, v.clone())),
                    None => Err(format!(
                        "{} needs a value; write e.g. json:{path} {} 3",
                        json_op_text(*op),
                        json_op_text(*op)
                    )),
                };
                let check = match op {
                    JsonOp::Eq => comparison(Comparison::Eq)?,
                    JsonOp::Ne => comparison(Comparison::Ne)?,
                    JsonOp::Lt => comparison(Comparison::Lt)?,
                    JsonOp::Gt => comparison(Comparison::Gt)?,
                    JsonOp::Le => comparison(Comparison::Le)?,
                    JsonOp::Ge => comparison(Comparison::Ge)?,
                    JsonOp::Contains => match value {
                        Some(v) => JsonCheck::Contains(v.clone()),
                        None => {
                            return Err(format!(
                                "contains needs a value; write e.g. json:{path} contains \"a\""
                            ))
                        }
                    },
                    JsonOp::Exists | JsonOp::NotExists => {
                        if let Some(v) = value {
                            return Err(format!(
                                "{} takes no value (got {}); remove it",
                                json_op_text(*op),
                                shown(v)
                            ));
                        }
                        if *op == JsonOp::Exists {
                            JsonCheck::Exists
                        } else {
                            JsonCheck::NotExists
                        }
                    }
                };
                if let JsonCheck::Compare(
                    Comparison::Lt | Comparison::Gt | Comparison::Le | Comparison::Ge,
                    v,
                ) = &check
                {
                    if !(v.is_number() || v.is_string()) {
                        return Err(format!(
                            "{} compares numbers or strings, not {}; write e.g. json:{path} {} 3",
                            json_op_text(*op),
                            shown(v),
                            json_op_text(*op)
                        ));
                    }
                }
                Assertion::Json { path, check }
            }
            AssertionSpec::Header { name, op, value } => {
                let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    format!(
                        "{} is not a header name (letters, digits and !#$%&'*+-.^_`|~ only); write e.g. content-type",
                        quoted(name)
                    )
                })?;
                let check = match (op, value) {
                    (HeaderOp::Exists, None) => HeaderCheck::Exists,
                    (HeaderOp::NotExists, None) => HeaderCheck::NotExists,
                    (HeaderOp::Exists | HeaderOp::NotExists, Some(v)) => {
                        return Err(format!(
                            "{} takes no value (got {}); remove it",
                            header_op_text(*op),
                            quoted(v)
                        ))
                    }
                    (HeaderOp::Equals | HeaderOp::Matches, None) => {
                        return Err(format!(
                            "{} needs a value; write e.g. header:{header} {} text/html",
                            header_op_text(*op),
                            header_op_text(*op)
                        ))
                    }
                    (HeaderOp::Equals, Some(v)) if v.is_empty() => {
                        return Err("the header value is empty; to check that the header is there, use exists".into())
                    }
                    (HeaderOp::Equals, Some(v)) => HeaderCheck::Equals(v.clone()),
                    (HeaderOp::Matches, Some(v)) if v.is_empty() => {
                        return Err("the regex is empty and matches anything; to check that the header is there, use exists".into())
                    }
                    (HeaderOp::Matches, Some(v)) => HeaderCheck::Matches(Pattern::new(v)?),
                };
                Assertion::Header {
                    name: header,
                    check,
                }
            }
            AssertionSpec::ResponseTime { phase, max_ms } => {
                if !max_ms.is_finite() || *max_ms < 0.0 {
                    return Err(format!(
                        "max_ms {max_ms} is not a number of milliseconds >= 0; write e.g. 500"
                    ));
                }
                Assertion::ResponseTime {
                    phase: *phase,
                    max_ms: *max_ms,
                }
            }
            AssertionSpec::CertExpiry { min_days } => Assertion::CertExpiry {
                min_days: *min_days,
            },
        })
    }

    /// The stored shape of this assertion.
    pub fn to_spec(&self) -> AssertionSpec {
        match self {
            Assertion::Status(set) => AssertionSpec::Status {
                codes: set.to_string(),
            },
            Assertion::Body(check) => {
                let (op, value) = match check {
                    BodyCheck::Contains(v) => (BodyOp::Contains, v.clone()),
                    BodyCheck::NotContains(v) => (BodyOp::NotContains, v.clone()),
                    BodyCheck::Matches(p) => (BodyOp::Matches, p.as_str().to_string()),
                };
                AssertionSpec::Body { op, value }
            }
            Assertion::Json { path, check } => {
                let (op, value) = match check {
                    JsonCheck::Compare(c, v) => (
                        match c {
                            Comparison::Eq => JsonOp::Eq,
                            Comparison::Ne => JsonOp::Ne,
                            Comparison::Lt => JsonOp::Lt,
                            Comparison::Gt => JsonOp::Gt,
                            Comparison::Le => JsonOp::Le,
                            Comparison::Ge => JsonOp::Ge,
                        },
                        Some(v.clone()),
                    ),
                    JsonCheck::Contains(v) => (JsonOp::Contains, Some(v.clone())),
                    JsonCheck::Exists => (JsonOp::Exists, None),
                    JsonCheck::NotExists => (JsonOp::NotExists, None),
                };
                AssertionSpec::Json {
                    path: path.to_string(),
                    op,
                    value,
                }
            }
            Assertion::Header { name, check } => {
                let (op, value) = match check {
                    HeaderCheck::Exists => (HeaderOp::Exists, None),
                    HeaderCheck::NotExists => (HeaderOp::NotExists, None),
                    HeaderCheck::Equals(v) => (HeaderOp::Equals, Some(v.clone())),
                    HeaderCheck::Matches(p) => (HeaderOp::Matches, Some(p.as_str().to_string())),
                };
                AssertionSpec::Header {
                    name: name.to_string(),
                    op,
                    value,
                }
            }
            Assertion::ResponseTime { phase, max_ms } => AssertionSpec::ResponseTime {
                phase: *phase,
                max_ms: *max_ms,
            },
            Assertion::CertExpiry { min_days } => AssertionSpec::CertExpiry {
                min_days: *min_days,
            },
        }
    }
}

fn json_op_text(op: JsonOp) -> &'static str {
    match op {
        JsonOp::Eq => "==",
        JsonOp::Ne => "!=",
        JsonOp::Lt => "<",
        JsonOp::Gt => ">",
        JsonOp::Le => "<=",
        JsonOp::Ge => ">=",
        JsonOp::Contains => "contains",
        JsonOp::Exists => "exists",
        JsonOp::NotExists => "!exists",
    }
}

fn header_op_text(op: HeaderOp) -> &'static str {
    match op {
        HeaderOp::Exists => "exists",
        HeaderOp::NotExists => "!exists",
        HeaderOp::Equals => "==",
        HeaderOp::Matches => "~",
    }
}

/// The text form, also for a spec that failed validation (error messages show it).
impl fmt::Display for AssertionSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AssertionSpec::Status { codes } => write!(f, "status:{codes}"),
            AssertionSpec::Body { op, value } => {
                let op = match op {
                    BodyOp::Contains => "contains",
                    BodyOp::NotContains => "!contains",
                    BodyOp::Matches => "~",
                };
                write!(f, "body:{op} {value}")
            }
            AssertionSpec::Json { path, op, value } => {
                write!(f, "json:{path} {}", json_op_text(*op))?;
                match value {
                    Some(v) => write!(f, " {v}"),
                    None => Ok(()),
                }
            }
            AssertionSpec::Header { name, op, value } => {
                write!(f, "header:{name} {}", header_op_text(*op))?;
                match value {
                    Some(v) => write!(f, " {v}"),
                    None => Ok(()),
                }
            }
            AssertionSpec::ResponseTime { phase, max_ms } => {
                write!(f, "time:{} < {max_ms}", phase.as_str())
            }
            AssertionSpec::CertExpiry { min_days } => write!(f, "cert:expires > {min_days}d"),
        }
    }
}

impl fmt::Display for Assertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.to_spec().fmt(f)
    }
}

// ---------------------------------------------------------------------------------
// The text form
// ---------------------------------------------------------------------------------

fn parse_text(text: &str) -> Result<AssertionSpec, String> {
    let text = text.trim_start();
    let unknown = || {
        "unknown kind of assertion; start with status:, body:, json:, header:, time: or cert:"
            .to_string()
    };
    let (kind, rest) = text.split_once(':').ok_or_else(unknown)?;
    match kind.trim().to_ascii_lowercase().as_str() {
        "status" => Ok(AssertionSpec::Status {
            codes: rest.trim().to_string(),
        }),
        "body" => body_text(rest),
        "json" => json_text(rest),
        "header" => header_text(rest),
        "time" => time_text(rest),
        "cert" => cert_text(rest),
        _ => Err(unknown()),
    }
}

/// `OP VALUE`: the operator is a word, and the value is everything after the one
/// space that follows it, verbatim (a body text may start or end with spaces).
fn op_and_value(rest: &str) -> (&str, Option<&str>) {
    let rest = rest.trim_start();
    match rest.find(char::is_whitespace) {
        Some(end) => {
            let space = rest[end..].chars().next().map_or(0, char::len_utf8);
            (&rest[..end], Some(&rest[end + space..]))
        }
        None => (rest, None),
    }
}

fn body_text(rest: &str) -> Result<AssertionSpec, String> {
    let (op, value) = op_and_value(rest);
    let op = match op {
        "contains" => BodyOp::Contains,
        "!contains" | "not_contains" => BodyOp::NotContains,
        "~" | "matches" => BodyOp::Matches,
        _ => {
            return Err(format!(
                "unknown body operator {}; write body:contains TEXT, body:!contains TEXT or body:~ REGEX",
                quoted(op)
            ))
        }
    };
    Ok(AssertionSpec::Body {
        op,
        value: value.unwrap_or_default().to_string(),
    })
}

fn json_text(rest: &str) -> Result<AssertionSpec, String> {
    let (path, rest) = split_path(rest.trim_start());
    if path.is_empty() {
        return Err("the path is missing; write e.g. json:$.status == \"ok\"".into());
    }
    let (op, value) = op_and_value(rest);
    let op = match op {
        "==" => JsonOp::Eq,
        "!=" => JsonOp::Ne,
        "<" => JsonOp::Lt,
        ">" => JsonOp::Gt,
        "<=" => JsonOp::Le,
        ">=" => JsonOp::Ge,
        "contains" => JsonOp::Contains,
        "exists" => JsonOp::Exists,
        "!exists" | "not_exists" => JsonOp::NotExists,
        _ => {
            // An unclosed bracket swallows the rest of the text: say what is wrong.
            JsonTarget::parse(path)?;
            return Err(format!(
                "unknown json operator {}; use ==, !=, <, >, <=, >=, contains, exists or !exists, e.g. json:{path} == \"ok\"",
                quoted(op)
            ));
        }
    };
    let value = match value.map(str::trim) {
        None | Some("") => None,
        Some(text) => Some(json_value(text)?),
    };
    Ok(AssertionSpec::Json {
        path: path.to_string(),
        op,
        value,
    })
}

/// The path ends at the first whitespace outside brackets and quotes that is not
/// followed by another segment (RFC 9535 allows blanks between segments, and no
/// operator starts with `.` or `[`). A JSON Pointer ends at the first whitespace.
fn split_path(text: &str) -> (&str, &str) {
    if !text.starts_with('$') {
        let end = text.find(char::is_whitespace).unwrap_or(text.len());
        return text.split_at(end);
    }
    let mut depth = 0usize;
    let mut quote = None;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => quote = Some(c),
            '[' | '(' => depth += 1,
            ']' | ')' => depth = depth.saturating_sub(1),
            c if c.is_whitespace()
                && depth == 0
                && !text[i..].trim_start().starts_with(['.', '[']) =>
            {
                return text.split_at(i);
            }
            _ => {}
        }
    }
    (text, "")
}

/// JSON, or a bare word taken as a string. Text that starts like JSON must be JSON:
/// `{"a": 1` taken as a string would hide the typo.
fn json_value(text: &str) -> Result<Value, String> {
    match serde_json::from_str(text) {
        Ok(value) => Ok(value),
        Err(err)
            if text.starts_with([
                '"', '{', '[', '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9',
            ]) =>
        {
            Err(format!(
                "{text} is not JSON ({err}); write a string in quotes, e.g. \"{}\"",
                text.trim_matches('"')
            ))
        }
        Err(_) => Ok(Value::String(text.to_string())),
    }
}

fn header_text(rest: &str) -> Result<AssertionSpec, String> {
    let rest = rest.trim_start();
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    let (name, rest) = rest.split_at(end);
    let (op, value) = op_and_value(rest);
    let op = match op {
        "exists" => HeaderOp::Exists,
        "!exists" | "not_exists" => HeaderOp::NotExists,
        "==" | "equals" => HeaderOp::Equals,
        "~" | "matches" => HeaderOp::Matches,
        _ => {
            return Err(format!(
                "unknown header operator {}; use exists, !exists, == or ~, e.g. header:content-type ~ json",
                quoted(op)
            ))
        }
    };
    Ok(AssertionSpec::Header {
        name: name.to_string(),
        op,
        value: value.map(str::to_string).filter(|v| !v.is_empty()),
    })
}

fn time_text(rest: &str) -> Result<AssertionSpec, String> {
    let fix = "write e.g. time:total < 500ms or time:ttfb < 0.2s";
    let words: Vec<&str> = rest.split_whitespace().collect();
    let [phase, op, limit] = words[..] else {
        return Err(format!("expected a phase, < and a duration; {fix}"));
    };
    let phase = match phase {
        "total" => TimePhase::Total,
        "ttfb" => TimePhase::Ttfb,
        _ => {
            return Err(format!(
                "unknown phase {}; use total or ttfb; {fix}",
                quoted(phase)
            ))
        }
    };
    if op != "<" && op != "<=" {
        return Err(format!("{} is not <; {fix}", quoted(op)));
    }
    let number = |s: &str| s.parse::<f64>().ok().filter(|v| v.is_finite());
    let max_ms = if let Some(ms) = limit.strip_suffix("ms") {
        number(ms)
    } else if let Some(s) = limit.strip_suffix('s') {
        // To the microsecond, the precision of every measured phase: 0.1s is 100 ms,
        // not 100.00000000000001.
        number(s).map(|s| (s * 1e6).round() / 1e3)
    } else {
        number(limit)
    }
    .ok_or_else(|| format!("{} is not a duration; {fix}", quoted(limit)))?;
    Ok(AssertionSpec::ResponseTime { phase, max_ms })
}

fn cert_text(rest: &str) -> Result<AssertionSpec, String> {
    let fix = "write e.g. cert:expires > 14d";
    let words: Vec<&str> = rest.split_whitespace().collect();
    let ["expires", ">", days] = words[..] else {
        return Err(format!("expected expires > DAYS; {fix}"));
    };
    let min_days = days
        .strip_suffix('d')
        .unwrap_or(days)
        .parse::<u32>()
        .map_err(|_| format!("{} is not a number of days; {fix}", quoted(days)))?;
    Ok(AssertionSpec::CertExpiry { min_days })
}

// ---------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------

fn failed(message: impl Into<String>) -> Failed {
    Failed {
        kind: ErrorKind::AssertionFailed,
        message: message.into(),
    }
}

impl Assertion {
    /// `json` caches the parsed body for the assertions after this one.
    fn check(
        &self,
        response: &Response<'_>,
        json: &mut Option<Result<Value, String>>,
    ) -> Result<(), Failed> {
        match self {
            Assertion::Status(set) => check_status(set, response.status),
            Assertion::Body(check) => {
                let body = response.body.ok_or_else(|| not_read(self))?;
                check_body(check, body)
            }
            Assertion::Json { path, check } => {
                let body = response.body.ok_or_else(|| not_read(self))?;
                let parsed = json.get_or_insert_with(|| {
                    serde_json::from_slice::<Value>(body).map_err(|err| err.to_string())
                });
                match parsed {
                    Ok(value) => check_json(path, check, value),
                    Err(err) => Err(failed(format!(
                        "{path}: the response body is not JSON ({err})"
                    ))),
                }
            }
            Assertion::Header { name, check } => {
                let headers = response.headers.ok_or_else(|| {
                    failed(format!(
                        "header {name}: the response headers were not kept, so {self} cannot be checked"
                    ))
                })?;
                check_header(name, check, headers)
            }
            Assertion::ResponseTime { phase, max_ms } => {
                let seen = match phase {
                    TimePhase::Total => Some(response.total_ms),
                    TimePhase::Ttfb => response.ttfb_ms,
                };
                match seen {
                    None => Err(failed(format!("{} was not measured", phase.as_str()))),
                    Some(ms) if ms > *max_ms => Err(failed(format!(
                        "{} {} ms exceeds {max_ms} ms",
                        phase.as_str(),
                        over(ms, *max_ms)
                    ))),
                    Some(_) => Ok(()),
                }
            }
            Assertion::CertExpiry { min_days } => {
                check_cert(*min_days, response.cert_expires_at, response.now)
            }
        }
    }
}

fn not_read(assertion: &Assertion) -> Failed {
    failed(format!(
        "the response body was not read, so {assertion} cannot be checked"
    ))
}

fn check_status(set: &StatusSet, status: Option<u16>) -> Result<(), Failed> {
    let message = match status {
        Some(code) if set.contains(code) => return Ok(()),
        // Today's message of the monitor's expected set: dashboards group by it.
        Some(code) => format!("status {code} is not in the expected set {set}"),
        None => format!("no HTTP status to check against the expected set {set}"),
    };
    Err(Failed {
        kind: ErrorKind::StatusMismatch,
        message,
    })
}

fn check_body(check: &BodyCheck, body: &[u8]) -> Result<(), Failed> {
    match check {
        BodyCheck::Contains(text) if find(body, text.as_bytes()).is_none() => Err(Failed {
            kind: ErrorKind::BodyMismatch,
            message: format!(
                "response body ({} bytes) does not contain {}",
                body.len(),
                quoted(text)
            ),
        }),
        BodyCheck::NotContains(text) => match find(body, text.as_bytes()) {
            Some(at) => Err(failed(format!(
                "response body contains {} (at byte {at})",
                quoted(text)
            ))),
            None => Ok(()),
        },
        BodyCheck::Matches(pattern) if !pattern.0.is_match(body) => Err(failed(format!(
            "response body ({} bytes) does not match {}",
            body.len(),
            quoted(pattern.as_str())
        ))),
        _ => Ok(()),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn check_json(path: &JsonTarget, check: &JsonCheck, body: &Value) -> Result<(), Failed> {
    let nodes = path.nodes(body);
    let got = || {
        truncated(
            nodes
                .iter()
                .map(|n| compact(n))
                .collect::<Vec<_>>()
                .join(", "),
        )
    };
    let (holds, expected) = match check {
        JsonCheck::Exists if nodes.is_empty() => {
            return Err(failed(format!("{path}: expected to exist, found nothing")))
        }
        JsonCheck::Exists => return Ok(()),
        JsonCheck::NotExists if nodes.is_empty() => return Ok(()),
        JsonCheck::NotExists => {
            return Err(failed(format!(
                "{path}: expected not to exist, got {}",
                got()
            )))
        }
        JsonCheck::Contains(value) => (
            nodes.iter().any(|n| json_contains(n, value)),
            format!("to contain {}", shown(value)),
        ),
        JsonCheck::Compare(op, value) => {
            let holds = nodes.iter().any(|n| compare(*op, n, value) == Some(true));
            let shown_value = shown(value);
            let expected = match op {
                Comparison::Eq => shown_value,
                Comparison::Ne => format!("!= {shown_value}"),
                Comparison::Lt => format!("< {shown_value}"),
                Comparison::Gt => format!("> {shown_value}"),
                Comparison::Le => format!("<= {shown_value}"),
                Comparison::Ge => format!(">= {shown_value}"),
            };
            (holds, expected)
        }
    };
    if holds {
        return Ok(());
    }
    if nodes.is_empty() {
        return Err(failed(format!(
            "{path}: expected {expected}, found nothing"
        )));
    }
    // Say why a lone node could not be compared at all.
    let why = match (check, nodes.as_slice()) {
        (JsonCheck::Compare(op, value), [node]) if compare(*op, node, value).is_none() => {
            if value.is_number() {
                " (not a number)"
            } else {
                " (not a string)"
            }
        }
        _ => "",
    };
    Err(failed(format!(
        "{path}: expected {expected}, got {}{why}",
        got()
    )))
}

/// `None` when the two cannot be ordered (only `<`, `>`, `<=`, `>=` say so).
fn compare(op: Comparison, node: &Value, value: &Value) -> Option<bool> {
    let order = match op {
        Comparison::Eq => return Some(json_eq(node, value)),
        Comparison::Ne => return Some(!json_eq(node, value)),
        _ => match (node, value) {
            (Value::Number(a), Value::Number(b)) => number_order(a, b)?,
            (Value::String(a), Value::String(b)) => a.cmp(b),
            _ => return None,
        },
    };
    Some(match op {
        Comparison::Lt => order.is_lt(),
        Comparison::Gt => order.is_gt(),
        Comparison::Le => order.is_le(),
        _ => order.is_ge(),
    })
}

/// Integers exactly (an id near 2^63 must not round), anything else as f64.
fn number_order(a: &serde_json::Number, b: &serde_json::Number) -> Option<std::cmp::Ordering> {
    let exact = |n: &serde_json::Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    match (exact(a), exact(b)) {
        (Some(a), Some(b)) => Some(a.cmp(&b)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

/// JSON equality with numbers by value: `3 == 3.0`.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => number_order(x, y).is_some_and(|o| o.is_eq()),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

fn json_contains(node: &Value, value: &Value) -> bool {
    match (node, value) {
        (Value::String(s), Value::String(sub)) => s.contains(sub.as_str()),
        (Value::Array(items), _) => items.iter().any(|item| json_eq(item, value)),
        _ => false,
    }
}

fn check_header(name: &HeaderName, check: &HeaderCheck, headers: &HeaderMap) -> Result<(), Failed> {
    let values: Vec<&[u8]> = headers.get_all(name).iter().map(|v| v.as_bytes()).collect();
    // Messages are stored in heartbeats that readers see: a cookie or a challenge is
    // a credential (capture_headers refuses the same names).
    let secret = CREDENTIAL_HEADERS.contains(&name.as_str());
    let got = || {
        truncated(
            values
                .iter()
                .map(|v| match secret {
                    true => "<redacted>".to_string(),
                    false => quoted(&String::from_utf8_lossy(v)),
                })
                .collect::<Vec<_>>()
                .join(", "),
        )
    };
    let expected = match check {
        HeaderCheck::Exists if values.is_empty() => {
            return Err(failed(format!("header {name}: missing")))
        }
        HeaderCheck::NotExists if !values.is_empty() => {
            return Err(failed(format!(
                "header {name}: expected to be absent, got {}",
                got()
            )))
        }
        HeaderCheck::Exists | HeaderCheck::NotExists => return Ok(()),
        HeaderCheck::Equals(want) if values.contains(&want.as_bytes()) => return Ok(()),
        HeaderCheck::Matches(p) if values.iter().any(|v| p.0.is_match(v)) => return Ok(()),
        HeaderCheck::Equals(want) => quoted(want),
        HeaderCheck::Matches(p) => format!("to match {}", quoted(p.as_str())),
    };
    if values.is_empty() {
        return Err(failed(format!("header {name}: missing")));
    }
    Err(failed(format!(
        "header {name}: expected {expected}, got {}",
        got()
    )))
}

fn check_cert(
    min_days: u32,
    expires: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(), Failed> {
    let Some(expires) = expires else {
        return Err(failed("no certificate to check: the probe did not use TLS"));
    };
    let left = expires - now;
    if left > chrono::Duration::days(i64::from(min_days)) {
        return Ok(());
    }
    let date = expires.format("%Y-%m-%d");
    Err(failed(if left < chrono::Duration::zero() {
        format!("certificate expired {} days ago ({date})", -left.num_days())
    } else {
        format!(
            "certificate expires in {} days ({date}), less than {min_days}",
            left.num_days()
        )
    }))
}

/// `812.4`, or more decimals when one would hide that `seen` exceeds `max`.
fn over(seen: f64, max: f64) -> String {
    let short = format!("{seen:.1}");
    if short.parse::<f64>().is_ok_and(|s| s > max) {
        short
    } else {
        format!("{seen:.3}")
    }
}

// ---------------------------------------------------------------------------------
// Showing values
// ---------------------------------------------------------------------------------

fn compact(value: &Value) -> String {
    serde_json::to_string(value).expect("a JSON value prints")
}

/// A JSON value as in a message: compact, cut to about 100 characters.
fn shown(value: &Value) -> String {
    truncated(compact(value))
}

/// A text in JSON quotes (escaping newlines and quotes), cut.
fn quoted(text: &str) -> String {
    truncated(compact(&Value::String(text.to_string())))
}

fn truncated(text: String) -> String {
    match text.char_indices().nth(SHOWN_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(text: &str) -> Assertion {
        let assertions = Assertions::from_texts(&[text]).unwrap_or_else(|e| panic!("{e}"));
        assertions.0.into_vec().remove(0)
    }

    fn text_error(text: &str) -> String {
        Assertions::from_texts(&[text]).unwrap_err().to_string()
    }

    fn json_error(value: Value) -> String {
        Assertions::from_json(&json!([value]))
            .unwrap_err()
            .to_string()
    }

    /// Every type and operator: text form, stored form, and the text printed back.
    #[test]
    fn text_and_json_forms_agree_and_round_trip() {
        let table: &[(&str, Value, &str)] = &[
            (
                "status:200-299, 301",
                json!({"type": "status", "codes": "200-299,301"}),
                "status:200-299,301",
            ),
            (
                "status:2xx",
                json!({"type": "status", "codes": "200-299"}),
                "status:200-299",
            ),
            (
                "body:contains ok",
                json!({"type": "body", "op": "contains", "value": "ok"}),
                "body:contains ok",
            ),
            (
                "body:contains  two words ",
                json!({"type": "body", "op": "contains", "value": " two words "}),
                "body:contains  two words ",
            ),
            (
                "body:!contains error",
                json!({"type": "body", "op": "not_contains", "value": "error"}),
                "body:!contains error",
            ),
            (
                "body:not_contains error",
                json!({"type": "body", "op": "not_contains", "value": "error"}),
                "body:!contains error",
            ),
            (
                "body:~ ^\\{.*\\}$",
                json!({"type": "body", "op": "matches", "value": "^\\{.*\\}$"}),
                "body:~ ^\\{.*\\}$",
            ),
            (
                "json:$.status == \"ok\"",
                json!({"type": "json", "path": "$.status", "op": "==", "value": "ok"}),
                "json:$.status == \"ok\"",
            ),
            (
                "json:$.status == ok",
                json!({"type": "json", "path": "$.status", "op": "==", "value": "ok"}),
                "json:$.status == \"ok\"",
            ),
            (
                "json:$.status == all good",
                json!({"type": "json", "path": "$.status", "op": "==", "value": "all good"}),
                "json:$.status == \"all good\"",
            ),
            (
                "json:$.v == null",
                json!({"type": "json", "path": "$.v", "op": "==", "value": null}),
                "json:$.v == null",
            ),
            (
                "json:$.up != false",
                json!({"type": "json", "path": "$.up", "op": "!=", "value": false}),
                "json:$.up != false",
            ),
            (
                "json:$.count > 3",
                json!({"type": "json", "path": "$.count", "op": ">", "value": 3}),
                "json:$.count > 3",
            ),
            (
                "json:$.count >= 3",
                json!({"type": "json", "path": "$.count", "op": ">=", "value": 3}),
                "json:$.count >= 3",
            ),
            (
                "json:$.load < 0.5",
                json!({"type": "json", "path": "$.load", "op": "<", "value": 0.5}),
                "json:$.load < 0.5",
            ),
            (
                "json:$.load <= -1",
                json!({"type": "json", "path": "$.load", "op": "<=", "value": -1}),
                "json:$.load <= -1",
            ),
            (
                "json:/items/0/id exists",
                json!({"type": "json", "path": "/items/0/id", "op": "exists"}),
                "json:/items/0/id exists",
            ),
            (
                "json:$.debug !exists",
                json!({"type": "json", "path": "$.debug", "op": "not_exists"}),
                "json:$.debug !exists",
            ),
            (
                "json:$.debug not_exists",
                json!({"type": "json", "path": "$.debug", "op": "not_exists"}),
                "json:$.debug !exists",
            ),
            (
                "json:$.tags contains \"a\"",
                json!({"type": "json", "path": "$.tags", "op": "contains", "value": "a"}),
                "json:$.tags contains \"a\"",
            ),
            (
                "json:$.o == {\"a\": [1, 2]}",
                json!({"type": "json", "path": "$.o", "op": "==", "value": {"a": [1, 2]}}),
                "json:$.o == {\"a\":[1,2]}",
            ),
            // Blanks inside brackets and between segments belong to the path.
            (
                "json:$.items[?@.state == 'down'] !exists",
                json!({"type": "json", "path": "$.items[?@.state == 'down']", "op": "not_exists"}),
                "json:$.items[?@.state == 'down'] !exists",
            ),
            (
                "json:$['a b'] .c == 1",
                json!({"type": "json", "path": "$['a b'] .c", "op": "==", "value": 1}),
                "json:$['a b'] .c == 1",
            ),
            (
                "header:Content-Type ~ json",
                json!({"type": "header", "name": "content-type", "op": "matches", "value": "json"}),
                "header:content-type ~ json",
            ),
            (
                "header:x-cache == HIT",
                json!({"type": "header", "name": "x-cache", "op": "equals", "value": "HIT"}),
                "header:x-cache == HIT",
            ),
            (
                "header:etag exists",
                json!({"type": "header", "name": "etag", "op": "exists"}),
                "header:etag exists",
            ),
            (
                "header:set-cookie !exists",
                json!({"type": "header", "name": "set-cookie", "op": "not_exists"}),
                "header:set-cookie !exists",
            ),
            (
                "time:total < 500",
                json!({"type": "response_time", "phase": "total", "max_ms": 500.0}),
                "time:total < 500",
            ),
            (
                "time:total < 500ms",
                json!({"type": "response_time", "phase": "total", "max_ms": 500.0}),
                "time:total < 500",
            ),
            (
                "time:ttfb <= 0.1s",
                json!({"type": "response_time", "phase": "ttfb", "max_ms": 100.0}),
                "time:ttfb < 100",
            ),
            (
                "time:total < 1s",
                json!({"type": "response_time", "phase": "total", "max_ms": 1000.0}),
                "time:total < 1000",
            ),
            (
                "time:ttfb < 12.5",
                json!({"type": "response_time", "phase": "ttfb", "max_ms": 12.5}),
                "time:ttfb < 12.5",
            ),
            (
                "cert:expires > 14d",
                json!({"type": "cert_expiry", "min_days": 14}),
                "cert:expires > 14d",
            ),
            (
                "cert:expires > 0",
                json!({"type": "cert_expiry", "min_days": 0}),
                "cert:expires > 0d",
            ),
        ];
        for (text, stored, printed) in table {
            let from_text = one(text);
            assert_eq!(
                Assertions::from_texts(&[text]).unwrap().to_json(),
                json!([stored]),
                "{text}"
            );
            let from_json = Assertions::from_json(&json!([stored])).unwrap();
            assert_eq!(from_json.iter().next(), Some(&from_text), "{text}");
            assert_eq!(from_text.to_string(), *printed, "{text}");
            // Display -> parse and to_json -> from_json give the same assertion back.
            assert_eq!(one(&from_text.to_string()), from_text, "{text}");
            let all = Assertions::from_texts(&[text]).unwrap();
            assert_eq!(
                Assertions::from_json(&all.to_json()).unwrap(),
                all,
                "{text}"
            );
        }
    }

    #[test]
    fn invalid_texts_name_the_text_and_the_fix() {
        let table: &[(&str, &str)] = &[
            ("jsn:$.a == 1", "assertion 0 (jsn:$.a == 1): unknown kind of assertion; start with status:, body:, json:, header:, time: or cert:"),
            ("200", "assertion 0 (200): unknown kind of assertion; start with status:, body:, json:, header:, time: or cert:"),
            ("status:", "assertion 0 (status:): the status codes are empty; write e.g. 200-299,301"),
            ("status:200-2999", "assertion 0 (status:200-2999): \"2999\" is not a status code between 100 and 599; write e.g. \"200-299,301\""),
            ("body:has ok", "assertion 0 (body:has ok): unknown body operator \"has\"; write body:contains TEXT, body:!contains TEXT or body:~ REGEX"),
            ("body:contains", "assertion 0 (body:contains): the body value is empty; write e.g. body:contains ok"),
            ("body:~ (abc", "assertion 0 (body:~ (abc): \"(abc\" is not a regex (unclosed group); escape special characters with \\, e.g. \\("),
            ("json:", "assertion 0 (json:): the path is missing; write e.g. json:$.status == \"ok\""),
            ("json:$.status = ok", "assertion 0 (json:$.status = ok): unknown json operator \"=\"; use ==, !=, <, >, <=, >=, contains, exists or !exists, e.g. json:$.status == \"ok\""),
            ("json:$.status[ == \"ok\"", "assertion 0 (json:$.status[ == \"ok\"): \"$.status[ == \\\"ok\\\"\" is not a JSONPath (at position 8, parser error); write e.g. $.status"),
            ("json:status == ok", "assertion 0 (json:status == ok): \"status\" is neither a JSONPath (starting with $) nor a JSON Pointer (starting with /); write e.g. $.status or /status"),
            ("json:/a~2 exists", "assertion 0 (json:/a~2 exists): the JSON Pointer \"/a~2\" has a ~ not followed by 0 or 1; write ~0 for ~ and ~1 for /"),
            ("json:$.a ==", "assertion 0 (json:$.a ==): == needs a value; write e.g. json:$.a == 3"),
            ("json:$.a contains", "assertion 0 (json:$.a contains): contains needs a value; write e.g. json:$.a contains \"a\""),
            ("json:$.a exists 1", "assertion 0 (json:$.a exists 1): exists takes no value (got 1); remove it"),
            ("json:$.a > true", "assertion 0 (json:$.a > true): > compares numbers or strings, not true; write e.g. json:$.a > 3"),
            ("json:$.v == 1.2.3", "assertion 0 (json:$.v == 1.2.3): 1.2.3 is not JSON (trailing characters at line 1 column 4); write a string in quotes, e.g. \"1.2.3\""),
            ("json:$.o == {\"a\": 1", "assertion 0 (json:$.o == {\"a\": 1): {\"a\": 1 is not JSON (EOF while parsing an object at line 1 column 7); write a string in quotes, e.g. \"{\"a\": 1\""),
            ("header:x-cache is HIT", "assertion 0 (header:x-cache is HIT): unknown header operator \"is\"; use exists, !exists, == or ~, e.g. header:content-type ~ json"),
            ("header:bad(name) exists", "assertion 0 (header:bad(name) exists): \"bad(name)\" is not a header name (letters, digits and !#$%&'*+-.^_`|~ only); write e.g. content-type"),
            ("header:x-cache ==", "assertion 0 (header:x-cache ==): == needs a value; write e.g. header:x-cache == text/html"),
            ("header:x-cache ~", "assertion 0 (header:x-cache ~): ~ needs a value; write e.g. header:x-cache ~ text/html"),
            ("header:etag exists W/", "assertion 0 (header:etag exists W/): exists takes no value (got \"W/\"); remove it"),
            ("time:total 500", "assertion 0 (time:total 500): expected a phase, < and a duration; write e.g. time:total < 500ms or time:ttfb < 0.2s"),
            ("time:dns < 5", "assertion 0 (time:dns < 5): unknown phase \"dns\"; use total or ttfb; write e.g. time:total < 500ms or time:ttfb < 0.2s"),
            ("time:total > 5", "assertion 0 (time:total > 5): \">\" is not <; write e.g. time:total < 500ms or time:ttfb < 0.2s"),
            ("time:total < 5m", "assertion 0 (time:total < 5m): \"5m\" is not a duration; write e.g. time:total < 500ms or time:ttfb < 0.2s"),
            ("time:total < -5", "assertion 0 (time:total < -5): max_ms -5 is not a number of milliseconds >= 0; write e.g. 500"),
            ("time:total < inf", "assertion 0 (time:total < inf): \"inf\" is not a duration; write e.g. time:total < 500ms or time:ttfb < 0.2s"),
            ("cert:expires 14d", "assertion 0 (cert:expires 14d): expected expires > DAYS; write e.g. cert:expires > 14d"),
            ("cert:expires > two", "assertion 0 (cert:expires > two): \"two\" is not a number of days; write e.g. cert:expires > 14d"),
        ];
        for (text, message) in table {
            assert_eq!(text_error(text), *message, "{text}");
        }
        // The index is the position in the list.
        let err = Assertions::from_texts(&["status:200", "body:contains ok", "cert:expires > x"])
            .unwrap_err();
        assert_eq!(
            err,
            InvalidAssertion::Invalid {
                index: 2,
                text: "cert:expires > x".into(),
                problem: "\"x\" is not a number of days; write e.g. cert:expires > 14d".into(),
            }
        );
    }

    #[test]
    fn invalid_json_names_the_assertion_and_the_fix() {
        let table: &[(Value, &str)] = &[
            (json!({"type": "jsn"}), "assertion 0 ({\"type\":\"jsn\"}): each assertion is an object with a \"type\" of status, body, json, header, response_time or cert_expiry"),
            (json!("status:200"), "assertion 0 (\"status:200\"): each assertion is an object with a \"type\" of status, body, json, header, response_time or cert_expiry"),
            (json!({"type": "status", "code": "200"}), "assertion 0 ({\"code\":\"200\",\"type\":\"status\"}): unknown field `code`, expected `codes`; write e.g. {\"type\": \"status\", \"codes\": \"200-299\"}"),
            (json!({"type": "body", "op": "includes", "value": "x"}), "assertion 0 ({\"op\":\"includes\",\"type\":\"body\",\"value\":\"x\"}): unknown variant `includes`, expected one of `contains`, `not_contains`, `matches`; write e.g. {\"type\": \"body\", \"op\": \"contains\", \"value\": \"ok\"}"),
            (json!({"type": "cert_expiry", "min_days": -1}), "assertion 0 ({\"min_days\":-1,\"type\":\"cert_expiry\"}): invalid value: integer `-1`, expected u32; write e.g. {\"type\": \"cert_expiry\", \"min_days\": 14}"),
            (json!({"type": "response_time", "phase": "total"}), "assertion 0 ({\"phase\":\"total\",\"type\":\"response_time\"}): missing field `max_ms`; write e.g. {\"type\": \"response_time\", \"phase\": \"total\", \"max_ms\": 500}"),
            // Validation failures show the text form.
            (json!({"type": "json", "path": "$.status[", "op": "==", "value": "ok"}), "assertion 0 (json:$.status[ == \"ok\"): \"$.status[\" is not a JSONPath (at position 8, parser error); write e.g. $.status"),
            (json!({"type": "json", "path": "$.a", "op": "exists", "value": null}), "assertion 0 (json:$.a exists null): exists takes no value (got null); remove it"),
            (json!({"type": "json", "path": "$.a", "op": "=="}), "assertion 0 (json:$.a ==): == needs a value; write e.g. json:$.a == 3"),
            (json!({"type": "json", "path": "/a b", "op": "exists"}), "assertion 0 (json:/a b exists): the JSON Pointer \"/a b\" has a space; write it as a JSONPath, e.g. $['a b']"),
            (json!({"type": "header", "name": "etag", "op": "not_exists", "value": "x"}), "assertion 0 (header:etag !exists x): !exists takes no value (got \"x\"); remove it"),
            (json!({"type": "header", "name": "x", "op": "equals", "value": ""}), "assertion 0 (header:x == ): the header value is empty; to check that the header is there, use exists"),
            (json!({"type": "header", "name": "x", "op": "matches", "value": ""}), "assertion 0 (header:x ~ ): the regex is empty and matches anything; to check that the header is there, use exists"),
            (json!({"type": "header", "name": "", "op": "exists"}), "assertion 0 (header: exists): \"\" is not a header name (letters, digits and !#$%&'*+-.^_`|~ only); write e.g. content-type"),
            (json!({"type": "response_time", "phase": "ttfb", "max_ms": -1}), "assertion 0 (time:ttfb < -1): max_ms -1 is not a number of milliseconds >= 0; write e.g. 500"),
            (json!({"type": "body", "op": "contains", "value": ""}), "assertion 0 (body:contains ): the body value is empty; write e.g. body:contains ok"),
        ];
        for (value, message) in table {
            assert_eq!(json_error(value.clone()), *message, "{value}");
        }
        assert_eq!(
            Assertions::from_json(&json!({"type": "status"})).unwrap_err().to_string(),
            "assertions must be a JSON array (got {\"type\":\"status\"}); write e.g. [{\"type\": \"status\", \"codes\": \"200-299\"}]"
        );
        let err = Assertions::from_json(&json!([
            {"type": "status", "codes": "200"},
            {"type": "status", "codes": "200"},
            {"type": "json", "path": "$.status[", "op": "==", "value": "ok"},
        ]))
        .unwrap_err();
        assert!(
            matches!(err, InvalidAssertion::Invalid { index: 2, .. }),
            "{err:?}"
        );
        assert_eq!(
            Assertions::from_json(&json!([])).unwrap(),
            Assertions::default()
        );
    }

    #[test]
    fn regexes_are_size_limited() {
        // About 2 MiB compiled with Unicode classes: over the 1 MiB limit.
        let err = text_error(r"body:~ \w{500}");
        assert_eq!(
            err,
            "assertion 0 (body:~ \\w{500}): the regex \"\\\\w{500}\" is too large once compiled (over 1 MiB); write a simpler one"
        );
        one(r"body:~ \w{20}");
    }

    #[test]
    fn messages_are_truncated() {
        let long = "x".repeat(300);
        let err = text_error(&format!("body:~ ({long}"));
        assert_eq!(
            err.chars().count(),
            "assertion 0 (): ".chars().count()
                + 2 * 101
                + "is not a regex (unclosed group); escape special characters with \\, e.g. \\("
                    .chars()
                    .count()
                + 1,
            "{err}"
        );
        assert!(
            err.starts_with(&format!(
                "assertion 0 (body:~ ({}…): \"({}… is not a regex",
                &long[..92],
                &long[..98]
            )),
            "{err}"
        );
    }

    fn headers(lines: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in lines {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    /// A 200 with a JSON body, two Set-Cookie lines, 120 ms in total, 80 ms to first
    /// byte, and a certificate 20 days from now.
    fn checked(text: &str, body: &[u8], head: &HeaderMap) -> Result<(), (ErrorKind, String)> {
        let response = Response {
            status: Some(200),
            headers: Some(head),
            body: Some(body),
            total_ms: 120.0,
            ttfb_ms: Some(80.0),
            cert_expires_at: Some(at("2026-12-21T12:00:00Z")),
            now: at("2026-12-01T12:00:00Z"),
        };
        Assertions::from_texts(&[text])
            .unwrap()
            .check(&response)
            .map_err(|f| (f.kind, f.message))
    }

    #[test]
    fn evaluation_holds_or_says_what_was_seen() {
        let body = br#"{"status": "degraded", "count": 1, "ratio": 3.0, "big": 9007199254740993,
            "tags": ["a", "b"], "name": "vantage prober", "items": [{"id": 7, "state": "up"},
            {"id": 8, "state": "down"}], "none": null, "o": {"k": [1, 2]}, "a/b": {"~": true}}"#;
        let head = headers(&[
            ("content-type", "text/html; charset=utf-8"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("x-cache", "MISS"),
        ]);
        let ok: &[&str] = &[
            "status:200-299",
            "status:2xx",
            "body:contains \"count\": 1",
            "body:!contains error",
            "body:~ \"state\":\\s*\"down\"",
            "json:$.status == degraded",
            "json:$.status != \"ok\"",
            "json:$.count == 1.0",
            "json:$.ratio == 3",
            "json:$.count < 2",
            "json:$.count <= 1",
            "json:$.ratio > 2.5",
            "json:$.ratio >= 3",
            "json:$.big > 9007199254740992",
            "json:$.status > \"a\"",
            "json:$.tags contains \"b\"",
            "json:$.name contains prober",
            "json:$.o == {\"k\": [1.0, 2]}",
            "json:$.none == null",
            "json:$.none exists",
            "json:$.missing !exists",
            "json:/items/1/state == down",
            "json:/a~1b/~0 == true",
            // Any node may satisfy.
            "json:$.items[*].state == \"down\"",
            "json:$.items[*].id > 7",
            "json:$.items[?@.state == 'down'].id == 8",
            "json:$..id exists",
            "header:Content-Type ~ ^text/html",
            "header:content-type == text/html; charset=utf-8",
            "header:set-cookie == b=2",
            "header:set-cookie ~ ^a=",
            "header:x-cache exists",
            "header:etag !exists",
            "time:total < 120",
            "time:ttfb < 80.5",
            "cert:expires > 19d",
        ];
        for text in ok {
            assert_eq!(checked(text, body, &head), Ok(()), "{text}");
        }
        let failed = ErrorKind::AssertionFailed;
        let table: &[(&str, ErrorKind, &str)] = &[
            ("status:201", ErrorKind::StatusMismatch, "status 200 is not in the expected set 201"),
            ("body:contains healthy", ErrorKind::BodyMismatch, "response body (262 bytes) does not contain \"healthy\""),
            ("body:!contains degraded", failed, "response body contains \"degraded\" (at byte 12)"),
            ("body:~ ^OK$", failed, "response body (262 bytes) does not match \"^OK$\""),
            ("json:$.status == \"ok\"", failed, "$.status: expected \"ok\", got \"degraded\""),
            ("json:$.status != degraded", failed, "$.status: expected != \"degraded\", got \"degraded\""),
            ("json:$.count > 3", failed, "$.count: expected > 3, got 1"),
            ("json:$.count >= 3", failed, "$.count: expected >= 3, got 1"),
            ("json:$.ratio < 3", failed, "$.ratio: expected < 3, got 3.0"),
            ("json:$.ratio <= 2", failed, "$.ratio: expected <= 2, got 3.0"),
            ("json:$.big < 9007199254740992", failed, "$.big: expected < 9007199254740992, got 9007199254740993"),
            ("json:$.status > 3", failed, "$.status: expected > 3, got \"degraded\" (not a number)"),
            ("json:$.count < \"b\"", failed, "$.count: expected < \"b\", got 1 (not a string)"),
            ("json:$.missing exists", failed, "$.missing: expected to exist, found nothing"),
            ("json:$.missing == 1", failed, "$.missing: expected 1, found nothing"),
            ("json:$.none !exists", failed, "$.none: expected not to exist, got null"),
            ("json:$.tags contains \"c\"", failed, "$.tags: expected to contain \"c\", got [\"a\",\"b\"]"),
            ("json:$.count contains 1", failed, "$.count: expected to contain 1, got 1"),
            ("json:/items/0/state == down", failed, "/items/0/state: expected \"down\", got \"up\""),
            ("json:/items/5 exists", failed, "/items/5: expected to exist, found nothing"),
            ("json:$.items[*].state == \"gone\"", failed, "$.items[*].state: expected \"gone\", got \"up\", \"down\""),
            ("json:$.items[*] !exists", failed, "$.items[*]: expected not to exist, got {\"id\":7,\"state\":\"up\"}, {\"id\":8,\"state\":\"down\"}"),
            ("header:content-type ~ json", failed, "header content-type: expected to match \"json\", got \"text/html; charset=utf-8\""),
            ("header:x-cache == HIT", failed, "header x-cache: expected \"HIT\", got \"MISS\""),
            ("header:set-cookie == c=3", failed, "header set-cookie: expected \"c=3\", got <redacted>, <redacted>"),
            ("header:x-cache !exists", failed, "header x-cache: expected to be absent, got \"MISS\""),
            ("header:set-cookie !exists", failed, "header set-cookie: expected to be absent, got <redacted>, <redacted>"),
            ("header:etag exists", failed, "header etag: missing"),
            ("header:etag == x", failed, "header etag: missing"),
            ("header:etag ~ x", failed, "header etag: missing"),
            ("time:total < 100", failed, "total 120.0 ms exceeds 100 ms"),
            ("time:ttfb < 79.99", failed, "ttfb 80.0 ms exceeds 79.99 ms"),
            ("cert:expires > 20d", failed, "certificate expires in 20 days (2026-12-21), less than 20"),
            ("cert:expires > 30d", failed, "certificate expires in 20 days (2026-12-21), less than 30"),
        ];
        for (text, kind, message) in table {
            assert_eq!(
                checked(text, body, &head),
                Err((*kind, message.to_string())),
                "{text}"
            );
        }
    }

    #[test]
    fn evaluation_of_what_a_probe_did_not_get() {
        let head = HeaderMap::new();
        let long = format!("{{\"s\": \"{}\"}}", "y".repeat(200));
        let cases: &[(&str, &[u8], &str)] = &[
            ("json:$.status == ok", b"<html>", "$.status: the response body is not JSON (expected value at line 1 column 1)"),
            ("json:$.status == ok", b"", "$.status: the response body is not JSON (EOF while parsing a value at line 1 column 0)"),
            ("json:$.s == \"x\"", long.as_bytes(), &format!("$.s: expected \"x\", got \"{}…", "y".repeat(99))),
            ("body:!contains \u{fffd}", b"\xff\xfe", ""),
        ];
        for (text, body, message) in cases {
            let got = checked(text, body, &head);
            if message.is_empty() {
                assert_eq!(got, Ok(()), "{text}");
            } else {
                assert_eq!(
                    got,
                    Err((ErrorKind::AssertionFailed, message.to_string())),
                    "{text}"
                );
            }
        }
        // Bodies that are not UTF-8 are searched as bytes.
        assert_eq!(checked("body:~ ^\\xff?ok", b"ok", &head), Ok(()));

        let bare = Response {
            status: None,
            headers: None,
            body: None,
            total_ms: 3.0,
            ttfb_ms: None,
            cert_expires_at: None,
            now: at("2026-12-01T12:00:00Z"),
        };
        let check = |text: &str| {
            Assertions::from_texts(&[text])
                .unwrap()
                .check(&bare)
                .map_err(|f| (f.kind, f.message))
        };
        let failed = ErrorKind::AssertionFailed;
        assert_eq!(
            check("status:200"),
            Err((
                ErrorKind::StatusMismatch,
                "no HTTP status to check against the expected set 200".into()
            ))
        );
        assert_eq!(
            check("body:contains ok"),
            Err((
                failed,
                "the response body was not read, so body:contains ok cannot be checked".into()
            ))
        );
        assert_eq!(
            check("json:$.a exists"),
            Err((
                failed,
                "the response body was not read, so json:$.a exists cannot be checked".into()
            ))
        );
        assert_eq!(check("header:etag exists"), Err((failed, "header etag: the response headers were not kept, so header:etag exists cannot be checked".into())));
        assert_eq!(
            check("time:ttfb < 5"),
            Err((failed, "ttfb was not measured".into()))
        );
        assert_eq!(check("time:total < 5"), Ok(()));
        assert_eq!(
            check("cert:expires > 1d"),
            Err((
                failed,
                "no certificate to check: the probe did not use TLS".into()
            ))
        );
        // One decimal would read "100.0 ms exceeds 100 ms".
        let barely = Response {
            total_ms: 100.04,
            ..bare.clone()
        };
        let err = Assertions::from_texts(&["time:total < 100"])
            .unwrap()
            .check(&barely)
            .unwrap_err();
        assert_eq!(err.message, "total 100.040 ms exceeds 100 ms");
        let expired = Response {
            cert_expires_at: Some(at("2026-11-28T00:00:00Z")),
            ..bare
        };
        let err = Assertions::from_texts(&["cert:expires > 0d"])
            .unwrap()
            .check(&expired)
            .unwrap_err();
        assert_eq!(err.message, "certificate expired 3 days ago (2026-11-28)");
    }

    #[test]
    fn the_first_failure_in_order_is_reported() {
        let assertions = Assertions::from_texts(&[
            "status:200",
            "time:total < 100",
            "json:$.a == 1",
            "json:$.b == 2",
        ])
        .unwrap();
        let head = HeaderMap::new();
        let response = Response {
            status: Some(200),
            headers: Some(&head),
            body: Some(br#"{"a": 1, "b": 3}"#),
            total_ms: 50.0,
            ttfb_ms: None,
            cert_expires_at: None,
            now: at("2026-12-01T12:00:00Z"),
        };
        assert_eq!(
            assertions.check(&response),
            Err(Failed {
                kind: ErrorKind::AssertionFailed,
                message: "$.b: expected 2, got 3".into()
            })
        );
        assert_eq!(Assertions::default().check(&response), Ok(()));
    }

    #[test]
    fn what_the_probe_must_keep() {
        let of = |texts: &[&str]| {
            let a = Assertions::from_texts(texts).unwrap();
            (
                a.needs_body(),
                a.needs_headers(),
                a.has_status(),
                a.is_empty(),
            )
        };
        assert_eq!(of(&[]), (false, false, false, true));
        assert_eq!(of(&["status:200"]), (false, false, true, false));
        assert_eq!(of(&["body:contains x"]), (true, false, false, false));
        assert_eq!(of(&["json:$.a exists"]), (true, false, false, false));
        assert_eq!(
            of(&["header:etag exists", "time:total < 5"]),
            (false, true, false, false)
        );
        assert_eq!(of(&["cert:expires > 1d"]), (false, false, false, false));
        let built = Assertions::from(vec![Assertion::Body(BodyCheck::Contains("ok".into()))]);
        assert_eq!(
            built,
            Assertions::from_texts(&["body:contains ok"]).unwrap()
        );
        assert_eq!(built.iter().count(), 1);
    }

    #[test]
    fn kinds_without_http_reject_http_assertions() {
        let all =
            Assertions::from_texts(&["time:total < 5", "cert:expires > 1d", "header:etag exists"])
                .unwrap();
        assert_eq!(all.check_applicable("http"), Ok(()));
        assert_eq!(
            all.check_applicable("tls").unwrap_err().to_string(),
            "assertion 2 (header:etag exists): a header assertion needs an http monitor; this one is tls"
        );
        assert_eq!(
            all.check_applicable("tcp").unwrap_err().to_string(),
            "assertion 1 (cert:expires > 1d): a cert assertion needs an http or tls monitor; this one is tcp"
        );
        let table = [
            (
                "status:200",
                "a status assertion needs an http monitor; this one is dns",
            ),
            (
                "body:contains x",
                "a body assertion needs an http monitor; this one is dns",
            ),
            (
                "json:$.a exists",
                "a json assertion needs an http monitor; this one is dns",
            ),
            (
                "time:ttfb < 5",
                "a ttfb assertion needs an http monitor; this one is dns",
            ),
        ];
        for (text, problem) in table {
            let err = Assertions::from_texts(&[text])
                .unwrap()
                .check_applicable("dns")
                .unwrap_err();
            assert_eq!(
                err,
                InvalidAssertion::NotApplicable {
                    index: 0,
                    text: text.into(),
                    problem: problem.into()
                }
            );
        }
        assert_eq!(
            Assertions::from_texts(&["time:total < 5"])
                .unwrap()
                .check_applicable("dns"),
            Ok(())
        );
    }

    #[test]
    fn the_json_schema_describes_the_stored_form() {
        let schema = serde_json::to_value(schemars::schema_for!(AssertionSpec)).unwrap();
        let text = schema.to_string();
        for word in [
            "\"status\"",
            "\"response_time\"",
            "\"cert_expiry\"",
            "\"not_exists\"",
            "\"==\"",
            "\"max_ms\"",
            "\"min_days\"",
        ] {
            assert!(text.contains(word), "{word} missing from {text}");
        }
        // `value` is optional for json and header.
        let json = schema["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["properties"]["type"]["const"] == "json")
            .unwrap();
        assert_eq!(json["required"], json!(["type", "path", "op"]));
    }
}
