//! Public keys that verify identity-provider tokens: parsed from a JWKS document or a PEM file.
//!
//! Owns: the mapping from a key to the algorithms it may verify. Must never: accept a symmetric
//! (`oct`) key from a JWKS or a PEM file (an HMAC check with a public key is the classic
//! algorithm-confusion attack), or a key whose declared use is encryption.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// RSA keys verify PKCS#1 v1.5 and PSS signatures.
const RSA_ALGORITHMS: [Algorithm; 6] =
    [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::PS256, Algorithm::PS384, Algorithm::PS512];

/// Whether `algorithm` is an HMAC (shared-secret) algorithm.
pub fn is_hmac(algorithm: Algorithm) -> bool {
    matches!(algorithm, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// A public key and the algorithms it may verify.
pub struct VerifyingKey {
    /// The JWK's `kid`; `None` for a PEM key (which then verifies tokens whatever their `kid`).
    pub kid: Option<String>,
    algorithms: Vec<Algorithm>,
    pub key: DecodingKey,
}

impl VerifyingKey {
    pub fn accepts(&self, algorithm: Algorithm) -> bool {
        self.algorithms.contains(&algorithm)
    }

    /// One JWK of a key set. A declared `alg` narrows the key to that algorithm.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, String> {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            return Err("an encryption key (use: enc)".into());
        }
        let (algorithms, key) = match &jwk.algorithm {
            AlgorithmParameters::RSA(params) => {
                (RSA_ALGORITHMS.to_vec(), DecodingKey::from_rsa_components(&params.n, &params.e))
            }
            AlgorithmParameters::EllipticCurve(params) => {
                let algorithm = match params.curve {
                    EllipticCurve::P256 => Algorithm::ES256,
                    EllipticCurve::P384 => Algorithm::ES384,
                    ref other => return Err(format!("unsupported curve {other:?}")),
                };
                (vec![algorithm], DecodingKey::from_ec_components(&params.x, &params.y))
            }
            AlgorithmParameters::OctetKeyPair(params) => {
                if params.curve != EllipticCurve::Ed25519 {
                    return Err(format!("unsupported curve {:?}", params.curve));
                }
                (vec![Algorithm::EdDSA], DecodingKey::from_ed_components(&params.x))
            }
            AlgorithmParameters::OctetKey(_) => return Err("a symmetric key (kty: oct) is never accepted".into()),
        };
        let key = key.map_err(|error| format!("bad key material: {error}"))?;
        let algorithms = match jwk.common.key_algorithm {
            Some(declared) => {
                let declared: Algorithm = format!("{declared:?}")
                    .parse()
                    .map_err(|_| format!("alg {declared:?} is not a signature algorithm"))?;
                if !algorithms.contains(&declared) {
                    return Err(format!("alg {declared:?} does not fit the key type"));
                }
                vec![declared]
            }
            None => algorithms,
        };
        Ok(Self { kid: jwk.common.key_id.clone(), algorithms, key })
    }

    /// A PEM public key (SPKI `PUBLIC KEY`, or PKCS#1 `RSA PUBLIC KEY`): RSA, EC or Ed25519.
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let (algorithms, key) = if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            (RSA_ALGORITHMS.to_vec(), key)
        } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            (vec![Algorithm::ES256, Algorithm::ES384], key)
        } else if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            (vec![Algorithm::EdDSA], key)
        } else {
            return Err("not a PEM-encoded RSA, EC or Ed25519 public key".into());
        };
        Ok(Self { kid: None, algorithms, key })
    }
}

/// The usable signing keys of a JWKS document, and a line for each key that was skipped.
pub fn parse_jwks(document: &[u8]) -> Result<(Vec<VerifyingKey>, Vec<String>), String> {
    #[derive(serde::Deserialize)]
    struct KeySet {
        keys: Vec<serde_json::Value>,
    }
    let set: KeySet = serde_json::from_slice(document).map_err(|error| format!("not a JWKS document: {error}"))?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (index, value) in set.keys.into_iter().enumerate() {
        let kid = value.get("kid").and_then(|kid| kid.as_str()).unwrap_or("-").to_owned();
        let parsed = serde_json::from_value::<Jwk>(value)
            .map_err(|error| format!("unreadable JWK: {error}"))
            .and_then(|jwk| VerifyingKey::from_jwk(&jwk));
        match parsed {
            Ok(key) => keys.push(key),
            Err(why) => skipped.push(format!("key {index} (kid {kid}): {why}")),
        }
    }
    Ok((keys, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_keys_get_the_algorithms_of_their_type_and_oct_keys_are_refused() {
        let document = br#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0","kid":"hmac"},
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"ed"},
            {"kty":"EC","crv":"P-256","kid":"ec","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"RSA","kid":"enc","use":"enc","n":"sXch","e":"AQAB"},
            {"kty":"WAT","kid":"odd"}
        ]}"#;
        let (keys, skipped) = parse_jwks(document).unwrap();
        let kids: Vec<_> = keys.iter().map(|key| key.kid.clone().unwrap()).collect();
        assert_eq!(kids, ["ed", "ec"]);
        assert!(keys[0].accepts(Algorithm::EdDSA) && !keys[0].accepts(Algorithm::HS256));
        assert!(keys[1].accepts(Algorithm::ES256) && !keys[1].accepts(Algorithm::ES384));
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(skipped[0].contains("kid hmac") && skipped[0].contains("never accepted"), "{skipped:?}");
        assert!(parse_jwks(b"[]").is_err());
    }

    #[test]
    fn a_declared_alg_narrows_the_key_and_must_fit_it() {
        let narrowed = br#"{"keys":[{"kty":"RSA","alg":"PS256","kid":"r","n":"sXch","e":"AQAB"}]}"#;
        let (keys, _) = parse_jwks(narrowed).unwrap();
        assert!(keys[0].accepts(Algorithm::PS256) && !keys[0].accepts(Algorithm::RS256));
        let misfit = br#"{"keys":[{"kty":"RSA","alg":"HS256","kid":"r","n":"sXch","e":"AQAB"}]}"#;
        let (keys, skipped) = parse_jwks(misfit).unwrap();
        assert!(keys.is_empty() && skipped[0].contains("does not fit"), "{skipped:?}");
    }
}
