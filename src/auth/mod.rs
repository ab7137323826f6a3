//! Client identity: JWTs whose `sub` is the user id.
//!
//! Owns: the local HS256 secret (from `auth.jwt_secret`, or generated once into
//! `<data_dir>/jwt_secret` with mode 0600 and reused), issuing tokens with it (`rampart token`),
//! and verifying tokens: HS256 with that secret (the embedded default) and tokens from an
//! identity provider (RS*/PS*/ES256/ES384/EdDSA) with keys from `auth.public_key_file` or the
//! JWKS at `auth.jwks_url` (`jwks.rs`, `keys.rs`).
//!
//! Must never: accept `alg: none` or an algorithm outside the allow-list, check an HMAC token
//! against a public key (algorithm confusion), accept a token without `sub` and `exp`, refuse one
//! for lacking optional claims (`iat`, `nbf`, `iss`, `aud`, `jti`: validated when present and
//! configured), make a request wait for keys longer than `auth.jwks_fetch_timeout`, or log a
//! secret or a token.

mod jwks;
mod keys;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

pub use jwks::{Jwks, JwksRefresher};
use keys::{is_hmac, VerifyingKey};

/// Longest user id (also the rule `POST /api/users` applies).
pub const MAX_USER_ID_CHARS: usize = 64;
/// Accepted when `auth.algorithms` is empty and an identity provider's keys are configured.
const IDP_DEFAULT_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HS256 secret for client tokens. Empty: generated once into `<data_dir>/jwt_secret`
    /// (mode 0600) and reused. A secret: prefer `RAMPART__AUTH__JWT_SECRET`.
    pub jwt_secret: String,
    /// Accepted signing algorithms (`HS256`, `RS256`, `PS256`, `ES256`, `EdDSA`, ...). Empty: HS256
    /// with the local secret; with `public_key_file` or `jwks_url` set, the asymmetric ones
    /// only. `none` is never accepted.
    pub algorithms: Vec<String>,
    /// Required `iss` when set.
    pub issuer: String,
    /// Required among `aud` when set.
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// A PEM public key (RSA, EC or Ed25519) that verifies identity-provider tokens.
    pub public_key_file: String,
    /// The identity provider's JWKS (e.g. `https://idp/realms/x/protocol/openid-connect/certs`).
    pub jwks_url: String,
    /// Longest a JWKS fetch, and so a request waiting for one, may take.
    #[serde(with = "humantime_serde")]
    pub jwks_fetch_timeout: Duration,
    /// The key set is fetched again this often.
    #[serde(with = "humantime_serde")]
    pub jwks_refresh_interval: Duration,
    /// A token with an unknown `kid` triggers a fetch at most this often.
    #[serde(with = "humantime_serde")]
    pub jwks_min_refresh_interval: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: String::new(),
            algorithms: Vec::new(),
            issuer: String::new(),
            audience: String::new(),
            leeway: Duration::from_secs(30),
            public_key_file: String::new(),
            jwks_url: String::new(),
            jwks_fetch_timeout: Duration::from_secs(5),
            jwks_refresh_interval: Duration::from_secs(300),
            jwks_min_refresh_interval: Duration::from_secs(30),
        }
    }
}

impl AuthConfig {
    /// Whether tokens may come from an identity provider's keys.
    pub fn uses_identity_provider(&self) -> bool {
        !self.public_key_file.is_empty() || !self.jwks_url.is_empty()
    }

    /// The accepted algorithms, parsed; an error names the offending entry.
    pub fn accepted_algorithms(&self) -> Result<Vec<Algorithm>, String> {
        if self.algorithms.is_empty() {
            return Ok(if self.uses_identity_provider() {
                IDP_DEFAULT_ALGORITHMS.to_vec()
            } else {
                vec![Algorithm::HS256]
            });
        }
        self.algorithms
            .iter()
            .map(|name| {
                if name.eq_ignore_ascii_case("none") {
                    return Err("auth.algorithms: `none` is never accepted".to_owned());
                }
                name.parse::<Algorithm>().map_err(|_| {
                    format!("auth.algorithms: unknown algorithm {name:?} (HS256, RS256, PS256, ES256, EdDSA, ...)")
                })
            })
            .collect()
    }

