//! Standard Webhooks 1.0 signatures (standardwebhooks.com), so receivers verify our
//! webhooks with that project's libraries instead of code written for us:
//! `webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`, where
//! the channel secret is `whsec_<base64 key>`. HMAC comes from aws-lc-rs, the crate
//! behind our rustls provider, so no second crypto library is linked.

use aws_lc_rs::hmac;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::secret::Secret;

const PREFIX: &str = "whsec_";

/// Bytes of a key made by [`new_secret`] (Standard Webhooks: 24 to 64).
const NEW_KEY_BYTES: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("is not whsec_ followed by base64 (make one with `vantage notify new-secret`)")]
    NotBase64,
    #[error("decodes to {0} bytes; use a key of at least 16 bytes (`vantage notify new-secret`)")]
    TooShort(usize),
}

/// A webhook channel's signing key.
pub struct SigningKey(hmac::Key);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    /// From `whsec_<base64>` (the prefix is optional, as in the reference libraries).
    pub fn from_secret(secret: &Secret) -> Result<SigningKey, KeyError> {
        let text = secret.expose();
        let encoded = text.strip_prefix(PREFIX).unwrap_or(text);
        let key = STANDARD.decode(encoded).map_err(|_| KeyError::NotBase64)?;
        if key.len() < 16 {
            return Err(KeyError::TooShort(key.len()));
        }
        Ok(SigningKey(hmac::Key::new(hmac::HMAC_SHA256, &key)))
    }

    /// The value of the `webhook-signature` header.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut context = hmac::Context::with_key(&self.0);
        context.update(id.as_bytes());
        context.update(b".");
        context.update(timestamp.to_string().as_bytes());
        context.update(b".");
        context.update(body);
        format!("v1,{}", STANDARD.encode(context.sign().as_ref()))
    }
}

/// A fresh random secret, `whsec_<base64 of 32 bytes>`.
pub fn new_secret() -> String {
    let mut key = [0u8; NEW_KEY_BYTES];
    aws_lc_rs::rand::fill(&mut key).expect("the system random generator works");
    format!("{PREFIX}{}", STANDARD.encode(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::secret;

    /// The example of the Standard Webhooks specification and its reference libraries.
    #[test]
    fn signs_the_reference_example() {
        let key = SigningKey::from_secret(
            &secret::resolve("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap(),
        )
        .unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            key.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn new_secrets_are_usable_and_distinct() {
        let a = new_secret();
        let b = new_secret();
        assert_ne!(a, b);
        assert!(a.starts_with("whsec_"));
        SigningKey::from_secret(&secret::resolve(&a).unwrap()).unwrap();
    }

    #[test]
    fn bad_secrets_are_refused() {
        let bad = secret::resolve("whsec_not base64!").unwrap();
        assert_eq!(
            SigningKey::from_secret(&bad).unwrap_err(),
            KeyError::NotBase64
        );
        let short = secret::resolve("whsec_c2hvcnQ=").unwrap();
        assert_eq!(
            SigningKey::from_secret(&short).unwrap_err(),
            KeyError::TooShort(5)
        );
    }
}
