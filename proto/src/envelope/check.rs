//! Whether a parsed envelope may go on to the engine: the key it names is in
//! `authorized_keys` and its signature verifies (`authenticate`, pure computation, run at the
//! door on every message), then it is addressed to this gateway, not expired, not valid for
//! too long, not issued in the future, and within the key's scope (`authorize`). Replays are
//! the replay window's business (`replay.rs`).

use chrono::{DateTime, SecondsFormat, Utc};
use ed25519_dalek::Signature;

use super::{reason, CommandEnvelope, Refusal, MAX_CLOCK_SKEW, MAX_VALIDITY};
use crate::keys::{AuthorizedKey, AuthorizedKeys};

/// Decide whether `envelope` may go on to the engine: [`authenticate`], then [`authorize`].
/// Returns the key that signed it. Replays are checked afterwards by `ReplayWindow::admit`.
pub fn check<'k>(
    envelope: &CommandEnvelope,
    keys: &'k AuthorizedKeys,
    gateway_id: &str,
    now: DateTime<Utc>,
) -> Result<&'k AuthorizedKey, Refusal> {
    let key = authenticate(envelope, keys)?;
    authorize(envelope, key, gateway_id, now)?;
    Ok(key)
}

/// The key named by `key_id` is known and the signature verifies with it: the key, or a
/// refusal that must be treated as coming from anyone (`key_id` is only claimed until then).
/// Pure computation, no I/O: cheap enough to run on every message before anything is stored.
pub fn authenticate<'k>(
    envelope: &CommandEnvelope,
    keys: &'k AuthorizedKeys,
) -> Result<&'k AuthorizedKey, Refusal> {
    let key = keys.get(&envelope.key_id).ok_or_else(|| {
        Refusal::new(
            reason::UNKNOWN_KEY,
            format!("no key `{}` in {}", envelope.key_id, keys.path().display()),
        )
    })?;
    let signature = Signature::from_bytes(&envelope.signature);
    key.public_key.verify_strict(&envelope.canonical_bytes(), &signature).map_err(|_| {
        Refusal::new(
            reason::BAD_SIGNATURE,
            format!(
                "signature does not verify with the claimed key `{}` (altered, or signed by another key)",
                key.id
            ),
        )
    })?;
    Ok(key)
}

/// What a correctly signed envelope must also satisfy, in this order: addressed to
/// `gateway_id`, `now` not past `not_after`, `not_after` at most [`MAX_VALIDITY`] ahead,
/// `issued_at` at most [`MAX_CLOCK_SKEW`] ahead, the key's scope allows target and command.
pub fn authorize(
    envelope: &CommandEnvelope,
    key: &AuthorizedKey,
    gateway_id: &str,
    now: DateTime<Utc>,
) -> Result<(), Refusal> {
    if envelope.gateway_id != gateway_id {
        return Err(Refusal::new(
            reason::WRONG_GATEWAY,
            format!("addressed to gateway `{}`; this is `{gateway_id}`", envelope.gateway_id),
        ));
    }
    if now > envelope.not_after {
        return Err(Refusal::new(
            reason::EXPIRED,
            format!("not_after {} is past (now {})", envelope.not_after_text, rfc3339(now)),
        ));
    }
    if envelope.not_after > now + MAX_VALIDITY {
        return Err(Refusal::new(
            reason::NOT_AFTER_TOO_FAR,
            format!(
                "not_after {} is more than {} h ahead (now {}); sign commands valid for less",
                envelope.not_after_text,
                MAX_VALIDITY.num_hours(),
                rfc3339(now)
            ),
        ));
    }
    if let Some((issued_at, text)) = &envelope.issued_at {
        if *issued_at > now + MAX_CLOCK_SKEW {
            return Err(Refusal::new(
                reason::ISSUED_IN_FUTURE,
                format!(
                    "issued_at {text} is more than {} min ahead of this gateway's clock (now {})",
                    MAX_CLOCK_SKEW.num_minutes(),
                    rfc3339(now)
                ),
            ));
        }
    }
    if !key.allows(&envelope.target, &envelope.command) {
        return Err(Refusal::new(
            reason::OUT_OF_SCOPE,
            format!("key `{}` may not send `{}` to `{}`", key.id, envelope.command, envelope.target),
        ));
    }
    Ok(())
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}
