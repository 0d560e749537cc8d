//! `JWKS_URL` mode end to end: a JWKS endpoint on loopback (a std TcpListener thread), synchrod
//! in-process against the test cluster, tokens signed here with ring (RS256 with the committed
//! test-only RSA key, ES256 with a P-256 key generated per run).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair, RsaPublicKeyComponents};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::capture::wait_for;
use crate::client::{get, post, Resp};
use crate::harness::TestDb;
use crate::server::start;

const TABLE: &str = "CREATE TABLE items (id uuid PRIMARY KEY, user_id text, title text,
    updated_at timestamptz NOT NULL DEFAULT now(), deleted_at timestamptz)";

/// Test-only RSA key (see tests/fixtures/README.md).
const RSA_PKCS8: &[u8] = include_bytes!("../fixtures/jwks-test-rsa-2048.pk8.der");

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A key we sign with, and its public JWK.
enum Signer {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

impl Signer {
    fn rsa() -> Signer {
        Signer::Rsa(RsaKeyPair::from_pkcs8(RSA_PKCS8).expect("fixture key"))
    }

    fn ec() -> Signer {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        Signer::Ec(EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap())
    }

    fn alg(&self) -> &'static str {
        match self {
            Signer::Rsa(_) => "RS256",
            Signer::Ec(_) => "ES256",
        }
    }

    fn jwk(&self, kid: &str) -> Value {
        match self {
            Signer::Rsa(pair) => {
                let public: RsaPublicKeyComponents<Vec<u8>> = pair.public().into();
                json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64(&public.n), "e": b64(&public.e)})
            }
            Signer::Ec(pair) => {
                let point = pair.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(&point[1..33]), "y": b64(&point[33..65])})
            }
        }
    }

    fn sign(&self, input: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            Signer::Rsa(pair) => {
                let mut sig = vec![0; pair.public().modulus_len()];
                pair.sign(&signature::RSA_PKCS1_SHA256, &rng, input, &mut sig).unwrap();
                sig
            }
            Signer::Ec(pair) => pair.sign(&rng, input).unwrap().as_ref().to_vec(),
        }
    }

    /// A token with this key's algorithm and `kid` (none when `None`).
    fn token(&self, kid: Option<&str>, claims: &Value) -> String {
        let mut header = json!({"alg": self.alg(), "typ": "JWT"});
        if let Some(kid) = kid {
            header["kid"] = json!(kid);
        }
        synchro::jwt::encode(&header, claims, |input| self.sign(input))
    }
}

fn hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
    synchro::jwt::encode(header, claims, |input| {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap();
        mac.update(input);
        mac.finalize().into_bytes().to_vec()
    })
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// What the JWKS endpoint currently answers.
struct Served {
    status: u16,
    body: String,
    cache_control: Option<String>,
    chunked: bool,
    /// How long the endpoint takes to answer.
    delay: Duration,
}

