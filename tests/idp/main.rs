//! `sallyport-test-idp`: a small, real OpenID provider for the e2e tests. It
//! is a separate HTTP server process so the production verifier talks to it
//! exactly as it would to a real IdP: discovery, JWKS, device authorization
//! (RFC 8628) and token endpoints, with real RS256 / ES256 / EdDSA signatures.
//!
//! Test-only endpoints:
//! - `POST /test/approve {user_code, sub, email?, groups?}` approves a device code.
//! - `POST /test/mint {alg?, kid?, key?, claims?, tamper?, kubernetes?}` mints any
//!   token, including deliberately bad ones (alg `none`, `HS256` keyed with the
//!   RSA public key, expired, wrong iss/aud, unknown kid, rotated-out key).
//! - `POST /test/add_key {alg}` adds a key (returns its kid); `POST
//!   /test/remove_key {kid}` withdraws a key from the JWKS but keeps signing
//!   with it on request (a key "rotated out").
//! - `GET /test/jwks_fetches` counts JWKS downloads (to observe the cache).
//!
//! A Kubernetes-style service-account issuer lives under `/k8s` on the same
//! port (`/k8s/.well-known/openid-configuration`, `/k8s/openid/v1/jwks`); with
//! `--k8s-bearer TOKEN` those two calls demand `Authorization: Bearer TOKEN`,
//! like a cluster that does not expose discovery anonymously.
//!
//! Keys are generated at start with the `openssl` CLI (the crate has no key
//! generation of its own for JOSE).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

struct Key {
    kid: String,
    alg: String,
    enc: EncodingKey,
    jwk: Value,
    public_pem: Vec<u8>,
    published: bool,
}

struct Device {
    device_code: String,
    user_code: String,
    approved: Option<Value>,
    polls: u32,
}

struct Idp {
    base: String,
    client_id: String,
    k8s_bearer: Option<String>,
    dir: PathBuf,
    keys: Mutex<Vec<Key>>,
    devices: Mutex<Vec<Device>>,
    counter: AtomicU64,
    jwks_fetches: AtomicU64,
}

type S = State<Arc<Idp>>;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

impl Idp {
    fn new_key(&self, alg: &str) -> Key {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let kid = format!("{}-{n}", alg.to_ascii_lowercase());
        let path = self.dir.join(format!("{kid}.pem"));
        let p = path.to_str().unwrap();
        match alg {
            "RS256" => openssl(&[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                p,
            ]),
            "ES256" => openssl(&[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                p,
            ]),
            "EdDSA" => openssl(&["genpkey", "-algorithm", "ed25519", "-out", p]),
            other => panic!("unknown alg {other}"),
        };
        let pem = std::fs::read(&path).unwrap();
        let public_pem = openssl(&["pkey", "-in", p, "-pubout"]);
        let (enc, jwk) = match alg {
            "RS256" => {
                let enc = EncodingKey::from_rsa_pem(&pem).unwrap();
                let jwk =
                    jsonwebtoken::jwk::Jwk::from_encoding_key(&enc, Algorithm::RS256).unwrap();
                (enc, serde_json::to_value(jwk).unwrap())
            }
            "ES256" => {
                let enc = EncodingKey::from_ec_pem(&pem).unwrap();
                let jwk =
                    jsonwebtoken::jwk::Jwk::from_encoding_key(&enc, Algorithm::ES256).unwrap();
                (enc, serde_json::to_value(jwk).unwrap())
            }
            _ => {
                let enc = EncodingKey::from_ed_pem(&pem).unwrap();
                let der = openssl(&["pkey", "-in", p, "-pubout", "-outform", "DER"]);
                // SubjectPublicKeyInfo for Ed25519 ends with the 32-byte key.
                let x = &der[der.len() - 32..];
                (
                    enc,
                    json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(x)}),
                )
            }
        };
        let mut jwk = jwk;
        jwk["kid"] = json!(kid);
        jwk["alg"] = json!(alg);
        jwk["use"] = json!("sig");
        Key {
            kid,
            alg: alg.to_string(),
            enc,
            jwk,
            public_pem,
            published: true,
        }
    }

    fn jwks(&self) -> Value {
        let keys = self.keys.lock().unwrap();
        let list: Vec<Value> = keys
            .iter()
            .filter(|k| k.published)
            .map(|k| k.jwk.clone())
            .collect();
        json!({ "keys": list })
    }

    /// Sign `claims` per the mint options.
    fn mint(&self, req: &Value) -> Result<String, String> {
        let alg = req["alg"].as_str().unwrap_or("RS256");
        let keys = self.keys.lock().unwrap();
        let key_alg = match alg {
            "none" | "HS256" => "RS256",
            a => a,
        };
        let key = match req["key"].as_str() {
            Some(kid) => keys.iter().find(|k| k.kid == kid),
            None => keys.iter().find(|k| k.alg == key_alg && k.published),
        }
        .ok_or_else(|| format!("no key for {alg}"))?;
        let kid = req["kid"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| key.kid.clone());
        let k8s = req["kubernetes"].as_bool().unwrap_or(false);
        let t = now();
        let mut claims = json!({
            "iss": if k8s { format!("{}/k8s", self.base) } else { self.base.clone() },
            "aud": if k8s { json!(["sallyport"]) } else { json!(self.client_id) },
            "sub": "alice",
            "iat": t,
            "exp": t + 600,
            "jti": format!("jti-{}", self.counter.fetch_add(1, Ordering::Relaxed)),
        });
        if let Some(extra) = req["claims"].as_object() {
            for (k, v) in extra {
                if v.is_null() {
                    claims.as_object_mut().unwrap().remove(k);
                } else {
                    claims[k] = v.clone();
                }
            }
        }
        let mut token = match alg {
            "none" => {
                let h = URL_SAFE_NO_PAD
                    .encode(json!({"alg": "none", "typ": "JWT", "kid": kid}).to_string());
                let p = URL_SAFE_NO_PAD.encode(claims.to_string());
                format!("{h}.{p}.")
            }
            "HS256" => {
                // The classic key-confusion attack: HMAC keyed with the
                // issuer's RSA public key (which anyone can download).
                let mut h = Header::new(Algorithm::HS256);
                h.kid = Some(kid);
                jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(&key.public_pem))
                    .map_err(|e| e.to_string())?
            }
            _ => {
                let a = match alg {
                    "RS256" => Algorithm::RS256,
                    "ES256" => Algorithm::ES256,
                    _ => Algorithm::EdDSA,
                };
                let mut h = Header::new(a);
                h.kid = Some(kid);
                jsonwebtoken::encode(&h, &claims, &key.enc).map_err(|e| e.to_string())?
            }
        };
        if req["tamper"].as_bool().unwrap_or(false) {
            // Change the payload after signing: the signature no longer matches.
            let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
            claims["sub"] = json!("mallory");
            parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
            token = parts.join(".");
        }
        Ok(token)
    }
}

