//! The cached key set and when to fetch it again.
//!
//! Three things trigger a fetch: startup, the cached set reaching its age (`Cache-Control:
//! max-age`, else [`RefreshPolicy::default_max_age`]; both kept between the minimum interval
//! and a day) or a failed fetch's backoff running out, and a token whose `kid` the set does not
//! know (at most once per [`RefreshPolicy::min_interval`] however many such tokens arrive, so
//! unknown kids cannot turn the server into a load generator against the identity provider).
//!
//! Fetches run on the background refresher thread only, never on a request's thread and never
//! under a lock a request takes: a slow identity provider cannot stall requests. A request with
//! an unknown `kid` asks for a fetch ([`KeyCache::ask_for_unknown_key`]) and waits for its
//! outcome at most a short, bounded time counted from when that fetch was asked for
//! ([`KeyCache::wait_for_fetch`]); later requests for unknown kids during a slow fetch do not
//! wait at all.
//!
//! A failed fetch never discards keys already held: they stay in use until a fetch succeeds.
//! Every function takes the current [`Instant`] so the schedule is tested without sleeping.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use super::keys::KeySet;
use super::JwksError;

/// A key set as fetched, with how long its publisher says it stays fresh.
#[derive(Debug, Clone)]
pub struct FetchedKeys {
    /// The usable keys.
    pub keys: KeySet,
    /// `Cache-Control: max-age`, when given.
    pub max_age: Option<Duration>,
}

/// Where keys come from: the JWKS endpoint in production, a stub in tests.
pub trait KeySource: Send + Sync {
    /// Fetches the current key set (blocking, with its own timeouts).
    fn fetch(&self) -> Result<FetchedKeys, JwksError>;
    /// What to name in logs (a URL without credentials).
    fn describe(&self) -> String;
}

/// The timing rules of the cache.
#[derive(Debug, Clone)]
pub struct RefreshPolicy {
    /// No two fetches closer than this for unknown kids, and no cached age below it
    /// (`JWKS_REFRESH_SECS`).
    pub min_interval: Duration,
    /// The age of a set served without `Cache-Control: max-age`.
    pub default_max_age: Duration,
    /// The longest age honoured, whatever the header says.
    pub max_age_cap: Duration,
    /// The first retry delay after a failed fetch, doubled per consecutive failure.
    pub backoff_start: Duration,
    /// The longest retry delay.
    pub backoff_cap: Duration,
}

impl RefreshPolicy {
    /// The defaults with a given minimum interval.
    pub fn with_min_interval(min_interval: Duration) -> RefreshPolicy {
        RefreshPolicy {
            min_interval,
            default_max_age: Duration::from_secs(3600),
            max_age_cap: Duration::from_secs(24 * 3600),
            backoff_start: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(30),
        }
    }

    fn age(&self, max_age: Option<Duration>) -> Duration {
        max_age.unwrap_or(self.default_max_age).clamp(self.min_interval, self.max_age_cap.max(self.min_interval))
    }

    fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.backoff_start.saturating_mul(factor).min(self.backoff_cap)
    }
}

/// Parses `Cache-Control` into a freshness lifetime: `max-age=N`, or zero for `no-cache` and
/// `no-store` (the caller raises it to the minimum interval). `None` when neither is present.
pub fn cache_control_max_age(header: &str) -> Option<Duration> {
    let mut max_age = None;
    for directive in header.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return Some(Duration::ZERO);
        }
        if let Some(value) = lower.strip_prefix("max-age=") {
            if max_age.is_none() {
                max_age = value.trim_matches('"').parse::<u64>().ok().map(Duration::from_secs);
            }
        }
    }
    max_age
}

/// Why a fetch was attempted (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The first fetch.
    Startup,
    /// The background schedule (age reached or retry after a failure).
    Scheduled,
    /// A token named a `kid` the set does not hold.
    UnknownKey,
}

impl Trigger {
    fn name(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::Scheduled => "scheduled",
            Trigger::UnknownKey => "unknown kid",
        }
    }
}

#[derive(Debug)]
struct Schedule {
    last_attempt: Option<Instant>,
    next_due: Instant,
    failures: u32,
    fetches: u64,
    /// Fetches finished, successful or not (waiters compare against it).
    completed: u64,
    /// When a fetch for an unknown `kid` was asked for and not started yet.
    asked: Option<Instant>,
    /// When the fetch under way began (asked for or started), if one is.
    running_since: Option<Instant>,
    /// The refresher must end.
    stopping: bool,
}

