//! Console sessions and CSRF tokens, kept in signed cookies so that every node of the cluster
//! accepts a session another node created.
//!
//! The session cookie is `<actor hex>.<credential>.<expires unix s>.<nonce hex>.<mac hex>`: the
//! admin token's *name* and the SHA-256 of its secret (what the replicated state stores; never
//! the secret itself), an expiry and a random nonce, authenticated with HMAC-SHA256 under a key
//! derived from the cluster id and secret, which every node shares. A session ends when it
//! expires, when the browser drops the cookie (sign-out), or when that exact token stops being
//! an admin token: revoked, or its secret rotated, even if a token of the same name exists
//! again (checked on every request). The CSRF token of a session is an HMAC of its nonce; forms carry
//! it in a hidden field and htmx requests in the `X-CSRF-Token` header.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

pub const SESSION_COOKIE: &str = "flagstaff_session";
/// Set by the sign-in page; its CSRF token is derived from it (sign-in has no session yet).
pub const LOGIN_COOKIE: &str = "flagstaff_login";
/// How long a session lasts after sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

/// Signs and checks session cookies and CSRF tokens.
#[derive(Clone)]
pub struct Signer {
    key: [u8; 32],
}

/// A valid session: who signed in and the nonce its CSRF token derives from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub actor: String,
    /// SHA-256 (hex) of the admin token the session was opened with.
    pub credential: String,
    pub nonce: String,
    pub expires_unix: u64,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn random_nonce() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

impl Signer {
    /// The key is the same on every node of a cluster (same id and secret) and differs between
    /// clusters.
    pub fn new(cluster_id: &str, cluster_secret: &str) -> Signer {
        let mut h = Sha256::new();
        h.update(b"flagstaff console v1\0");
        h.update(cluster_id.as_bytes());
        h.update([0]);
        h.update(cluster_secret.as_bytes());
        Signer {
            key: h.finalize().into(),
        }
    }

    fn mac(&self, purpose: &str, data: &str) -> String {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut m = <HmacSha256 as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        m.update(purpose.as_bytes());
        m.update(b"\0");
        m.update(data.as_bytes());
        hex::encode(m.finalize().into_bytes())
    }

    fn equal(a: &str, b: &str) -> bool {
        a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
    }

    /// A new session for `actor`, opened with the admin token whose SHA-256 is `credential`,
    /// as the cookie value.
    pub fn issue(&self, actor: &str, credential: &str) -> String {
        self.issue_at(actor, credential, now_unix() + SESSION_TTL.as_secs())
    }

    fn issue_at(&self, actor: &str, credential: &str, expires_unix: u64) -> String {
        let body = format!(
            "{}.{}.{expires_unix}.{}",
            hex::encode(actor),
            hex::encode(credential),
            random_nonce()
        );
        let mac = self.mac("session", &body);
        format!("{body}.{mac}")
    }

    /// The session in a cookie value, if the signature is right and it has not expired.
    pub fn verify(&self, cookie: &str) -> Option<Session> {
        let (body, mac) = cookie.rsplit_once('.')?;
        if !Signer::equal(&self.mac("session", body), mac) {
            return None;
        }
        let mut parts = body.split('.');
        let actor = String::from_utf8(hex::decode(parts.next()?).ok()?).ok()?;
        let credential = String::from_utf8(hex::decode(parts.next()?).ok()?).ok()?;
        let expires_unix: u64 = parts.next()?.parse().ok()?;
        let nonce = parts.next()?.to_string();
        if parts.next().is_some() || expires_unix <= now_unix() {
            return None;
        }
        Some(Session {
            actor,
            credential,
            nonce,
            expires_unix,
        })
    }

    /// The CSRF token that goes with a session (or with a sign-in page's nonce).
    pub fn csrf(&self, nonce: &str) -> String {
        self.mac("csrf", nonce)
    }

    pub fn check_csrf(&self, nonce: &str, presented: &str) -> bool {
        Signer::equal(&self.csrf(nonce), presented)
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// A `Set-Cookie` value for the console: HttpOnly, SameSite=Strict, scoped to `/ui`, and
/// `Secure` (sent over HTTPS only) when the console is served over TLS. `max_age` 0 deletes
/// the cookie.
pub fn set_cookie(name: &str, value: &str, max_age: Duration, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{}",
        max_age.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_round_trips_and_tampering_is_refused() {
        let s = Signer::new("c1", "secret");
        let cookie = s.issue("ops team", "c0ffee");
        let session = s.verify(&cookie).expect("valid");
        assert_eq!(session.actor, "ops team");
        // Another node of the same cluster accepts it; another cluster does not.
        assert_eq!(Signer::new("c1", "secret").verify(&cookie), Some(session));
        assert_eq!(Signer::new("c2", "secret").verify(&cookie), None);
        assert_eq!(Signer::new("c1", "other").verify(&cookie), None);
        // Changing any part breaks the signature.
        let (body, mac) = cookie.rsplit_once('.').unwrap();
        let forged_actor = format!(
            "{}{}",
            hex::encode("root"),
            &body[hex::encode("ops team").len()..]
        );
        assert_eq!(s.verify(&format!("{forged_actor}.{mac}")), None);
        assert_eq!(s.verify(&format!("{body}.{}", "0".repeat(64))), None);
        for junk in ["", ".", "a.b.c.d", "zz.1.2.3", &format!("{cookie}.x")] {
            assert_eq!(s.verify(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn an_expired_session_is_refused() {
        let s = Signer::new("c1", "secret");
        assert!(s.verify(&s.issue_at("a", "c", now_unix() - 1)).is_none());
        assert!(s.verify(&s.issue_at("a", "c", now_unix() + 60)).is_some());
    }

    #[test]
    fn csrf_tokens_belong_to_one_session() {
        let s = Signer::new("c1", "secret");
        let a = s.verify(&s.issue("a", "c")).unwrap();
        let b = s.verify(&s.issue("a", "c")).unwrap();
        assert!(s.check_csrf(&a.nonce, &s.csrf(&a.nonce)));
        assert!(!s.check_csrf(&a.nonce, &s.csrf(&b.nonce)));
        assert!(!s.check_csrf(&a.nonce, ""));
    }

    #[test]
    fn cookies_are_found_by_name() {
        let h = "a=1; flagstaff_session=xyz; flagstaff_login=n";
        assert_eq!(cookie(h, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(h, LOGIN_COOKIE), Some("n"));
        assert_eq!(cookie(h, "b"), None);
    }
}