async fn discovery(State(idp): S) -> Json<Value> {
    let b = &idp.base;
    Json(json!({
        "issuer": b,
        "authorization_endpoint": format!("{b}/authorize"),
        "token_endpoint": format!("{b}/token"),
        "device_authorization_endpoint": format!("{b}/device/code"),
        "jwks_uri": format!("{b}/jwks"),
        "response_types_supported": ["code", "id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
        "grant_types_supported": ["urn:ietf:params:oauth:grant-type:device_code"],
    }))
}

async fn jwks(State(idp): S) -> Json<Value> {
    idp.jwks_fetches.fetch_add(1, Ordering::Relaxed);
    Json(idp.jwks())
}

fn k8s_authorized(idp: &Idp, headers: &HeaderMap) -> bool {
    match &idp.k8s_bearer {
        None => true,
        Some(t) => headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == format!("Bearer {t}")),
    }
}

async fn k8s_discovery(State(idp): S, headers: HeaderMap) -> Response {
    if !k8s_authorized(&idp, &headers) {
        return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
    }
    let b = format!("{}/k8s", idp.base);
    // What a Kubernetes API server serves: no authorization endpoint.
    Json(json!({
        "issuer": b,
        "jwks_uri": format!("{b}/openid/v1/jwks"),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    }))
    .into_response()
}

async fn k8s_jwks(State(idp): S, headers: HeaderMap) -> Response {
    if !k8s_authorized(&idp, &headers) {
        return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
    }
    idp.jwks_fetches.fetch_add(1, Ordering::Relaxed);
    Json(idp.jwks()).into_response()
}

async fn device_code(State(idp): S, Form(f): Form<HashMap<String, String>>) -> Response {
    if f.get("client_id") != Some(&idp.client_id) {
        return oauth_error("invalid_client");
    }
    let n = idp.counter.fetch_add(1, Ordering::Relaxed);
    let user_code = format!("WDJB-{n:04}");
    let device_code = format!("dev-{n}-{}", now());
    idp.devices.lock().unwrap().push(Device {
        device_code: device_code.clone(),
        user_code: user_code.clone(),
        approved: None,
        polls: 0,
    });
    let b = &idp.base;
    Json(json!({
        "device_code": device_code,
        "user_code": user_code,
        "verification_uri": format!("{b}/device"),
        "verification_uri_complete": format!("{b}/device?user_code={user_code}"),
        "expires_in": 300,
        "interval": 1,
    }))
    .into_response()
}

fn oauth_error(code: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": code }))).into_response()
}

