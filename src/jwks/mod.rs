//! `JWKS_URL` mode: bearer tokens signed with asymmetric keys published as a JSON Web Key Set.
//!
//! * [`keys`]: the key set document and signature checks with `ring` (no I/O).
//! * [`cache`]: the cached set and its refresh schedule (no I/O of its own; the clock is passed in).
//! * this module: the HTTP key source ([`crate::http_get`]), the background refresher thread,
//!   and [`JwksAuthenticator`], which plugs into the HTTP layer.
//!
//! Verification goes through [`jwt::verify`], so the claim rules (`exp`/`nbf` with leeway,
//! `iss`, `aud`, the user claim) are the ones HMAC mode applies. While no key set has ever
//! been fetched, requests are answered 503 with `Retry-After` rather than 401: the token may
//! well be valid, the server just cannot tell yet.

pub mod cache;
pub mod keys;

use std::fmt;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crate::http::auth::bearer_token;
use crate::http::{AuthFailure, Authenticator};
use crate::http_get::{self, GetError, GetOptions, Scheme, TlsClient, Url};
use crate::jwt::{self, ClaimRules, DecodedToken, JwtError};
use crate::types::UserId;

use cache::{FetchedKeys, KeyCache, KeySource, RefreshPolicy, Trigger, UnknownKey};
use keys::{Algorithm, KeySet, KeySetError, Selection};

/// Why a key set could not be fetched, or the authenticator not built.
#[derive(Debug)]
pub struct JwksError(Box<JwksErrorKind>);

/// The kinds of [`JwksError`].
#[derive(Debug)]
#[non_exhaustive]
pub enum JwksErrorKind {
    /// The request failed.
    Get {
        /// The URL without its query (user info is refused by the URL parser).
        url: String,
        /// Why.
        source: GetError,
    },
    /// The endpoint answered with a status other than 200.
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
    },
    /// The body is not a usable key set.
    KeySet {
        /// The URL.
        url: String,
        /// Why.
        source: KeySetError,
    },
    /// The configuration cannot work (bad URL, https without TLS support, no CA roots).
    Config(String),
    /// The refresher thread could not be spawned.
    Spawn(std::io::Error),
}

impl JwksError {
    /// What went wrong.
    pub fn kind(&self) -> &JwksErrorKind {
        &self.0
    }

    /// A non-200 answer from `url`.
    pub fn status(url: &str, status: u16) -> JwksError {
        JwksError(Box::new(JwksErrorKind::Status { url: url.to_string(), status }))
    }
}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.0 {
            JwksErrorKind::Get { url, source } => write!(f, "fetching {url}: {source}"),
            JwksErrorKind::Status { url, status } => write!(f, "fetching {url}: HTTP status {status}"),
            JwksErrorKind::KeySet { url, source } => write!(f, "key set from {url}: {source}"),
            JwksErrorKind::Config(m) => write!(f, "JWKS_URL: {m}"),
            JwksErrorKind::Spawn(e) => write!(f, "spawning the JWKS refresher thread: {e}"),
        }
    }
}

impl std::error::Error for JwksError {}

/// The key set behind a URL, fetched with [`http_get`].
pub struct HttpKeySource {
    url: Url,
    tls: TlsClient,
    options: GetOptions,
}

impl HttpKeySource {
    /// A source for `url`. `https://` needs the `tls` feature and readable CA roots (see
    /// [`http_get::https_config`]); both are checked here, so a bad setup fails at startup.
    pub fn new(url: &str) -> Result<HttpKeySource, JwksError> {
        let parsed = Url::parse(url).map_err(|e| JwksError(Box::new(JwksErrorKind::Config(e.to_string()))))?;
        let tls = match parsed.scheme {
            Scheme::Http => TlsClient::none(),
            Scheme::Https => https_client()?,
        };
        Ok(HttpKeySource { url: parsed, tls, options: GetOptions::default() })
    }
}

#[cfg(feature = "tls")]
fn https_client() -> Result<TlsClient, JwksError> {
    TlsClient::system_roots().map_err(|e| JwksError(Box::new(JwksErrorKind::Config(e.to_string()))))
}

#[cfg(not(feature = "tls"))]
fn https_client() -> Result<TlsClient, JwksError> {
    Err(JwksError(Box::new(JwksErrorKind::Config(
        "https:// needs a build with the `tls` feature (cargo build --features tls); use http:// only for local setups"
            .into(),
    ))))
}

impl KeySource for HttpKeySource {
    fn fetch(&self) -> Result<FetchedKeys, JwksError> {
        let url = self.url.redacted();
        let response = http_get::get(&self.url, &self.tls, &self.options)
            .map_err(|source| JwksError(Box::new(JwksErrorKind::Get { url: url.clone(), source })))?;
        if response.status != 200 {
            return Err(JwksError::status(&url, response.status));
        }
        let keys = KeySet::parse(&response.body, |kid, why| {
            crate::debug!("JWKS key skipped", url = url.clone(), kid = kid.unwrap_or(""), reason = why);
        })
        .map_err(|source| JwksError(Box::new(JwksErrorKind::KeySet { url: url.clone(), source })))?;
        let max_age = response.header("cache-control").and_then(cache::cache_control_max_age);
        Ok(FetchedKeys { keys, max_age })
    }

