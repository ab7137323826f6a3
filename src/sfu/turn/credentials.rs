//! Short-lived TURN credentials any instance can check: coturn's `use-auth-secret` scheme
//! (the "TURN REST API" draft). The username is `<expiry, unix seconds>:<participant>`, the
//! password base64(HMAC-SHA1(secret, username)); the server recomputes the password from the
//! username, so nothing is stored and every instance sharing the secret accepts every instance's
//! credentials.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::Serialize;

/// One entry of the `ice_servers` a participant passes to `RTCPeerConnection`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: String,
    pub credential: String,
    /// When the credential stops being accepted (RFC 3339).
    pub expires_at: String,
}

/// Signs and checks credentials with the deployment's shared secret.
pub struct Credentials {
    secret: String,
    ttl: Duration,
}

impl Credentials {
    pub fn new(secret: String, ttl: Duration) -> Self {
        Self { secret, ttl }
    }

    /// A username and password for `participant`, good for the configured time from `now`.
    pub fn issue(&self, participant: &str, now: SystemTime) -> (String, String, SystemTime) {
        let expires = now + self.ttl;
        let seconds = expires.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
        let username = format!("{seconds}:{participant}");
        let password = self.password(&username);
        (username, password, UNIX_EPOCH + Duration::from_secs(seconds))
    }

    fn password(&self, username: &str) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, self.secret.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(&key, username.as_bytes()).as_ref())
    }

    /// The password `username` was issued with, if it has not expired at `now`.
    pub fn password_for(&self, username: &str, now: SystemTime) -> Result<String, CredentialError> {
        let (expiry, _) = username.split_once(':').ok_or(CredentialError::Malformed)?;
        let expiry = UNIX_EPOCH + Duration::from_secs(expiry.parse().map_err(|_| CredentialError::Malformed)?);
        if expiry <= now {
            return Err(CredentialError::Expired);
        }
        Ok(self.password(username))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("the username is not <expiry>:<name>")]
    Malformed,
    #[error("the credential expired")]
    Expired,
}

/// The TURN server's view: the long-term credential key (RFC 8489 §9.2.2) of a username, or a
/// refusal (answered 401 by the server).
impl turn::auth::AuthHandler for Credentials {
    fn auth_handle(&self, username: &str, realm: &str, source: SocketAddr) -> Result<Vec<u8>, turn::Error> {
        match self.password_for(username, SystemTime::now()) {
            Ok(password) => Ok(turn::auth::generate_auth_key(username, realm, &password)),
            // Answered 400 by the server, counted in `turn_auth_refused` on the way out.
            Err(error) => {
                tracing::debug!(username, %source, %error, "TURN credential refused");
                Err(turn::Error::Other(error.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_credential_checks_out_until_it_expires_and_only_with_the_same_secret() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let issuer = Credentials::new("a shared secret of enough length".into(), Duration::from_secs(3600));
        let (username, password, expires) = issuer.issue("p7", now);
        assert_eq!(username, "1700003600:p7");
        assert_eq!(expires, UNIX_EPOCH + Duration::from_secs(1_700_003_600));
        // Another instance with the same secret accepts it; one with another secret does not.
        let other = Credentials::new("a shared secret of enough length".into(), Duration::from_secs(60));
        assert_eq!(other.password_for(&username, now), Ok(password.clone()));
        let stranger = Credentials::new("another secret, just as long".into(), Duration::from_secs(3600));
        assert_ne!(stranger.password_for(&username, now), Ok(password));
        assert_eq!(issuer.password_for(&username, expires), Err(CredentialError::Expired));
        assert_eq!(issuer.password_for("p7", now), Err(CredentialError::Malformed));
        assert_eq!(issuer.password_for("soon:p7", now), Err(CredentialError::Malformed));
    }

    #[test]
    fn the_password_is_coturns() {
        // coturn's use-auth-secret: base64(HMAC-SHA1(secret, username)); this pair is what
        // `python3 -c "import hmac,hashlib,base64; print(base64.b64encode(hmac.new(b'secret',
        // b'1700003600:p7', hashlib.sha1).digest()).decode())"` prints.
        let issuer = Credentials::new("secret".into(), Duration::from_secs(3600));
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(issuer.issue("p7", now).1, "LeHfiJrHQtnfnE8wpfV+Igu33vI=");
    }
}