/// What a request with an unknown `kid` should do.
#[derive(Debug)]
pub enum UnknownKey {
    /// The keys changed since the request looked: try these.
    Fresh(Arc<KeySet>),
    /// A fetch is asked for or under way: wait for fetch number `after + 1` until `until`.
    Wait {
        /// [`KeyCache::completed`] before the fetch.
        after: u64,
        /// The latest time to wait until.
        until: Instant,
    },
    /// A fetch ran less than the minimum interval ago: the `kid` is unknown.
    Unknown,
}

/// The current key set, shared by the request threads and the background refresher.
pub struct KeyCache {
    keys: RwLock<Option<Arc<KeySet>>>,
    schedule: Mutex<Schedule>,
    /// Wakes the refresher: a fetch was asked for, or it must stop.
    work: Condvar,
    /// Wakes requests waiting for a fetch to finish.
    finished: Condvar,
    source: Box<dyn KeySource>,
    policy: RefreshPolicy,
}

impl KeyCache {
    /// An empty cache whose first fetch is due at `now`.
    pub fn new(source: Box<dyn KeySource>, policy: RefreshPolicy, now: Instant) -> KeyCache {
        KeyCache {
            keys: RwLock::new(None),
            schedule: Mutex::new(Schedule {
                last_attempt: None,
                next_due: now,
                failures: 0,
                fetches: 0,
                completed: 0,
                asked: None,
                running_since: None,
                stopping: false,
            }),
            work: Condvar::new(),
            finished: Condvar::new(),
            source,
            policy,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Schedule> {
        self.schedule.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The keys in use, or `None` until a fetch has succeeded.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// How many fetches were attempted so far.
    pub fn fetch_count(&self) -> u64 {
        self.lock().fetches
    }

    /// How many fetches have finished so far.
    pub fn completed(&self) -> u64 {
        self.lock().completed
    }

    /// How long until the background schedule wants a fetch (zero when one was asked for).
    pub fn next_wait(&self, now: Instant) -> Duration {
        let schedule = self.lock();
        if schedule.asked.is_some() {
            return Duration::ZERO;
        }
        schedule.next_due.saturating_duration_since(now)
    }

    /// Fetches, on the calling thread, if the schedule says so (startup, age reached, retry
    /// due) or a request asked for it, unless a fetch is under way. Returns whether keys are
    /// available afterwards. Only the refresher thread (and startup) call this.
    pub fn refresh_if_due(&self, now: Instant, trigger: Trigger) -> bool {
        let mut schedule = self.lock();
        let asked = schedule.asked.is_some();
        // A fetch under way elsewhere serves whoever asked meanwhile.
        if !(asked || now >= schedule.next_due) || schedule.running_since.is_some() {
            drop(schedule);
            return self.current().is_some();
        }
        let trigger = if asked { Trigger::UnknownKey } else { trigger };
        schedule.running_since = Some(schedule.asked.take().unwrap_or(now));
        schedule.last_attempt = Some(now);
        schedule.fetches += 1;
        drop(schedule);
        // The fetch runs without the lock: requests never wait behind the identity provider.
        let result = self.source.fetch();
        let mut schedule = self.lock();
        self.apply(&mut schedule, now, trigger, result);
        schedule.running_since = None;
        schedule.completed += 1;
        drop(schedule);
        self.finished.notify_all();
        self.current().is_some()
    }

    /// Called when a token's `kid` is not in `seen`: asks the refresher for a fetch unless one
    /// is asked for or under way already, or the last attempt was less than the minimum
    /// interval ago. A request may wait for the fetch until `max_wait` after it was asked for.
    pub fn ask_for_unknown_key(&self, seen: &Arc<KeySet>, now: Instant, max_wait: Duration) -> UnknownKey {
        let mut schedule = self.lock();
        if let Some(keys) = self.current().filter(|keys| !Arc::ptr_eq(keys, seen)) {
            return UnknownKey::Fresh(keys);
        }
        if let Some(since) = schedule.running_since.or(schedule.asked) {
            return UnknownKey::Wait { after: schedule.completed, until: since + max_wait };
        }
        let recent = schedule.last_attempt.is_some_and(|t| now.saturating_duration_since(t) < self.policy.min_interval);
        if recent {
            return UnknownKey::Unknown;
        }
        schedule.asked = Some(now);
        let after = schedule.completed;
        drop(schedule);
        self.work.notify_all();
        UnknownKey::Wait { after, until: now + max_wait }
    }

    /// Waits until a fetch after the `after`-th has finished, or until `until`, and returns
    /// the keys then in use if they differ from `seen`.
    pub fn wait_for_fetch(&self, seen: &Arc<KeySet>, after: u64, until: Instant) -> Option<Arc<KeySet>> {
        let mut schedule = self.lock();
        loop {
            let now = Instant::now();
            if schedule.completed > after || now >= until {
                break;
            }
            schedule = self.finished.wait_timeout(schedule, until - now).unwrap_or_else(PoisonError::into_inner).0;
        }
        drop(schedule);
        self.current().filter(|keys| !Arc::ptr_eq(keys, seen))
    }

    /// The refresher's wait: until a fetch is asked for, `timeout` passes, or [`KeyCache::stop`].
    /// Returns `false` once stopped.
    pub fn wait_for_work(&self, timeout: Duration) -> bool {
        let schedule = self.lock();
        if schedule.stopping {
            return false;
        }
        if schedule.asked.is_some() {
            return true;
        }
        let schedule = self.work.wait_timeout(schedule, timeout).unwrap_or_else(PoisonError::into_inner).0;
        !schedule.stopping
    }

    /// Ends the refresher's waits.
    pub fn stop(&self) {
        self.lock().stopping = true;
        self.work.notify_all();
    }

    fn apply(&self, schedule: &mut Schedule, now: Instant, trigger: Trigger, result: Result<FetchedKeys, JwksError>) {
        match result {
            Ok(fetched) => {
                let age = self.policy.age(fetched.max_age);
                schedule.failures = 0;
                schedule.next_due = now + age;
                crate::info!(
                    "JWKS keys loaded",
                    url = self.source.describe(),
                    trigger = trigger.name(),
                    keys = fetched.keys.keys().len() as u64,
                    refresh_in_secs = age.as_secs()
                );
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(fetched.keys));
            }
            Err(e) => {
                schedule.failures = schedule.failures.saturating_add(1);
                let delay = self.policy.backoff(schedule.failures);
                schedule.next_due = now + delay;
                if self.current().is_some() {
                    crate::warn!(
                        "JWKS refresh failed; keeping the previous keys",
                        url = self.source.describe(),
                        trigger = trigger.name(),
                        error = e.to_string(),
                        retry_in_ms = delay.as_millis() as u64
                    );
                } else {
                    crate::warn!(
                        "JWKS endpoint unavailable: authenticated requests are answered 503 until keys load",
                        url = self.source.describe(),
                        trigger = trigger.name(),
                        error = e.to_string(),
                        failures = schedule.failures,
                        retry_in_ms = delay.as_millis() as u64
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwks::keys::{Jwk, PublicKey};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    struct Stub {
        up: AtomicBool,
        generation: AtomicU64,
        max_age: Option<Duration>,
    }

    impl KeySource for Arc<Stub> {
        fn fetch(&self) -> Result<FetchedKeys, JwksError> {
            if !self.up.load(Ordering::SeqCst) {
                return Err(JwksError::status("stub", 503));
            }
            let generation = self.generation.load(Ordering::SeqCst);
            let key = Jwk {
                kid: Some(format!("k{generation}")),
                alg: None,
                key: PublicKey::Rsa { n: vec![1; 256], e: vec![1, 0, 1] },
            };
            Ok(FetchedKeys { keys: KeySet::from_keys(vec![key]), max_age: self.max_age })
        }
        fn describe(&self) -> String {
            "stub".into()
        }
    }

    fn cache(up: bool, max_age: Option<Duration>) -> (KeyCache, Arc<Stub>, Instant) {
        let stub = Arc::new(Stub { up: AtomicBool::new(up), generation: AtomicU64::new(1), max_age });
        let t0 = Instant::now();
        let policy = RefreshPolicy::with_min_interval(Duration::from_secs(30));
        (KeyCache::new(Box::new(stub.clone()), policy, t0), stub, t0)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn kid(keys: &KeySet) -> String {
        keys.keys()[0].kid.clone().unwrap_or_default()
    }

    #[test]
    fn cache_control_parsing() {
        assert_eq!(cache_control_max_age("public, max-age=600"), Some(secs(600)));
        assert_eq!(cache_control_max_age("Max-Age=\"60\", must-revalidate"), Some(secs(60)));
        assert_eq!(cache_control_max_age("max-age=60, no-store"), Some(Duration::ZERO));
        assert_eq!(cache_control_max_age("no-cache"), Some(Duration::ZERO));
        assert_eq!(cache_control_max_age("public"), None);
        assert_eq!(cache_control_max_age("max-age=soon"), None);
    }

    #[test]
    fn ages_are_clamped_between_the_interval_and_a_day() {
        let p = RefreshPolicy::with_min_interval(secs(30));
        assert_eq!(p.age(None), secs(3600));
        assert_eq!(p.age(Some(secs(600))), secs(600));
        assert_eq!(p.age(Some(Duration::ZERO)), secs(30));
        assert_eq!(p.age(Some(secs(10 * 24 * 3600))), secs(24 * 3600));
        assert_eq!(
            (p.backoff(1), p.backoff(2), p.backoff(3), p.backoff(40)),
            (Duration::from_millis(500), secs(1), secs(2), secs(30))
        );
    }

    #[test]
    fn max_age_schedules_the_next_fetch() {
        let (cache, stub, t0) = cache(true, Some(secs(120)));
        assert!(cache.refresh_if_due(t0, Trigger::Startup));
        assert_eq!(cache.next_wait(t0), secs(120));
        assert!(cache.refresh_if_due(t0 + secs(119), Trigger::Scheduled));
        assert_eq!(cache.fetch_count(), 1, "not due yet");
        stub.generation.store(2, Ordering::SeqCst);
        assert!(cache.refresh_if_due(t0 + secs(120), Trigger::Scheduled));
        assert_eq!(cache.fetch_count(), 2);
        assert_eq!(kid(&cache.current().unwrap()), "k2");
    }

    /// What a request with an unknown kid is told at `now` (the wait bound is 500 ms).
    fn ask(cache: &KeyCache, seen: &Arc<KeySet>, now: Instant) -> String {
        match cache.ask_for_unknown_key(seen, now, Duration::from_millis(500)) {
            UnknownKey::Fresh(keys) => format!("fresh {}", kid(&keys)),
            UnknownKey::Wait { after, until } => format!("wait {after} {:?}", until.duration_since(now)),
            UnknownKey::Unknown => "unknown".into(),
        }
    }

    #[test]
    fn unknown_kids_refresh_at_most_once_per_interval() {
        let (cache, stub, t0) = cache(true, None);
        cache.refresh_if_due(t0, Trigger::Startup);
        let first = cache.current().unwrap();
        stub.generation.store(2, Ordering::SeqCst);
        for s in [0, 1, 29] {
            assert_eq!(ask(&cache, &first, t0 + secs(s)), "unknown", "within the interval of startup");
        }
        assert_eq!(cache.fetch_count(), 1);
        // The first unknown kid after the interval asks for a fetch; so do (without asking
        // again) the ones that follow while it is pending, with the same deadline.
        assert_eq!(ask(&cache, &first, t0 + secs(30)), "wait 1 500ms");
        assert_eq!(cache.next_wait(t0 + secs(30)), Duration::ZERO, "the refresher is due at once");
        assert_eq!(ask(&cache, &first, t0 + secs(30) + Duration::from_millis(200)), "wait 1 300ms");
        assert_eq!(cache.fetch_count(), 1, "requests never fetch themselves");
        // The refresher runs it.
        assert!(cache.refresh_if_due(t0 + secs(31), Trigger::Scheduled));
        assert_eq!((cache.fetch_count(), cache.completed()), (2, 2));
        let second = cache.wait_for_fetch(&first, 1, Instant::now()).expect("refreshed");
        assert_eq!(kid(&second), "k2");
        // A request that saw the old set gets the new one without a fetch.
        assert_eq!(ask(&cache, &first, t0 + secs(32)), "fresh k2");
        assert_eq!(ask(&cache, &second, t0 + secs(59)), "unknown");
        assert_eq!(cache.fetch_count(), 2);
        // Nothing asked and nothing due: the refresher does nothing.
        assert!(cache.refresh_if_due(t0 + secs(62), Trigger::Scheduled));
        assert_eq!(cache.fetch_count(), 2);
    }

    /// A source whose fetch blocks until released, to look at the cache mid-fetch.
    struct Gate {
        entered: crossbeam_channel::Sender<()>,
        release: crossbeam_channel::Receiver<()>,
    }

    impl KeySource for Gate {
        fn fetch(&self) -> Result<FetchedKeys, JwksError> {
            let _ = self.entered.send(());
            let _ = self.release.recv();
            let key =
                Jwk { kid: Some("late".into()), alg: None, key: PublicKey::Rsa { n: vec![1; 256], e: vec![1, 0, 1] } };
            Ok(FetchedKeys { keys: KeySet::from_keys(vec![key]), max_age: None })
        }
        fn describe(&self) -> String {
            "gate".into()
        }
    }

    #[test]
    fn a_slow_fetch_blocks_no_request() {
        let (entered_tx, entered) = crossbeam_channel::unbounded();
        let (release, release_rx) = crossbeam_channel::unbounded();
        let t0 = Instant::now();
        let cache = Arc::new(KeyCache::new(
            Box::new(Gate { entered: entered_tx, release: release_rx }),
            RefreshPolicy::with_min_interval(Duration::from_millis(1)),
            t0,
        ));
        let refresher = {
            let cache = cache.clone();
            std::thread::spawn(move || cache.refresh_if_due(Instant::now(), Trigger::Startup))
        };
        entered.recv().unwrap();
        // Mid-fetch: every call a request makes returns at once.
        assert!(cache.current().is_none());
        assert_eq!(cache.fetch_count(), 1);
        let empty = Arc::new(KeySet::from_keys(Vec::new()));
        let UnknownKey::Wait { after: 0, until } = cache.ask_for_unknown_key(&empty, Instant::now(), Duration::ZERO)
        else {
            panic!("a request during a fetch waits for it");
        };
        assert_eq!(cache.wait_for_fetch(&empty, 0, until), None, "the wait is bounded");
        release.send(()).unwrap();
        assert!(refresher.join().unwrap());
        assert_eq!(kid(&cache.wait_for_fetch(&empty, 0, Instant::now()).unwrap()), "late");
        // The refresher's own wait ends on stop.
        cache.stop();
        assert!(!cache.wait_for_work(Duration::from_secs(60)));
    }

    #[test]
    fn endpoint_down_at_startup_backs_off_until_keys_arrive() {
        let (cache, stub, t0) = cache(false, None);
        assert!(!cache.refresh_if_due(t0, Trigger::Startup));
        assert!(cache.current().is_none());
        assert_eq!(cache.next_wait(t0), Duration::from_millis(500));
        assert!(!cache.refresh_if_due(t0 + secs(1), Trigger::Scheduled));
        assert_eq!(cache.next_wait(t0 + secs(1)), secs(1), "doubled");
        stub.up.store(true, Ordering::SeqCst);
        assert!(!cache.refresh_if_due(t0 + Duration::from_millis(1500), Trigger::Scheduled), "not due yet");
        assert!(cache.refresh_if_due(t0 + secs(2), Trigger::Scheduled));
        assert_eq!(cache.next_wait(t0 + secs(2)), secs(3600));
    }

    #[test]
    fn failed_refreshes_keep_the_previous_keys() {
        let (cache, stub, t0) = cache(true, None);
        cache.refresh_if_due(t0, Trigger::Startup);
        stub.up.store(false, Ordering::SeqCst);
        stub.generation.store(2, Ordering::SeqCst);
        assert!(cache.refresh_if_due(t0 + secs(3600), Trigger::Scheduled), "old keys still served");
        assert_eq!(kid(&cache.current().unwrap()), "k1");
        assert_eq!(cache.next_wait(t0 + secs(3600)), Duration::from_millis(500), "retried soon");
        let held = cache.current().unwrap();
        assert_eq!(ask(&cache, &held, t0 + secs(3700)), "wait 2 500ms");
        cache.refresh_if_due(t0 + secs(3700), Trigger::Scheduled);
        assert_eq!(cache.wait_for_fetch(&held, 2, Instant::now()), None, "the failed fetch changed nothing");
        assert_eq!(kid(&cache.current().unwrap()), "k1");
    }
}