    fn describe(&self) -> String {
        self.url.redacted()
    }
}

/// The longest a request with an unknown `kid` waits for the key set fetch it triggered (or
/// found under way), counted from when that fetch was asked for; then it is answered 401.
pub const UNKNOWN_KID_WAIT: Duration = Duration::from_millis(500);

/// How the authenticator is set up.
#[derive(Debug, Clone)]
pub struct JwksSettings {
    /// `JWKS_URL`.
    pub url: String,
    /// `JWKS_REFRESH_SECS`: the minimum time between fetches triggered by unknown kids.
    pub refresh_interval: Duration,
    /// The claim rules shared with HMAC mode.
    pub rules: ClaimRules,
    /// `Retry-After` seconds while no keys are loaded.
    pub retry_after: u32,
}

/// Owns the background refresher: dropping it stops the thread. A fetch in flight is not
/// waited for beyond [`REFRESHER_JOIN_WAIT`] (a slow identity provider must not hold up
/// shutdown); the thread then ends on its own when the fetch does, bounded by the GET timeouts.
struct Refresher {
    cache: Arc<KeyCache>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Refresher {
    fn spawn(cache: Arc<KeyCache>) -> Result<Refresher, JwksError> {
        let c = cache.clone();
        let handle = thread::Builder::new()
            .name("jwks-refresh".into())
            .spawn(move || loop {
                // The schedule can move earlier while this thread waits (an unknown-kid fetch
                // brings a shorter max-age), so look again at least every second; the floor
                // keeps a clock oddity from turning this into a busy loop. A request asking for
                // a fetch wakes it at once.
                let wait = c.next_wait(Instant::now());
                if !wait.is_zero() && !c.wait_for_work(wait.clamp(Duration::from_millis(50), Duration::from_secs(1))) {
                    return;
                }
                c.refresh_if_due(Instant::now(), Trigger::Scheduled);
            })
            .map_err(|e| JwksError(Box::new(JwksErrorKind::Spawn(e))))?;
        Ok(Refresher { cache, handle: Some(handle) })
    }
}

/// How long dropping the authenticator waits for the refresher thread to end.
const REFRESHER_JOIN_WAIT: Duration = Duration::from_secs(1);

impl Drop for Refresher {
    fn drop(&mut self) {
        self.cache.stop();
        let Some(handle) = self.handle.take() else { return };
        let until = Instant::now() + REFRESHER_JOIN_WAIT;
        while !handle.is_finished() && Instant::now() < until {
            thread::sleep(Duration::from_millis(5));
        }
        if !handle.is_finished() {
            crate::debug!("the JWKS refresher is in a fetch; not waiting for it");
            return;
        }
        if handle.join().is_err() {
            crate::error!("the JWKS refresher thread panicked");
        }
    }
}

/// Authenticates `Authorization: Bearer` tokens against the keys of a JWKS endpoint.
pub struct JwksAuthenticator {
    cache: Arc<KeyCache>,
    rules: ClaimRules,
    retry_after: u32,
    _refresher: Refresher,
}

impl fmt::Debug for JwksAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksAuthenticator").field("rules", &self.rules).finish_non_exhaustive()
    }
}

impl JwksAuthenticator {
    /// Checks the URL, fetches the keys once (a failure is logged, not fatal: the refresher
    /// keeps trying with backoff and requests get 503 meanwhile), and starts the refresher.
    pub fn start(settings: JwksSettings) -> Result<JwksAuthenticator, JwksError> {
        let source = HttpKeySource::new(&settings.url)?;
        JwksAuthenticator::with_source(
            Box::new(source),
            settings.refresh_interval,
            settings.rules,
            settings.retry_after,
        )
    }

    /// [`JwksAuthenticator::start`] with any key source.
    pub fn with_source(
        source: Box<dyn KeySource>,
        refresh_interval: Duration,
        rules: ClaimRules,
        retry_after: u32,
    ) -> Result<JwksAuthenticator, JwksError> {
        let now = Instant::now();
        let cache = Arc::new(KeyCache::new(source, RefreshPolicy::with_min_interval(refresh_interval), now));
        cache.refresh_if_due(now, Trigger::Startup);
        let refresher = Refresher::spawn(cache.clone())?;
        Ok(JwksAuthenticator { cache, rules, retry_after, _refresher: refresher })
    }

    /// How many fetches were attempted (for tests and diagnostics).
    pub fn fetch_count(&self) -> u64 {
        self.cache.fetch_count()
    }

