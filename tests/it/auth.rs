//! Identity-provider tokens on the real binary: a JWKS served by the test on 127.0.0.1 with keys
//! generated at test time (ring), tokens signed with them (jsonwebtoken), checked on HTTP and on
//! `/ws`. Every refusal is a 401, whatever was wrong with the token.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::{web, App, HttpResponse, HttpServer};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

use crate::chat_client::{ChatServer, ADMIN_TOKEN};
use crate::support::{eventually, metric_value, scrape, RampartProcess};

const ISSUER: &str = "https://idp.test/realms/rampart";
const AUDIENCE: &str = "rampart-api";

/// An ES256 signing key made now, and its public JWK.
struct EcKey {
    kid: String,
    pkcs8: Vec<u8>,
    jwk: Value,
}

impl EcKey {
    fn generate(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("generate P-256");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).expect("parse");
        // Uncompressed point: 0x04 || x || y.
        let point = pair.public_key().as_ref();
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        });
        Self { kid: kid.to_owned(), pkcs8: pkcs8.as_ref().to_vec(), jwk }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(&self.pkcs8)).expect("sign")
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn claims(user: &str) -> Value {
    json!({"sub": user, "exp": now() + 600, "iat": now(), "iss": ISSUER, "aud": AUDIENCE, "jti": "j1", "azp": "web"})
}

/// A JWKS endpoint on 127.0.0.1:0 whose key set and health the test controls.
#[derive(Clone, Default)]
struct IdentityProvider {
    keys: Arc<Mutex<Vec<Value>>>,
    failing: Arc<Mutex<bool>>,
    fetches: Arc<AtomicUsize>,
}

async fn serve_jwks(idp: web::Data<IdentityProvider>) -> HttpResponse {
    idp.fetches.fetch_add(1, Ordering::SeqCst);
    if *idp.failing.lock() {
        return HttpResponse::ServiceUnavailable().finish();
    }
    HttpResponse::Ok().json(json!({ "keys": *idp.keys.lock() }))
}

fn start_idp(idp: IdentityProvider) -> (String, rampart::tasks::OwnedTask<std::io::Result<()>>) {
    let data = web::Data::new(idp);
    let server = HttpServer::new(move || App::new().app_data(data.clone()).route("/certs", web::get().to(serve_jwks)))
        .workers(1)
        .bind(("127.0.0.1", 0))
        .expect("bind idp");
    let address = server.addrs()[0];
    (format!("http://{address}/certs"), rampart::tasks::spawn_owned("test.idp", server.run()))
}

/// The status of an authenticated request made with `token` (creating a conversation).
async fn http_status(server: &ChatServer, token: &str) -> u16 {
    server.http.post(&server.url("/api/conversations"), Some(token), json!({"members": [], "title": "t"})).await.0
}

/// The status of the `/ws` handshake with `?token=`.
async fn ws_status(server: &ChatServer, token: &str) -> u16 {
    let url = server.url(&format!("/ws?token={token}"));
    match server.ws_url(&url, None).await {
        Ok(_) => 101,
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => status.as_u16(),
        Err(error) => panic!("ws handshake failed oddly: {error}"),
    }
}

async fn assert_refused(server: &ChatServer, what: &str, token: &str) {
    assert_eq!(http_status(server, token).await, 401, "HTTP accepted {what}");
    assert_eq!(ws_status(server, token).await, 401, "/ws accepted {what}");
}

fn idp_server(jwks_url: &str, extra: &[(&str, &str)]) -> ChatServer {
    let mut env = vec![
        ("RAMPART__ADMIN__TOKEN", ADMIN_TOKEN),
        ("RAMPART__AUTH__JWKS_URL", jwks_url),
        ("RAMPART__AUTH__ISSUER", ISSUER),
        ("RAMPART__AUTH__AUDIENCE", AUDIENCE),
    ];
    env.extend_from_slice(extra);
    ChatServer::wrap(RampartProcess::start(&env))
}