async fn token(State(idp): S, Form(f): Form<HashMap<String, String>>) -> Response {
    if f.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:device_code")
    {
        return oauth_error("unsupported_grant_type");
    }
    if f.get("client_id") != Some(&idp.client_id) {
        return oauth_error("invalid_client");
    }
    let code = f.get("device_code").cloned().unwrap_or_default();
    let claims = {
        let mut devices = idp.devices.lock().unwrap();
        let Some(d) = devices.iter_mut().find(|d| d.device_code == code) else {
            return oauth_error("invalid_grant");
        };
        d.polls += 1;
        // RFC 8628 §3.5: the second poll is answered with slow_down, so the
        // client's handling of it is exercised every time.
        if d.polls == 2 {
            return oauth_error("slow_down");
        }
        match &d.approved {
            None => return oauth_error("authorization_pending"),
            Some(c) => c.clone(),
        }
    };
    idp.devices
        .lock()
        .unwrap()
        .retain(|d| d.device_code != code);
    match idp.mint(&json!({ "alg": "RS256", "claims": claims })) {
        Ok(id_token) => Json(json!({
            "access_token": format!("opaque-{}", now()),
            "id_token": id_token,
            "token_type": "Bearer",
            "expires_in": 600,
        }))
        .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

async fn approve(State(idp): S, Json(v): Json<Value>) -> Response {
    let code = v["user_code"].as_str().unwrap_or_default().to_string();
    let mut claims = json!({ "sub": v["sub"].clone() });
    for k in ["email", "groups", "exp"] {
        if !v[k].is_null() {
            claims[k] = v[k].clone();
        }
    }
    let mut devices = idp.devices.lock().unwrap();
    match devices.iter_mut().find(|d| d.user_code == code) {
        Some(d) => {
            d.approved = Some(claims);
            Json(json!({"ok": true})).into_response()
        }
        None => (StatusCode::NOT_FOUND, "no such user code").into_response(),
    }
}

async fn mint(State(idp): S, Json(v): Json<Value>) -> Response {
    match idp.mint(&v) {
        Ok(t) => Json(json!({ "token": t })).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

async fn add_key(State(idp): S, Json(v): Json<Value>) -> Json<Value> {
    let alg = v["alg"].as_str().unwrap_or("RS256").to_string();
    let key = idp.new_key(&alg);
    let kid = key.kid.clone();
    idp.keys.lock().unwrap().push(key);
    Json(json!({ "kid": kid }))
}

async fn remove_key(State(idp): S, Json(v): Json<Value>) -> Json<Value> {
    let kid = v["kid"].as_str().unwrap_or_default();
    let mut keys = idp.keys.lock().unwrap();
    let mut found = false;
    for k in keys.iter_mut().filter(|k| k.kid == kid) {
        k.published = false;
        found = true;
    }
    Json(json!({ "removed": found }))
}

async fn keys_list(State(idp): S) -> Json<Value> {
    let keys = idp.keys.lock().unwrap();
    Json(json!(
        keys.iter()
            .map(|k| json!({"kid": k.kid, "alg": k.alg, "published": k.published}))
            .collect::<Vec<_>>()
    ))
}

async fn fetches(State(idp): S) -> Json<Value> {
    Json(json!({ "jwks_fetches": idp.jwks_fetches.load(Ordering::Relaxed) }))
}

#[tokio::main]
async fn main() {
    let mut port: u16 = 0;
    let mut client_id = "sallyport-cli".to_string();
    let mut k8s_bearer = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().unwrap().parse().unwrap(),
            "--client-id" => client_id = args.next().unwrap(),
            "--k8s-bearer" => k8s_bearer = Some(args.next().unwrap()),
            other => panic!("unknown argument {other}"),
        }
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let dir = std::env::temp_dir().join(format!("sallyport-idp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let idp = Arc::new(Idp {
        base: format!("http://127.0.0.1:{}", addr.port()),
        client_id,
        k8s_bearer,
        dir: dir.clone(),
        keys: Mutex::new(Vec::new()),
        devices: Mutex::new(Vec::new()),
        counter: AtomicU64::new(1),
        jwks_fetches: AtomicU64::new(0),
    });
    for alg in ["RS256", "ES256", "EdDSA"] {
        let k = idp.new_key(alg);
        idp.keys.lock().unwrap().push(k);
    }
    let app = Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/k8s/.well-known/openid-configuration", get(k8s_discovery))
        .route("/k8s/openid/v1/jwks", get(k8s_jwks))
        .route("/device/code", post(device_code))
        .route("/token", post(token))
        .route("/test/approve", post(approve))
        .route("/test/mint", post(mint))
        .route("/test/add_key", post(add_key))
        .route("/test/remove_key", post(remove_key))
        .route("/test/keys", get(keys_list))
        .route("/test/jwks_fetches", get(fetches))
        .with_state(idp);
    println!("LISTENING {}", addr.port());
    axum::serve(listener, app).await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
