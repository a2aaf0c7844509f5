//! Standard Webhooks signatures (<https://www.standardwebhooks.com>): a message is signed as
//! `{webhook-id}.{webhook-timestamp}.{body}` with HMAC-SHA256 under each of the endpoint's
//! secrets, and sent with the headers `webhook-id`, `webhook-timestamp` (Unix seconds) and
//! `webhook-signature` (`v1,<base64>` per secret, space-separated, so a receiver rotating its
//! secret accepts either). A receiver verifies with the spec's own libraries
//! (`standardwebhooks` on npm and PyPI): `new Webhook(secret).verify(body, headers)`, as
//! `tests/webhook_signatures.rs` does with the npm one.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The prefix of a secret's text form.
pub const SECRET_PREFIX: &str = "whsec_";
/// The fewest bytes a secret may have (the spec: 24 to 64).
pub const MIN_SECRET_BYTES: usize = 24;
/// The most bytes a secret may have.
pub const MAX_SECRET_BYTES: usize = 64;
/// How far a message's timestamp may be from the receiver's clock (the spec's tolerance).
pub const TOLERANCE_S: i64 = 5 * 60;

/// Why a secret is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// It lacks the prefix.
    #[error("a webhook secret starts with {SECRET_PREFIX:?}")]
    Prefix,
    /// What follows the prefix is not base64.
    #[error("a webhook secret is {SECRET_PREFIX:?} and base64: {0}")]
    Base64(String),
    /// Too short or too long.
    #[error("a webhook secret has {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes of key, not {0}")]
    Length(usize),
}

/// An endpoint's signing key.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never in a log.
        write!(f, "Secret(<{} bytes>)", self.0.len())
    }
}

impl Secret {
    /// A secret from its text form, `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<Secret, SecretError> {
        let encoded = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::Prefix)?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|e| SecretError::Base64(e.to_string()))?;
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&key.len()) {
            return Err(SecretError::Length(key.len()));
        }
        Ok(Secret(key))
    }

    /// A new random secret of 32 bytes.
    pub fn generate() -> Secret {
        let mut key = vec![0u8; 32];
        getrandom::fill(&mut key).expect("the OS has randomness");
        Secret(key)
    }

    /// Its text form.
    pub fn to_text(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.0))
    }

    fn mac(&self, id: &str, timestamp_s: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any size");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp_s.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

/// The `webhook-signature` header of a message: one `v1,<base64>` per secret.
pub fn signature_header(secrets: &[Secret], id: &str, timestamp_s: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| {
            format!(
                "v1,{}",
                STANDARD.encode(s.mac(id, timestamp_s, body).finalize().into_bytes())
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why a received message does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Its timestamp is too far from the receiver's clock (a replay, or a clock off).
    #[error("the timestamp is {0} s from the receiver's clock")]
    Timestamp(i64),
    /// No signature matches.
    #[error("no signature matches")]
    Signature,
}

/// Verifies a message as a receiver does (our tests' receiver; shops use the spec's
/// libraries): its timestamp within [`TOLERANCE_S`] of `now_s`, and some `v1` signature of the
/// header made with `secret` (compared in constant time).
pub fn verify(
    secret: &Secret,
    id: &str,
    timestamp_s: i64,
    header: &str,
    body: &[u8],
    now_s: i64,
) -> Result<(), VerifyError> {
    if (now_s - timestamp_s).abs() > TOLERANCE_S {
        return Err(VerifyError::Timestamp(now_s - timestamp_s));
    }
    let matches = header.split(' ').any(|sig| {
        sig.strip_prefix("v1,")
            .and_then(|b| STANDARD.decode(b).ok())
            .is_some_and(|raw| secret.mac(id, timestamp_s, body).verify_slice(&raw).is_ok())
    });
    if matches {
        Ok(())
    } else {
        Err(VerifyError::Signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec's own example: secret, id, timestamp and body, and the signature they give.
    #[test]
    fn the_spec_s_example_signs_to_its_signature() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature_header(
                std::slice::from_ref(&secret),
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                body
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_eq!(
            verify(
                &secret,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
                body,
                1614265330 + 60
            ),
            Ok(())
        );
    }

    #[test]
    fn a_rotated_secret_is_accepted_by_either_key_and_a_tampered_message_by_none() {
        let (old, new) = (Secret::generate(), Secret::generate());
        let header = signature_header(&[new.clone(), old.clone()], "offer-1", 1_000, b"{}");
        assert_eq!(header.split(' ').count(), 2);
        assert_eq!(
            verify(&old, "offer-1", 1_000, &header, b"{}", 1_000),
            Ok(())
        );
        assert_eq!(
            verify(&new, "offer-1", 1_000, &header, b"{}", 1_000),
            Ok(())
        );
        assert_eq!(
            verify(&new, "offer-2", 1_000, &header, b"{}", 1_000),
            Err(VerifyError::Signature)
        );
        assert_eq!(
            verify(&new, "offer-1", 1_000, &header, b"{ }", 1_000),
            Err(VerifyError::Signature)
        );
        assert_eq!(
            verify(
                &new,
                "offer-1",
                1_000,
                &header,
                b"{}",
                1_000 + TOLERANCE_S + 1
            ),
            Err(VerifyError::Timestamp(TOLERANCE_S + 1))
        );
    }

    #[test]
    fn a_secret_is_its_prefix_base64_and_a_sound_length() {
        let s = Secret::generate();
        assert_eq!(Secret::parse(&s.to_text()), Ok(s.clone()));
        assert_eq!(format!("{s:?}"), "Secret(<32 bytes>)");
        assert_eq!(
            Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(SecretError::Prefix)
        );
        assert!(matches!(
            Secret::parse("whsec_***"),
            Err(SecretError::Base64(_))
        ));
        assert_eq!(Secret::parse("whsec_c2hvcnQ="), Err(SecretError::Length(5)));
    }
}