#[actix_rt::test]
async fn identity_provider_tokens_pass_and_every_bad_one_is_401_on_http_and_ws() {
    let key = EcKey::generate("k1");
    let idp = IdentityProvider::default();
    idp.keys.lock().push(key.jwk.clone());
    let (jwks_url, _idp_task) = start_idp(idp.clone());
    let server = idp_server(&jwks_url, &[("RAMPART__AUTH__JWKS_MIN_REFRESH_INTERVAL", "1h")]);
    server.create_user("alice").await;

    let good = key.sign(&claims("alice"));
    assert_eq!(http_status(&server, &good).await, 201);
    assert_eq!(ws_status(&server, &good).await, 101);

    let other_key = EcKey::generate("k1");
    assert_refused(&server, "a token signed by another key with the same kid", &other_key.sign(&claims("alice"))).await;
    let unknown_kid = EcKey::generate("k-unknown");
    assert_refused(&server, "an unknown kid", &unknown_kid.sign(&claims("alice"))).await;
    let mut wrong_issuer = claims("alice");
    wrong_issuer["iss"] = json!("https://evil.test");
    assert_refused(&server, "a wrong issuer", &key.sign(&wrong_issuer)).await;
    let mut wrong_audience = claims("alice");
    wrong_audience["aud"] = json!(["someone-else"]);
    assert_refused(&server, "a wrong audience", &key.sign(&wrong_audience)).await;
    let mut expired = claims("alice");
    expired["exp"] = json!(now() - 3600);
    assert_refused(&server, "an expired token", &key.sign(&expired)).await;
    let mut not_yet = claims("alice");
    not_yet["nbf"] = json!(now() + 3600);
    assert_refused(&server, "a token not valid yet", &key.sign(&not_yet)).await;
    let mut no_subject = claims("alice");
    no_subject.as_object_mut().unwrap().remove("sub");
    assert_refused(&server, "a token without sub", &key.sign(&no_subject)).await;

    // alg: none, with and without a signature.
    let encode = |value: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap());
    let none_header = encode(&json!({"alg": "none", "typ": "JWT", "kid": "k1"}));
    let body = encode(&claims("alice"));
    assert_refused(&server, "alg none", &format!("{none_header}.{body}.")).await;
    let signature = good.rsplit('.').next().unwrap();
    assert_refused(&server, "alg none with a signature", &format!("{none_header}.{body}.{signature}")).await;

    // Algorithm confusion: HS256 with the public key (as JWK JSON, and as its raw x) as secret.
    for secret in [serde_json::to_vec(&key.jwk).unwrap(), key.jwk["x"].as_str().unwrap().as_bytes().to_vec()] {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let forged = jsonwebtoken::encode(&header, &claims("alice"), &EncodingKey::from_secret(&secret)).unwrap();
        assert_refused(&server, "HS256 signed with the public key", &forged).await;
    }
    assert_refused(&server, "garbage", "not-a-jwt").await;

    // Unknown kids are rate-limited: within jwks_min_refresh_interval (1h here) of the fetch at
    // start, the forged tokens above caused no fetch at all.
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 1, "only the fetch at start");
    let metrics = scrape(&server.process).await;
    assert_eq!(metric_value(&metrics, "rampart_jwks_keys"), Some(1.0));
}

#[actix_rt::test]
async fn a_rotated_key_is_fetched_on_first_use_and_a_failing_idp_keeps_the_last_good_keys() {
    let first = EcKey::generate("2026-a");
    let idp = IdentityProvider::default();
    idp.keys.lock().push(first.jwk.clone());
    let (jwks_url, _idp_task) = start_idp(idp.clone());
    let server = idp_server(&jwks_url, &[("RAMPART__AUTH__JWKS_MIN_REFRESH_INTERVAL", "0s")]);
    server.create_user("bob").await;
    assert_eq!(http_status(&server, &first.sign(&claims("bob"))).await, 201);

    // The provider rotates: a token with the new kid triggers a fetch and passes.
    let second = EcKey::generate("2026-b");
    idp.keys.lock().push(second.jwk.clone());
    let fetches = idp.fetches.load(Ordering::SeqCst);
    assert_eq!(http_status(&server, &second.sign(&claims("bob"))).await, 201);
    assert_eq!(idp.fetches.load(Ordering::SeqCst), fetches + 1, "one fetch for the new kid");
    assert_eq!(ws_status(&server, &second.sign(&claims("bob"))).await, 101);

    // The provider fails: an unknown kid cannot be fetched, and the known keys keep working.
    *idp.failing.lock() = true;
    let third = EcKey::generate("2026-c");
    assert_eq!(http_status(&server, &third.sign(&claims("bob"))).await, 401);
    assert_eq!(http_status(&server, &first.sign(&claims("bob"))).await, 201);
    assert_eq!(http_status(&server, &second.sign(&claims("bob"))).await, 201);
    eventually("the failed fetch is counted", Duration::from_secs(10), || async {
        metric_value(&scrape(&server.process).await, "rampart_jwks_refreshes_total{outcome=\"error\"}")
            .is_some_and(|failures| failures >= 1.0)
    })
    .await;
    assert!(server.process.output().contains("JWKS fetch failed; keeping the last good keys"));
}

#[actix_rt::test]
async fn a_pem_public_key_verifies_eddsa_tokens_and_hs256_needs_listing() {
    let rng = SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("generate Ed25519");
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("parse");
    // SubjectPublicKeyInfo for Ed25519: a fixed 12-byte prefix, then the 32-byte key.
    let mut spki = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    spki.extend_from_slice(pair.public_key().as_ref());
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(&spki)
    );
    let dir = tempfile::tempdir().unwrap();
    let pem_path = dir.path().join("idp.pem");
    std::fs::write(&pem_path, pem).unwrap();
    let pem_path = pem_path.to_str().unwrap();
    let server = ChatServer::start(&[
        ("RAMPART__AUTH__PUBLIC_KEY_FILE", pem_path),
        ("RAMPART__AUTH__ALGORITHMS", "[EdDSA, HS256]"),
    ]);
    server.create_user("carol").await;
    let claims = json!({"sub": "carol", "exp": now() + 600});
    let eddsa =
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &EncodingKey::from_ed_der(pkcs8.as_ref()))
            .expect("sign");
    assert_eq!(http_status(&server, &eddsa).await, 201);
    assert_eq!(ws_status(&server, &eddsa).await, 101);
    // HS256 with the local secret still works because it is listed.
    assert_eq!(http_status(&server, &server.token("carol")).await, 201);

    let es256 = EcKey::generate("x").sign(&claims);
    assert_refused(&server, "an algorithm outside the list", &es256).await;
}
