//! Client identity: HS256 JWTs whose `sub` is the user id.
//!
//! Owns: the signing secret (from `auth.jwt_secret`, or generated once into
//! `<data_dir>/jwt_secret` with mode 0600 and reused), issuing tokens (`rampart token`) and
//! verifying them. Must never: accept another algorithm than HS256, a token without `exp`, or
//! log a secret or a token.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};

/// Clock skew tolerated on `exp`.
const EXPIRY_LEEWAY_SECS: u64 = 30;
/// Bytes of entropy in a generated secret.
const GENERATED_SECRET_BYTES: usize = 32;
/// Longest user id (also the rule `POST /api/users` applies).
pub const MAX_USER_ID_CHARS: usize = 64;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HS256 secret for client tokens. Empty: generated once into `<data_dir>/jwt_secret`
    /// (mode 0600) and reused. A secret: prefer `RAMPART__AUTH__JWT_SECRET`.
    pub jwt_secret: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("reading or creating the JWT secret {path}: {source}")]
    Secret { path: PathBuf, source: std::io::Error },
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("signing a token: {0}")]
    Signing(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    iat: u64,
}

/// Signs and verifies client tokens.
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl Tokens {
    /// The configured secret, or the one persisted under `data_dir` (created on first use).
    pub fn load(config: &AuthConfig, data_dir: &Path) -> Result<Self, AuthError> {
        let secret = if config.jwt_secret.is_empty() {
            persisted_secret(&data_dir.join("jwt_secret"))?
        } else {
            config.jwt_secret.as_bytes().to_vec()
        };
        Ok(Self::from_secret(&secret))
    }

    pub fn from_secret(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = EXPIRY_LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret), validation }
    }

    pub fn issue(&self, user: &str, ttl: Duration) -> Result<String, AuthError> {
        let now = unix_now();
        let claims = Claims { sub: user.to_owned(), iat: now, exp: now.saturating_add(ttl.as_secs()) };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|error| AuthError::Signing(error.to_string()))
    }

    /// The user id of a valid token.
    pub fn verify(&self, token: &str) -> Result<String, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|error| AuthError::InvalidToken(error.to_string()))?;
        let user = data.claims.sub;
        validate_user_id(&user).map_err(AuthError::InvalidToken)?;
        Ok(user)
    }
}

/// User ids: 1 to 64 characters from `[A-Za-z0-9_.@-]`.
pub fn validate_user_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.chars().count() > MAX_USER_ID_CHARS {
        return Err(format!("user id must be 1 to {MAX_USER_ID_CHARS} characters"));
    }
    if !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | '-')) {
        return Err("user id may contain only letters, digits, '_', '.', '@' and '-'".into());
    }
    Ok(())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn persisted_secret(path: &Path) -> Result<Vec<u8>, AuthError> {
    let error = |source| AuthError::Secret { path: path.to_owned(), source };
    match std::fs::read(path) {
        Ok(secret) if !secret.is_empty() => return Ok(secret),
        Ok(_) => {}
        Err(read_error) if read_error.kind() == std::io::ErrorKind::NotFound => {}
        Err(read_error) => return Err(error(read_error)),
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(error)?;
    }
    let mut bytes = [0u8; GENERATED_SECRET_BYTES];
    rand::thread_rng().fill_bytes(&mut bytes);
    let secret: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(secret.as_bytes()).map_err(error)?;
            file.sync_all().map_err(error)?;
            Ok(secret.into_bytes())
        }
        // Another process (a concurrent `rampart token`) created it first: use theirs.
        Err(create_error) if create_error.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::read(path).map_err(error)
        }
        Err(create_error) => Err(error(create_error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_and_others_do_not() {
        let tokens = Tokens::from_secret(b"secret");
        let token = tokens.issue("alice", Duration::from_secs(60)).unwrap();
        assert_eq!(tokens.verify(&token).unwrap(), "alice");
        assert!(Tokens::from_secret(b"other").verify(&token).is_err());
        assert!(tokens.verify("not.a.token").is_err());
        let expired = {
            let claims = Claims { sub: "alice".into(), iat: 0, exp: 1 };
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(b"secret")).unwrap()
        };
        assert!(tokens.verify(&expired).is_err());
    }

    #[test]
    fn generated_secret_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = Tokens::load(&AuthConfig::default(), dir.path()).unwrap();
        let token = first.issue("bob", Duration::from_secs(60)).unwrap();
        let second = Tokens::load(&AuthConfig::default(), dir.path()).unwrap();
        assert_eq!(second.verify(&token).unwrap(), "bob");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("jwt_secret")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