    pub fn validate(&self) -> Result<(), String> {
        let algorithms = self.accepted_algorithms()?;
        if !self.uses_identity_provider() && algorithms.iter().any(|algorithm| !is_hmac(*algorithm)) {
            return Err("auth.algorithms names public-key algorithms, but neither auth.public_key_file nor auth.jwks_url is set".into());
        }
        let is_http_url = self.jwks_url.starts_with("http://") || self.jwks_url.starts_with("https://");
        if !self.jwks_url.is_empty() && !is_http_url {
            return Err("auth.jwks_url must be an http:// or https:// URL".into());
        }
        if self.jwks_fetch_timeout.is_zero() || self.jwks_refresh_interval.is_zero() {
            return Err("auth.jwks_fetch_timeout and auth.jwks_refresh_interval must be longer than 0s".into());
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("reading or creating the JWT secret {path}: {source}")]
    Secret { path: PathBuf, source: std::io::Error },
    #[error("reading the public key {path}: {why}")]
    PublicKey { path: PathBuf, why: String },
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("signing a token: {0}")]
    Signing(String),
    #[error("{0}")]
    Config(String),
}

/// What rampart reads from a token. Every other claim is optional, and unknown claims are ignored.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

/// Signs (local secret) and verifies client tokens.
pub struct Tokens {
    encoding: EncodingKey,
    /// The local secret, when an HMAC algorithm is accepted.
    secret: Option<DecodingKey>,
    /// From `auth.public_key_file`.
    pem_key: Option<VerifyingKey>,
    /// From `auth.jwks_url`.
    jwks: Option<Arc<Jwks>>,
    algorithms: Vec<Algorithm>,
    /// Claim checks shared by every key: `exp`, `nbf`, `sub` required, `iss`, `aud`, leeway.
    validation: Validation,
}

impl Tokens {
    /// The configured secret (or the one persisted under `data_dir`, created on first use) and
    /// the identity provider's keys. The JWKS is fetched later, by [`JwksRefresher`].
    pub fn load(config: &AuthConfig, data_dir: &Path) -> Result<Self, AuthError> {
        let secret = if config.jwt_secret.is_empty() {
            persisted_secret(&data_dir.join("jwt_secret"))?
        } else {
            config.jwt_secret.as_bytes().to_vec()
        };
        let mut tokens = Self::with_secret(config, &secret)?;
        if !config.public_key_file.is_empty() {
            let path = PathBuf::from(&config.public_key_file);
            let pem = std::fs::read(&path)
                .map_err(|error| AuthError::PublicKey { path: path.clone(), why: error.to_string() })?;
            tokens.pem_key = Some(VerifyingKey::from_pem(&pem).map_err(|why| AuthError::PublicKey { path, why })?);
        }
        if !config.jwks_url.is_empty() {
            tokens.jwks =
                Some(Jwks::new(config.jwks_url.clone(), config.jwks_fetch_timeout, config.jwks_min_refresh_interval));
        }
        Ok(tokens)
    }

    /// HS256 with `secret` only (tests, benchmarks).
    pub fn from_secret(secret: &[u8]) -> Self {
        match Self::with_secret(&AuthConfig::default(), secret) {
            Ok(tokens) => tokens,
            Err(error) => unreachable!("the default auth config is valid: {error}"),
        }
    }

    fn with_secret(config: &AuthConfig, secret: &[u8]) -> Result<Self, AuthError> {
        let algorithms = config.accepted_algorithms().map_err(AuthError::Config)?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = config.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        if !config.issuer.is_empty() {
            validation.set_issuer(&[&config.issuer]);
        }
        if config.audience.is_empty() {
            // No audience configured: a token's `aud` is not ours to judge.
            validation.validate_aud = false;
        } else {
            validation.set_audience(&[&config.audience]);
            validation.required_spec_claims.insert("aud".into());
        }
        let accepts_hmac = algorithms.iter().any(|algorithm| is_hmac(*algorithm));
        Ok(Self {
            encoding: EncodingKey::from_secret(secret),
            secret: accepts_hmac.then(|| DecodingKey::from_secret(secret)),
            pem_key: None,
            jwks: None,
            algorithms,
            validation,
        })
    }

