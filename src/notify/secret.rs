//! Channel secrets: a webhook's signing secret, a Slack URL, a bot token, a routing
//! key, an SMTP password. Each is written in the channel's config as the value itself,
//! `env:NAME` or `file:/path`, and resolved when a message is about to be sent.
//!
//! A resolved value lives in a [`Secret`], whose `Debug` prints `<redacted>`; every
//! text that leaves a delivery (the error stored with an attempt, a log line) first goes
//! through [`Redactor::scrub`], which replaces the values of the channel's secrets. An
//! error about a secret names where it was to come from, never what it holds.

use std::fmt;

/// A resolved secret value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error(
        "the environment variable {0} named by \"env:{0}\" is not set in the delivering process"
    )]
    MissingEnv(String),
    #[error("cannot read the file {path} named by \"file:{path}\": {reason}")]
    Unreadable { path: String, reason: String },
    #[error("is empty")]
    Empty,
}

/// Resolves `env:NAME`, `file:/path`, or returns the text itself.
pub fn resolve(reference: &str) -> Result<Secret, SecretError> {
    let value = if let Some(name) = reference.strip_prefix("env:") {
        std::env::var(name).map_err(|_| SecretError::MissingEnv(name.to_string()))?
    } else if let Some(path) = reference.strip_prefix("file:") {
        let text = std::fs::read_to_string(path).map_err(|err| SecretError::Unreadable {
            path: path.to_string(),
            reason: err.kind().to_string(),
        })?;
        // Editors and `echo` end files with a newline; no secret does.
        text.trim_end_matches(['\n', '\r']).to_string()
    } else {
        reference.to_string()
    };
    if value.is_empty() {
        return Err(SecretError::Empty);
    }
    Ok(Secret(value))
}

/// Removes known secret values from texts about to be stored or logged.
#[derive(Default, Clone)]
pub struct Redactor {
    values: Vec<String>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} secrets)", self.values.len())
    }
}

/// Shorter values are not scrubbed: replacing every "1" in a text would only garble it,
/// and no real credential is that short.
const MIN_SCRUBBED_LEN: usize = 4;

impl Redactor {
    pub fn add(&mut self, secret: &Secret) {
        self.add_text(secret.expose());
    }

    /// Also scrubs a derived form of a secret (e.g. its percent-encoded spelling).
    pub fn add_text(&mut self, text: &str) {
        if text.len() >= MIN_SCRUBBED_LEN && !self.values.iter().any(|v| v == text) {
            self.values.push(text.to_string());
            // Longest first, so a secret containing another is replaced whole.
            self.values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        }
    }

    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for value in &self.values {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), "<redacted>");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_env_and_file_references_resolve() {
        assert_eq!(resolve("s3cret-value").unwrap().expose(), "s3cret-value");
        std::env::set_var("VANTAGE_TEST_SECRET_RESOLVE", "from-env");
        assert_eq!(
            resolve("env:VANTAGE_TEST_SECRET_RESOLVE").unwrap().expose(),
            "from-env"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "from-file\n").unwrap();
        assert_eq!(
            resolve(&format!("file:{}", path.display()))
                .unwrap()
                .expose(),
            "from-file"
        );
    }

    #[test]
    fn errors_name_the_source_never_the_value() {
        let err = resolve("env:VANTAGE_TEST_SECRET_UNSET").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the environment variable VANTAGE_TEST_SECRET_UNSET named by \"env:VANTAGE_TEST_SECRET_UNSET\" is not set in the delivering process"
        );
        let err = resolve("file:/nonexistent/vantage-token").unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/vantage-token"),
            "{err}"
        );
        assert_eq!(resolve("").unwrap_err(), SecretError::Empty);
    }

    #[test]
    fn debug_and_scrub_hide_values() {
        let secret = resolve("tok-123456").unwrap();
        assert_eq!(format!("{secret:?}"), "<redacted>");
        let mut redactor = Redactor::default();
        redactor.add(&secret);
        redactor.add_text("1");
        assert_eq!(
            redactor.scrub("GET /bottok-123456/send failed (1 try)"),
            "GET /bot<redacted>/send failed (1 try)"
        );
    }
}