/// A JWKS endpoint on loopback; counts the requests it answers. Stopped on drop.
struct JwksServer {
    addr: SocketAddr,
    scheme: &'static str,
    served: Arc<Mutex<Served>>,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl JwksServer {
    fn start(status: u16, keys: &[Value]) -> JwksServer {
        JwksServer::start_with(status, keys, None)
    }

    /// The endpoint over HTTPS with the test-only `localhost` certificate (signed by
    /// `tests/fixtures/tls-test-ca.pem`).
    #[cfg(feature = "tls")]
    fn start_https(keys: &[Value]) -> JwksServer {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(fixture("tls-test-localhost.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(fixture("tls-test-localhost.key.pem")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        JwksServer::start_with(200, keys, Some(Arc::new(config)))
    }

    fn start_with(status: u16, keys: &[Value], tls: Option<ServerTls>) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(Mutex::new(Served {
            status,
            body: json!({ "keys": keys }).to_string(),
            cache_control: None,
            chunked: false,
            delay: Duration::ZERO,
        }));
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, h, st) = (served.clone(), hits.clone(), stop.clone());
        let scheme = if tls.is_some() { "https" } else { "http" };

        let thread = thread::Builder::new()
            .name("test-jwks".into())
            .spawn(move || {
                // Blocking accept; Drop sets `stop` and connects once to wake it.
                for stream in listener.incoming() {
                    if st.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    h.fetch_add(1, Ordering::SeqCst);
                    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    match &tls {
                        None => answer(stream, &s),
                        Some(config) => answer_tls(stream, config, &s),
                    }
                }
            })
            .unwrap();
        JwksServer { addr, scheme, served, hits, stop, thread: Some(thread) }
    }

    fn url(&self) -> String {
        match self.scheme {
            "https" => format!("https://localhost:{}/.well-known/jwks.json", self.addr.port()),
            _ => format!("http://{}/.well-known/jwks.json", self.addr),
        }
    }

    fn serve(&self, status: u16, keys: &[Value], cache_control: Option<&str>, chunked: bool) {
        let mut s = self.served.lock().unwrap();
        *s = Served {
            status,
            body: json!({ "keys": keys }).to_string(),
            cache_control: cache_control.map(str::to_string),
            chunked,
            delay: s.delay,
        };
    }

    /// Makes every later answer take `delay`.
    fn slow_down(&self, delay: Duration) {
        self.served.lock().unwrap().delay = delay;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(feature = "tls")]
type ServerTls = Arc<rustls::ServerConfig>;
#[cfg(not(feature = "tls"))]
type ServerTls = std::convert::Infallible;

#[cfg(feature = "tls")]
fn answer_tls(stream: TcpStream, config: &ServerTls, served: &Mutex<Served>) {
    let conn = rustls::ServerConnection::new(config.clone()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, stream);
    answer(&mut tls, served);
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

#[cfg(not(feature = "tls"))]
fn answer_tls(_: TcpStream, config: &ServerTls, _: &Mutex<Served>) {
    match *config {}
}

fn answer(mut stream: impl Read + Write, served: &Mutex<Served>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let delay = served.lock().unwrap().delay;
    thread::sleep(delay);
    let s = served.lock().unwrap();
    let mut out = format!("HTTP/1.1 {} X\r\nContent-Type: application/json\r\nConnection: close\r\n", s.status);
    if let Some(cc) = &s.cache_control {
        out.push_str(&format!("Cache-Control: {cc}\r\n"));
    }
    if s.chunked {
        // Two chunks, to exercise the client's de-chunking end to end.
        let (a, b) = s.body.split_at(s.body.len() / 2);
        out.push_str(&format!(
            "Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
        ));
    } else {
        out.push_str(&format!("Content-Length: {}\r\n\r\n{}", s.body.len(), s.body));
    }
    let _ = stream.write_all(out.as_bytes());
}

/// synchrod in JWKS mode on its own database and replication slot.
fn start_synchrod(db: &TestDb, jwks: &JwksServer, extra: &[(&str, &str)]) -> synchro::server::Running {
    db.execute(TABLE);
    let (url, slot) = (jwks.url(), format!("j_{}", db.name));
    let mut vars = vec![("SYNC_TABLES", "items"), ("JWKS_URL", url.as_str()), ("SLOT_NAME", slot.as_str())];
    vars.extend_from_slice(extra);
    start(db, &vars)
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

fn tables(addr: SocketAddr, token: &str) -> Resp {
    get(addr, "/sync/tables", &bearer(token))
}

fn refused(r: &Resp, message: &str, case: &str) {
    assert_eq!(r.status, 401, "{case}: {}", r.body);
    assert_eq!(r.json()["error"], message, "{case}");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{case}");
}

#[test]
fn rs256_and_es256_tokens_and_every_refusal() {
    let rsa = Signer::rsa();
    let ec = Signer::ec();
    // The symmetric key must be ignored: HS* tokens never verify in JWKS mode.
    let keys = [rsa.jwk("rsa1"), ec.jwk("ec1"), json!({"kty": "oct", "kid": "sym", "k": b64(b"shared-secret")})];
    let jwks = JwksServer::start(200, &keys);
    jwks.serve(200, &keys, None, true);
    let db = TestDb::new();
    let server = start_synchrod(
        &db,
        &jwks,
        &[
            ("JWKS_REFRESH_SECS", "3600"),
            ("JWT_ISSUER", "https://idp.test"),
            ("JWT_AUDIENCE", "synchro-app"),
            ("JWT_LEEWAY_SECS", "5"),
        ],
    );
    let addr = server.addr;
    assert_eq!(jwks.hits(), 1, "keys fetched once at startup");
    let t = now();
    let claims = |extra: Value| {
        let mut c = json!({"sub": "Alice", "iss": "https://idp.test", "aud": ["other", "synchro-app"], "exp": t + 600});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };

    // Accepted: RS256 and ES256 by kid, RS256 without kid (one RSA key in the set), a numeric
    // user claim, a token without exp.
    for (case, token) in [
        ("rs256", rsa.token(Some("rsa1"), &claims(json!({})))),
        ("es256", ec.token(Some("ec1"), &claims(json!({})))),
        ("rs256 without kid", rsa.token(None, &claims(json!({})))),
        ("es256 without kid", ec.token(None, &claims(json!({})))),
        ("no exp", rsa.token(Some("rsa1"), &claims(json!({"exp": null})))),
        ("audience as a string", rsa.token(Some("rsa1"), &claims(json!({"aud": "synchro-app"})))),
    ] {
        let r = tables(addr, &token);
        assert_eq!(r.status, 200, "{case}: {}", r.body);
    }
    let numeric = ec.token(Some("ec1"), &claims(json!({"sub": 42})));
    let r =
        post(addr, "/sync/register", &bearer(&numeric), br#"{"client_id":"d1","schema_version":0,"schema_hash":""}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    let upper = rsa.token(Some("rsa1"), &claims(json!({})));
    let r = post(addr, "/sync/register", &bearer(&upper), br#"{"client_id":"d2","schema_version":0,"schema_hash":""}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    let users: Vec<String> = db
        .client()
        .query("SELECT user_id FROM sync_clients ORDER BY client_id", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(users, ["42", "alice"], "numeric claim as text, ids lower-cased");

    // Refused, each with the contract's message.
    let good = rsa.token(Some("rsa1"), &claims(json!({})));
    let (h, rest) = good.split_once('.').unwrap();
    let (p, s) = rest.split_once('.').unwrap();
    let tampered_payload = format!("{h}.{}.{s}", b64(claims(json!({"sub": "mallory"})).to_string().as_bytes()));
    let mut sig = URL_SAFE_NO_PAD.decode(s).unwrap();
    sig[7] ^= 0x40;
    let tampered_signature = format!("{h}.{p}.{}", b64(&sig));
    let ec_good = ec.token(Some("ec1"), &claims(json!({})));
    let (eh, erest) = ec_good.split_once('.').unwrap();
    let (ep, es) = erest.split_once('.').unwrap();
    let mut esig = URL_SAFE_NO_PAD.decode(es).unwrap();
    esig[40] ^= 1;
    let ec_tampered = format!("{eh}.{ep}.{}", b64(&esig));
    let none = synchro::jwt::encode(&json!({"alg": "none", "kid": "rsa1"}), &claims(json!({})), |_| Vec::new());
    // The classic confusion attack: HS256 keyed with the RSA public key the attacker knows.
    let rsa_public = match &rsa {
        Signer::Rsa(pair) => pair.public().as_ref().to_vec(),
        Signer::Ec(_) => unreachable!(),
    };
    let jwk_text = rsa.jwk("rsa1").to_string();
    let hs_with_public_key = hs256(&json!({"alg": "HS256", "kid": "rsa1"}), &claims(json!({})), &rsa_public);
    let hs_with_jwk_text = hs256(&json!({"alg": "HS256"}), &claims(json!({})), jwk_text.as_bytes());
    let hs_with_oct_key = hs256(&json!({"alg": "HS256", "kid": "sym"}), &claims(json!({})), b"shared-secret");
    // An RSA-signed token claiming the EC key, and the other way round.
    let rs_with_ec_kid = rsa.token(Some("ec1"), &claims(json!({})));
    let es_with_rsa_kid = ec.token(Some("rsa1"), &claims(json!({})));
    let other_rsa_header = rsa.token(None, &claims(json!({})));
    let rs384_header = {
        let (_, rest) = other_rsa_header.split_once('.').unwrap();
        format!("{}.{rest}", b64(br#"{"alg":"RS384","kid":"rsa1"}"#))
    };
    let invalid = "invalid token";
    let cases: Vec<(&str, String, &str)> = vec![
        ("expired", rsa.token(Some("rsa1"), &claims(json!({"exp": t - 60}))), invalid),
        ("expired es256", ec.token(Some("ec1"), &claims(json!({"exp": t - 60}))), invalid),
        ("not yet valid", rsa.token(Some("rsa1"), &claims(json!({"nbf": t + 3600}))), invalid),
        ("wrong issuer", rsa.token(Some("rsa1"), &claims(json!({"iss": "https://evil.test"}))), invalid),
        ("missing issuer", rsa.token(Some("rsa1"), &claims(json!({"iss": null}))), invalid),
        ("wrong audience", rsa.token(Some("rsa1"), &claims(json!({"aud": ["other"]}))), invalid),
        ("tampered payload", tampered_payload, invalid),
        ("tampered signature", tampered_signature, invalid),
        ("tampered es256 signature", ec_tampered, invalid),
        ("alg none", none, invalid),
        ("HS256 keyed with the RSA public key", hs_with_public_key, invalid),
        ("HS256 keyed with the JWK text", hs_with_jwk_text, invalid),
        ("HS256 with the set's oct key", hs_with_oct_key, invalid),
        ("RS256 naming the EC key", rs_with_ec_kid, invalid),
        ("ES256 naming the RSA key", es_with_rsa_kid, invalid),
        ("RS384 header on an RS256 key", rs384_header, invalid),
        ("unknown kid", rsa.token(Some("rsa-next"), &claims(json!({}))), invalid),
        ("garbage", "not.a.token".into(), invalid),
        ("missing user claim", rsa.token(Some("rsa1"), &claims(json!({"sub": null}))), "token missing user claim"),
        ("empty user claim", ec.token(Some("ec1"), &claims(json!({"sub": ""}))), "token missing user claim"),
        ("fractional user claim", ec.token(Some("ec1"), &claims(json!({"sub": 4.5}))), "token missing user claim"),
    ];
    for (case, token, message) in &cases {
        refused(&tables(addr, token), message, case);
    }
    let not_object = synchro::jwt::encode(&json!({"alg": "RS256", "kid": "rsa1"}), &json!(["x"]), |i| rsa.sign(i));
    refused(&tables(addr, &not_object), "invalid token claims", "claims not an object");
    refused(&get(addr, "/sync/tables", ""), "missing or malformed authorization header", "no header");
    refused(
        &get(addr, "/sync/tables", &format!("Authorization: bearer {good}\r\n")),
        "missing or malformed authorization header",
        "lower-case bearer",
    );
    assert_eq!(jwks.hits(), 1, "unknown kids within JWKS_REFRESH_SECS of the last fetch refetch nothing");
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn key_rotation_unknown_kids_and_max_age() {
    let old = Signer::rsa();
    let new = Signer::ec();
    let jwks = JwksServer::start(200, &[old.jwk("k1")]);
    let db = TestDb::new();
    let server = start_synchrod(&db, &jwks, &[("JWKS_REFRESH_SECS", "1")]);
    let addr = server.addr;
    let claims = json!({"sub": "bob", "exp": now() + 600});
    let old_token = old.token(Some("k1"), &claims);
    let new_token = new.token(Some("k2"), &claims);
    assert_eq!(tables(addr, &old_token).status, 200);
    refused(&tables(addr, &new_token), "invalid token", "k2 not published yet");

    // The identity provider rotates: k2 published, k1 withdrawn. The first k2 token more than
    // JWKS_REFRESH_SECS after the last fetch refreshes the set.
    jwks.serve(200, &[new.jwk("k2")], None, false);
    wait_for(15, "a k2 token accepted after the refresh", || (tables(addr, &new_token).status == 200).then_some(()));
    refused(&tables(addr, &old_token), "invalid token", "k1 withdrawn");

    // A burst of unknown kids costs at most one fetch per interval.
    let before = jwks.hits();
    let started = Instant::now();
    let stranger = old.token(Some("k9"), &claims);
    for _ in 0..20 {
        refused(&tables(addr, &stranger), "invalid token", "unknown kid");
    }
    let intervals = started.elapsed().as_secs() as usize + 1;
    assert!(jwks.hits() - before <= intervals, "{} fetches in {intervals} interval(s)", jwks.hits() - before);

    // Cache-Control: max-age is honoured by the background refresher: a withdrawn key stops
    // working although no token asked for an unknown kid.
    jwks.serve(200, &[new.jwk("k2"), old.jwk("k1")], Some("public, max-age=1"), false);
    wait_for(15, "k1 accepted again once republished", || (tables(addr, &old_token).status == 200).then_some(()));
    jwks.serve(200, &[old.jwk("k1")], Some("max-age=1"), false);
    wait_for(15, "k2 refused after max-age without any unknown kid", || {
        (tables(addr, &new_token).status == 401).then_some(())
    });
    assert_eq!(tables(addr, &old_token).status, 200);
    server.shutdown(Duration::from_secs(5));
}

/// An identity provider that takes 8 s to answer while clients send tokens with random kids:
/// no request waits for it beyond the short unknown-kid wait, valid tokens and /healthz are
/// served throughout, and the provider sees one fetch, not one per token.
#[test]
fn a_slow_identity_provider_stalls_no_request() {
    let key = Signer::rsa();
    let jwks = JwksServer::start(200, &[key.jwk("k1")]);
    let db = TestDb::new();
    let server = start_synchrod(&db, &jwks, &[("JWKS_REFRESH_SECS", "1"), ("HTTP_THREADS", "4")]);
    let started = Instant::now();
    let addr = server.addr;
    let claims = json!({"sub": "dave", "exp": now() + 600});
    let good = key.token(Some("k1"), &claims);
    assert_eq!(tables(addr, &good).status, 200);
    jwks.slow_down(Duration::from_secs(8));
    // Past the minimum interval since the startup fetch, so the first unknown kid may fetch.
    wait_for(10, "the refresh interval to pass", || (started.elapsed() > Duration::from_millis(1100)).then_some(()));
    let hits = jwks.hits();
    let stop = Arc::new(AtomicBool::new(false));
    let attackers: Vec<_> = (0..8)
        .map(|i| {
            let (stop, key) = (stop.clone(), Signer::rsa());
            let claims = claims.clone();
            thread::spawn(move || {
                let mut slowest = Duration::ZERO;
                let mut n = 0u32;
                while !stop.load(Ordering::SeqCst) {
                    let token = key.token(Some(&format!("random-{i}-{n}")), &claims);
                    let t = Instant::now();
                    refused(&tables(addr, &token), "invalid token", "random kid");
                    slowest = slowest.max(t.elapsed());
                    n += 1;
                }
                slowest
            })
        })
        .collect();
    // Meanwhile, for three seconds: valid tokens and probes are served as usual.
    let mut slowest_good = Duration::ZERO;
    let during = Instant::now();
    while during.elapsed() < Duration::from_secs(3) {
        let t = Instant::now();
        assert_eq!(tables(addr, &good).status, 200);
        assert_eq!(get(addr, "/healthz", "").status, 200);
        slowest_good = slowest_good.max(t.elapsed());
    }
    stop.store(true, Ordering::SeqCst);
    let slowest_refusal = attackers.into_iter().map(|t| t.join().unwrap()).max().unwrap();
    // The provider takes 8 s: anything that waited for it would show that.
    assert!(slowest_good < Duration::from_secs(4), "a valid request took {slowest_good:?}");
    assert!(slowest_refusal < Duration::from_secs(4), "an unknown kid was answered after {slowest_refusal:?}");
    assert!(jwks.hits() - hits <= 1, "{} fetches for the unknown kids", jwks.hits() - hits);
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn jwks_down_at_startup_answers_503_until_keys_load() {
    let key = Signer::ec();
    let jwks = JwksServer::start(503, &[]);
    let db = TestDb::new();
    let server = start_synchrod(&db, &jwks, &[("JWKS_REFRESH_SECS", "1")]);
    let addr = server.addr;
    let token = key.token(Some("e1"), &json!({"sub": "carol"}));
    let r = tables(addr, &token);
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("5"));
    assert_eq!(r.json(), json!({"error": "service temporarily unavailable", "retry_after": 5}));
    let r = post(addr, "/sync/pull", &bearer(&token), b"{}");
    assert_eq!(r.status, 503, "every /sync/ endpoint");
    refused(&get(addr, "/sync/tables", ""), "missing or malformed authorization header", "no token is still a 401");
    assert_eq!(get(addr, "/healthz", "").status, 200, "healthz needs no keys");
    // An endpoint that answers 200 with a set of unusable keys is still "down".
    jwks.serve(200, &[json!({"kty": "oct", "k": "c2VjcmV0"})], None, false);
    let hits = jwks.hits();
    wait_for(15, "a retry", || (jwks.hits() > hits).then_some(()));
    assert_eq!(tables(addr, &token).status, 503);
    jwks.serve(200, &[key.jwk("e1")], None, false);
    wait_for(20, "keys loaded by the background retry", || (tables(addr, &token).status == 200).then_some(()));
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn synchrod_check_fetches_the_key_set() {
    let key = Signer::ec();
    let jwks = JwksServer::start(200, &[key.jwk("e1"), json!({"kty": "oct", "k": "c2VjcmV0"})]);
    let config = |url: &str| {
        let vars = [("DATABASE_URL", "postgres://u@localhost/app"), ("JWKS_URL", url)];
        synchro::config::Config::from_vars(&vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()).unwrap()
    };
    let line = synchro::check::check_jwks(&config(&jwks.url())).unwrap().line();
    assert!(line.starts_with("PASS JWKS endpoint: 1 usable key(s) from http://"), "{line}");
    jwks.serve(404, &[], None, false);
    let line = synchro::check::check_jwks(&config(&jwks.url())).unwrap().line();
    assert!(line.starts_with("FAIL JWKS endpoint: fetching http://") && line.contains("HTTP status 404"), "{line}");
    assert!(line.contains("fix: check JWKS_URL"), "{line}");
    let line = synchro::check::check_jwks(&config("http://127.0.0.1:1/jwks")).unwrap().line();
    assert!(line.starts_with("FAIL JWKS endpoint: fetching http://127.0.0.1:1/jwks: cannot connect"), "{line}");
}

#[cfg(feature = "tls")]
fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The `https://` path through a running synchrod: keys fetched over TLS verified against
/// `SSL_CERT_FILE` (a subprocess, so the variable does not leak into other tests), and a CA
/// bundle that does not vouch for the endpoint leaves synchrod answering 503 instead of
/// trusting it.
#[cfg(feature = "tls")]
#[test]
fn https_jwks_verified_against_ssl_cert_file() {
    use crate::capture_faults::spawn_synchrod_with;
    let rsa = Signer::rsa();
    let jwks = JwksServer::start_https(&[rsa.jwk("rsa1")]);
    let db = TestDb::new();
    db.execute(TABLE);
    let token = rsa.token(Some("rsa1"), &json!({"sub": "alice", "exp": now() + 600}));
    let ca = fixture("tls-test-ca.pem").display().to_string();
    let system = "/etc/ssl/certs/ca-certificates.crt";
    for (trusted, bundle) in [(true, ca.as_str()), (false, system)] {
        if !std::path::Path::new(bundle).exists() {
            continue; // no other bundle on this machine to distrust the endpoint with
        }
        let port = synchro::cluster::free_port().unwrap();
        let (url, slot, listen) = (jwks.url(), format!("jh_{}_{trusted}", db.name), format!("127.0.0.1:{port}"));
        let _child = spawn_synchrod_with(
            &db,
            &slot,
            &[("SYNC_TABLES", "items"), ("JWKS_URL", &url), ("SSL_CERT_FILE", bundle), ("LISTEN_ADDR", &listen)],
        );
        let addr: SocketAddr = listen.parse().unwrap();
        wait_for(30, "synchrod to listen", || TcpStream::connect(addr).ok().map(|_| ()));
        let r = tables(addr, &token);
        if trusted {
            assert_eq!(r.status, 200, "keys fetched over https: {}", r.body);
        } else {
            assert_eq!(r.status, 503, "an endpoint the bundle does not vouch for is never trusted: {}", r.body);
            assert!(r.header("retry-after").is_some());
        }
    }
    assert!(jwks.hits() >= 1);
}

#[test]
fn unknown_critical_headers_and_blank_users_are_refused() {
    let ec = Signer::ec();
    let jwks = JwksServer::start(200, &[ec.jwk("ec1")]);
    let db = TestDb::new();
    let server = start_synchrod(&db, &jwks, &[]);
    let signed = |header: Value, claims: Value| synchro::jwt::encode(&header, &claims, |input| ec.sign(input));
    let header = json!({"alg": "ES256", "kid": "ec1"});
    assert_eq!(tables(server.addr, &signed(header.clone(), json!({"sub": "u"}))).status, 200);
    let mut crit = header.clone();
    crit["crit"] = json!(["urn:example:bound"]);
    crit["urn:example:bound"] = json!(true);
    refused(&tables(server.addr, &signed(crit, json!({"sub": "u"}))), "invalid token", "unknown crit");
    for (sub, case) in [(json!("   "), "blank user"), (json!("u\u{0}v"), "NUL in the user")] {
        refused(&tables(server.addr, &signed(header.clone(), json!({ "sub": sub }))), "token missing user claim", case);
    }
    server.shutdown(std::time::Duration::from_secs(5));
}