    /// The JWKS cache, when `auth.jwks_url` is set (for its refresher).
    pub fn jwks(&self) -> Option<Arc<Jwks>> {
        self.jwks.clone()
    }

    /// An HS256 token for `user`, signed with the local secret.
    pub fn issue(&self, user: &str, ttl: Duration) -> Result<String, AuthError> {
        if !self.algorithms.contains(&Algorithm::HS256) {
            return Err(AuthError::Signing(
                "auth.algorithms does not accept HS256, so rampart would refuse a token it signed; get one from the identity provider".into(),
            ));
        }
        let now = unix_now();
        let claims = Claims { sub: user.to_owned(), iat: Some(now), exp: now.saturating_add(ttl.as_secs()) };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|error| AuthError::Signing(error.to_string()))
    }

    /// The user id of a valid token. Waits (at most `auth.jwks_fetch_timeout`) only when the
    /// token names a key the cached JWKS lacks.
    pub async fn verify(&self, token: &str) -> Result<String, AuthError> {
        let invalid = |error: jsonwebtoken::errors::Error| AuthError::InvalidToken(error.to_string());
        // `alg: none` and unknown algorithms fail here: the header does not parse.
        let header = jsonwebtoken::decode_header(token).map_err(invalid)?;
        let algorithm = header.alg;
        if !self.algorithms.contains(&algorithm) {
            return Err(AuthError::InvalidToken(format!("algorithm {algorithm:?} is not accepted")));
        }
        let mut validation = self.validation.clone();
        validation.algorithms = vec![algorithm];
        let claims = if is_hmac(algorithm) {
            let secret = self.secret.as_ref().ok_or_else(|| AuthError::InvalidToken("no HMAC key".into()))?;
            jsonwebtoken::decode::<Claims>(token, secret, &validation).map_err(invalid)?.claims
        } else {
            self.verify_with_public_keys(token, header.kid.as_deref(), algorithm, &validation).await?
        };
        validate_user_id(&claims.sub).map_err(AuthError::InvalidToken)?;
        Ok(claims.sub)
    }

    async fn verify_with_public_keys(
        &self,
        token: &str,
        kid: Option<&str>,
        algorithm: Algorithm,
        validation: &Validation,
    ) -> Result<Claims, AuthError> {
        let mut last_error = AuthError::InvalidToken(format!("no key verifies {algorithm:?} tokens"));
        let mut attempt = |key: &VerifyingKey| -> Option<Claims> {
            if !key.accepts(algorithm) {
                return None;
            }
            match jsonwebtoken::decode::<Claims>(token, &key.key, validation) {
                Ok(data) => Some(data.claims),
                Err(error) => {
                    last_error = AuthError::InvalidToken(error.to_string());
                    None
                }
            }
        };
        if let Some(claims) = self.pem_key.as_ref().and_then(&mut attempt) {
            return Ok(claims);
        }
        let Some(jwks) = &self.jwks else { return Err(last_error) };
        let matching = |keys: &[VerifyingKey]| -> Vec<usize> {
            (0..keys.len()).filter(|&index| kid.is_none() || keys[index].kid.as_deref() == kid).collect()
        };
        let mut keys = jwks.keys();
        if let (Some(kid), true) = (kid, matching(&keys).is_empty()) {
            jwks.refresh_for_unknown(kid).await;
            keys = jwks.keys();
            if matching(&keys).is_empty() {
                return Err(AuthError::InvalidToken(format!("no key with kid {kid:?}")));
            }
        }
        for index in matching(&keys) {
            if let Some(claims) = attempt(&keys[index]) {
                return Ok(claims);
            }
        }
        Err(last_error)
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
    crate::secret_file::read_or_create(path).map_err(|source| AuthError::Secret { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn issued_tokens_verify_and_others_do_not() {
        let tokens = Tokens::from_secret(b"secret");
        let token = tokens.issue("alice", Duration::from_secs(60)).unwrap();
        assert_eq!(tokens.verify(&token).await.unwrap(), "alice");
        assert!(Tokens::from_secret(b"other").verify(&token).await.is_err());
        assert!(tokens.verify("not.a.token").await.is_err());
        let expired = {
            let claims = Claims { sub: "alice".into(), iat: Some(0), exp: 1 };
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(b"secret")).unwrap()
        };
        assert!(tokens.verify(&expired).await.is_err());
    }

    /// Regression: tokens from other JWT libraries carry no `iat`; they were refused. Both made
    /// by PyJWT 2.15 with the secret `pyjwt-interop-secret`; the second has `nbf`, `jti`, `iss`
    /// and a nested custom claim. Both expire in 2100.
    #[actix_rt::test]
    async fn tokens_from_another_library_without_iat_verify() {
        let tokens = Tokens::from_secret(b"pyjwt-interop-secret");
        let minimal = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMH0._Dbd7UgBo-DyfVBs2MXpT0BK8fLrWgDSS6MLfEAS5AA";
        let extra = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMCwibmJmIjoxNzAwMDAwMDAwLCJqdGkiOiJ4MSIsImlzcyI6InNvbWVvbmUiLCJjdXN0b20iOnsiYSI6WzEsMl19fQ.lEbHUDHnz1Vbzo1W6DftIeCRoMqKXDS8qutItXGdNMg";
        assert_eq!(tokens.verify(minimal).await.unwrap(), "alice");
        assert_eq!(tokens.verify(extra).await.unwrap(), "alice");
    }

    /// RS256 and PS256 tokens made by PyJWT 2.15 with an RSA key generated outside rampart, and
    /// that key's public JWK. Claims: iss https://idp.example, aud rampart, exp in 2100.
    const RSA_JWKS: &str = r#"{"keys": [{"kty": "RSA", "key_ops": ["verify"], "n": "lCM5SKpBBVPhPkYiFyllHGNLzjdf9tpf-_L5n7UrNoAZOs0ORdW48zf09LYl-qL9c88DXqQD-17X31Rx9T4JkJ57GxxlvBCjCMYYAClP0D5GISKVb8L0_nKKzrJ9kgvlCiWHI2-Oqco3oxxpGlknloUdsvSVJ8RQ3XcyFc7qbB-5cmHGXGSZjaJTxvD3Dm3AVLtgasxoPbGFjpk8zWq4Vq4XZOWdqDIiN8yw_JF2Q0KTOKsJMYqM58miSKSlcWg6nc0tXj8H7gWxH0WKMAf7DFna_jsLbaU8C2qiaWBXRJ1Ck9yjej3SjITIBWd3wfgfPTTdSvxt-yDeXL7-SPNtkw", "e": "AQAB", "kid": "rsa-1", "use": "sig"}]}"#;
    const RS256_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6InJzYS0xIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMCwiaWF0IjoxNzAwMDAwMDAwLCJpc3MiOiJodHRwczovL2lkcC5leGFtcGxlIiwiYXVkIjoicmFtcGFydCJ9.fmPIRo39iNfu71ZhpuiP-VHl5CvzBdgHafMVM1VTs-4e36GPRPLapn-Pz9mVPk2lNdJZ8MEMXwKrkF7U674Pgv5Eax3PEl3cJRwgjmTq4-QVQAfzI3wNqASXzcMh6ieAXxSvcTsGXlN1cfw4Bsl-luRdtDJVkn1niTryPITS4aYO8dQ2xKcC0lEFjHAsVDdZirKm8Lm91BspI0eEL3ZArwfRQfN_KmF8qGaNwoJU14neUBEwy1v1rlnLrKSJVAgE7bSwmy_jDysDtIZdJP0j77BsCRMOVvyZM_XJb3S4nVJGOD1wHtGsflxxNfDaB_ItG9pRokXytzy_HIVC7Qn7aA";
    const PS256_TOKEN: &str = "eyJhbGciOiJQUzI1NiIsImtpZCI6InJzYS0xIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMCwiaWF0IjoxNzAwMDAwMDAwLCJpc3MiOiJodHRwczovL2lkcC5leGFtcGxlIiwiYXVkIjoicmFtcGFydCJ9.fwVwfQ_cA9pLcAKR-YYCqHFNYDiCTf0E27Sd7eKrmvzPH0Imzu8cqrYjgPHvAiz8G7TpsWj8_SSmsU44s9J4bFVwlX9xfixFSZ-1RyxVF80c2ye2XUigKtVvT4ybOGYSoGw0KOCvFvQ1Bf_TtgrvcJDhm4dfp0v8MBLMal3x20YhNk8ImW1-rsLaikjzZaE35343TxiN5mxEQ7Z4aXE_Ep2VdkM4R0exVM4iViEWlgFNAx73x5E8YCYVEUIv1v4vF2UJ5sqrQl5cJ0YadON3QWVJZyjvZXUvrCC8fhOP_61rhJ0_xssXvJO1OzP1T89UAc0FHQM6HnAep9gwSpGpAg";

    fn rsa_tokens(config: AuthConfig) -> Tokens {
        let mut tokens = Tokens::with_secret(&config, b"local").unwrap();
        let (mut keys, _) = keys::parse_jwks(RSA_JWKS.as_bytes()).unwrap();
        tokens.pem_key = keys.pop();
        tokens
    }

    #[actix_rt::test]
    async fn identity_provider_tokens_verify_with_issuer_and_audience() {
        let idp = AuthConfig {
            public_key_file: "set".into(),
            issuer: "https://idp.example".into(),
            audience: "rampart".into(),
            ..AuthConfig::default()
        };
        let tokens = rsa_tokens(idp.clone());
        assert_eq!(tokens.verify(RS256_TOKEN).await.unwrap(), "alice");
        assert_eq!(tokens.verify(PS256_TOKEN).await.unwrap(), "alice");
        let other_issuer = rsa_tokens(AuthConfig { issuer: "https://other".into(), ..idp.clone() });
        assert!(other_issuer.verify(RS256_TOKEN).await.is_err());
        let other_audience = rsa_tokens(AuthConfig { audience: "someone-else".into(), ..idp.clone() });
        assert!(other_audience.verify(RS256_TOKEN).await.is_err());
        let only_ps = rsa_tokens(AuthConfig { algorithms: vec!["PS256".into()], ..idp.clone() });
        assert!(only_ps.verify(RS256_TOKEN).await.is_err(), "outside the allow-list");
        // HS256 is not accepted by default once an identity provider is configured.
        let local = Tokens::from_secret(b"local").issue("alice", Duration::from_secs(60)).unwrap();
        assert!(tokens.verify(&local).await.is_err());
        assert!(tokens.issue("alice", Duration::from_secs(60)).is_err(), "rampart token says why it cannot");
    }

    #[test]
    fn none_and_unknown_algorithms_are_configuration_errors() {
        let config = |names: &[&str]| AuthConfig {
            algorithms: names.iter().map(|name| (*name).to_owned()).collect(),
            ..AuthConfig::default()
        };
        assert!(config(&["none"]).validate().unwrap_err().contains("never"));
        assert!(config(&["HS999"]).validate().unwrap_err().contains("unknown algorithm"));
        assert!(config(&["RS256"]).validate().unwrap_err().contains("neither"));
        assert!(config(&["HS256"]).validate().is_ok());
    }

    #[actix_rt::test]
    async fn generated_secret_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = Tokens::load(&AuthConfig::default(), dir.path()).unwrap();
        let token = first.issue("bob", Duration::from_secs(60)).unwrap();
        let second = Tokens::load(&AuthConfig::default(), dir.path()).unwrap();
        assert_eq!(second.verify(&token).await.unwrap(), "bob");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("jwt_secret")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