    /// Verifies a token's signature with `keys`. When the token's `kid` is unknown, asks the
    /// refresher for a fetch (rate-limited) and waits for it at most [`UNKNOWN_KID_WAIT`]
    /// counted from when it was asked for: the fetch itself never runs on this thread.
    fn check_signature(&self, token: &DecodedToken<'_>, keys: &Arc<KeySet>) -> Result<(), JwtError> {
        match verify_signature(keys, token) {
            Err(JwtError::UnknownKey { kid }) => {
                let fresh = match self.cache.ask_for_unknown_key(keys, Instant::now(), UNKNOWN_KID_WAIT) {
                    UnknownKey::Fresh(fresh) => Some(fresh),
                    UnknownKey::Wait { after, until } => self.cache.wait_for_fetch(keys, after, until),
                    UnknownKey::Unknown => None,
                };
                match fresh {
                    Some(fresh) => verify_signature(&fresh, token),
                    None => Err(JwtError::UnknownKey { kid }),
                }
            }
            other => other,
        }
    }
}

/// Checks a decoded token's signature with the keys `keys` selects for its `alg` and `kid`
/// (the signature step of [`jwt::verify`] in JWKS mode, without any refresh). `none`, `HS*`
/// and every algorithm not in [`Algorithm`] are refused before any key is looked at.
pub fn verify_signature(keys: &KeySet, token: &DecodedToken<'_>) -> Result<(), JwtError> {
    let alg = Algorithm::from_name(token.alg()).ok_or_else(|| JwtError::AlgorithmNotAllowed(token.alg().into()))?;
    match keys.select(alg, token.kid()) {
        Selection::Candidates(candidates) => {
            if candidates.iter().any(|k| k.verify(alg, token.signing_input, &token.signature)) {
                Ok(())
            } else {
                Err(JwtError::BadSignature)
            }
        }
        Selection::Unknown => Err(JwtError::UnknownKey { kid: token.kid().map(str::to_string) }),
        Selection::Mismatch => Err(JwtError::AlgorithmNotAllowed(alg.name().into())),
    }
}

impl Authenticator for JwksAuthenticator {
    fn authenticate(&self, header: &dyn Fn(&str) -> Option<String>) -> Result<UserId, AuthFailure> {
        let token = bearer_token(header)?;
        let Some(keys) = self.cache.current() else {
            return Err(AuthFailure::unavailable(self.retry_after, "no JWKS keys loaded yet"));
        };
        Ok(jwt::verify(&token, &self.rules, SystemTime::now(), |decoded| self.check_signature(decoded, &keys))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwks::keys::{Jwk, PublicKey};
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Switch(Arc<AtomicBool>);

    impl KeySource for Switch {
        fn fetch(&self) -> Result<FetchedKeys, JwksError> {
            if !self.0.load(Ordering::SeqCst) {
                return Err(JwksError::status("stub", 503));
            }
            let key =
                Jwk { kid: Some("k".into()), alg: None, key: PublicKey::Rsa { n: vec![0xc5; 256], e: vec![1, 0, 1] } };
            Ok(FetchedKeys { keys: KeySet::from_keys(vec![key]), max_age: None })
        }
        fn describe(&self) -> String {
            "stub".into()
        }
    }

    fn header(token: Option<&str>) -> impl Fn(&str) -> Option<String> + '_ {
        move |name: &str| if name == "authorization" { token.map(|t| format!("Bearer {t}")) } else { None }
    }

    #[test]
    fn no_keys_yet_is_unavailable_not_refused() {
        let up = Arc::new(AtomicBool::new(false));
        let auth = JwksAuthenticator::with_source(
            Box::new(Switch(up.clone())),
            Duration::from_secs(1),
            ClaimRules::default(),
            7,
        )
        .unwrap();
        let token =
            jwt::encode(&serde_json::json!({"alg": "RS256", "kid": "k"}), &serde_json::json!({"sub": "u"}), |_| {
                vec![1]
            });
        let failure = auth.authenticate(&header(Some(&token))).unwrap_err();
        assert_eq!(failure.retry_after, Some(7), "{failure}");
        let failure = auth.authenticate(&header(None)).unwrap_err();
        assert_eq!((failure.retry_after, failure.client_message), (None, "missing or malformed authorization header"));
        up.store(true, Ordering::SeqCst);
        // The refresher retries with backoff; poll with a deadline.
        let deadline = Instant::now() + Duration::from_secs(10);
        let failure = loop {
            let failure = auth.authenticate(&header(Some(&token))).unwrap_err();
            if failure.retry_after.is_none() || Instant::now() > deadline {
                break failure;
            }
            thread::sleep(Duration::from_millis(50));
        };
        assert_eq!((failure.retry_after, failure.reason.as_str()), (None, "bad token signature"));
        assert!(auth.fetch_count() >= 2);
        drop(auth); // joins the refresher
    }

    #[test]
    fn unusable_urls_fail_at_startup() {
        for url in ["ftp://x/jwks", "http://user:pw@x/jwks", "http:///jwks"] {
            let settings = JwksSettings {
                url: url.into(),
                refresh_interval: Duration::from_secs(30),
                rules: ClaimRules::default(),
                retry_after: 5,
            };
            let err = JwksAuthenticator::start(settings).unwrap_err();
            assert!(matches!(err.kind(), JwksErrorKind::Config(_)), "{url}: {err}");
            assert!(err.to_string().starts_with("JWKS_URL: "), "{err}");
        }
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn https_needs_the_tls_feature() {
        let err = HttpKeySource::new("https://idp.example/jwks").map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("`tls` feature"), "{err}");
    }
}
