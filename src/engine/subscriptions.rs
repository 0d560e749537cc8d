//! A user's current subscriptions: `user:<id>`, `global`, and with bucket rules one bucket per
//! membership (`team:<key>`), cached per user.
//!
//! Reading the memberships costs a query on the application database, so the result is kept
//! with the version it was read at (`store::subscriptions`): change capture moves a user's
//! version when it sees a membership change of that user, and every request reads the version
//! in a round trip it makes anyway (the pull's probe, the client lookup). Only a moved version
//! reads the memberships again. A membership change is therefore seen once capture has
//! recorded it; until then reads stay safe, because every row is checked against the
//! membership tables in the statement that reads it (the scope predicate), never against this
//! cache.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{CatalogState, Conns, Engine, EngineError};
use crate::registry::Registry;
use crate::store::subscriptions as store;
use crate::types::{BucketId, UserId};

/// The most users kept; beyond it a tenth of the entries (arbitrary ones) make room. A user
/// not cached pays one membership query on their next request, nothing else.
const CAPACITY: usize = 100_000;

/// A user's rule buckets, sorted.
pub(crate) type RuleBuckets = Arc<[String]>;

struct Cached {
    version: i64,
    buckets: RuleBuckets,
}

/// The per-user cache.
#[derive(Default)]
pub(crate) struct SubscriptionCache {
    entries: Mutex<HashMap<String, Cached>>,
    /// Membership reads (cache misses), for tests and metrics.
    reads: AtomicU64,
}

impl SubscriptionCache {
    /// The cached rule buckets of `user`, when read at `version`.
    pub(crate) fn get(&self, user: &UserId, version: i64) -> Option<RuleBuckets> {
        let entries = match self.entries.lock() {
            Ok(e) => e,
            Err(p) => p.into_inner(),
        };
        entries.get(user.as_str()).filter(|c| c.version == version).map(|c| c.buckets.clone())
    }

    /// The cached rule buckets of `user`, whatever version they were read at.
    pub(crate) fn any(&self, user: &UserId) -> Option<RuleBuckets> {
        let entries = match self.entries.lock() {
            Ok(e) => e,
            Err(p) => p.into_inner(),
        };
        entries.get(user.as_str()).map(|c| c.buckets.clone())
    }

    /// Keeps the rule `buckets` of `user` as read at `version`.
    pub(crate) fn put(&self, user: &UserId, version: i64, buckets: RuleBuckets) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let mut entries = match self.entries.lock() {
            Ok(e) => e,
            Err(p) => p.into_inner(),
        };
        if entries.len() >= CAPACITY && !entries.contains_key(user.as_str()) {
            let drop: Vec<String> = entries.keys().take(CAPACITY / 10).cloned().collect();
            for k in drop {
                entries.remove(&k);
            }
        }
        entries.insert(user.as_str().to_string(), Cached { version, buckets });
    }

    /// Forgets everything (the rules were resolved again after DDL).
    pub(crate) fn clear(&self) {
        match self.entries.lock() {
            Ok(mut e) => e.clear(),
            Err(p) => p.into_inner().clear(),
        }
    }

    /// How many times memberships were read.
    pub(crate) fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
}

impl Engine {
    /// The current subscriptions of `user`, whose device holds `held` (its `bucket_subs`) and
    /// whose subscription version (read by the caller in a round trip it makes anyway) is
    /// `version`: `user:<id>`, `global`, the rule buckets of the user's memberships (from the
    /// cache, or read from the membership tables when the version moved), then any other
    /// bucket the device holds (set by an embedder). Without bucket rules, `held` itself.
    pub(crate) fn current_subscriptions<'h>(
        &self,
        dbs: &mut Conns,
        cat: &CatalogState,
        user: &UserId,
        version: i64,
        held: &'h [String],
    ) -> Result<Current<'h>, EngineError> {
        let cached = if cat.registry.has_rules() { self.subscriptions.get(user, version) } else { None };
        match cached {
            Some(buckets) => Ok(Current::compose(cat, user, buckets, held)),
            None => self.fresh_subscriptions(dbs, cat, user, version, held),
        }
    }

    /// [`Engine::current_subscriptions`] read from the membership tables whatever the cache
    /// holds (and kept in it): what a snapshot brings a device in line with.
    pub(crate) fn fresh_subscriptions<'h>(
        &self,
        dbs: &mut Conns,
        cat: &CatalogState,
        user: &UserId,
        version: i64,
        held: &'h [String],
    ) -> Result<Current<'h>, EngineError> {
        if !cat.registry.has_rules() {
            return Ok(Current { defaults: Vec::new(), rules: None, extra: held.iter().map(String::as_str).collect() });
        }
        let buckets: RuleBuckets = store::memberships(dbs.app(), &cat.registry, user)?.into();
        self.subscriptions.put(user, version, buckets.clone());
        Ok(Current::compose(cat, user, buckets, held))
    }

    /// The rule buckets `user`'s devices most likely hold: those last read for the user,
    /// whatever their version (a hint, checked after the probe).
    pub(crate) fn subscription_hint(&self, user: &UserId) -> Option<RuleBuckets> {
        self.subscriptions.any(user)
    }

    /// How many times users' memberships were read (subscription cache misses) since start.
    pub fn subscription_reads(&self) -> u64 {
        self.subscriptions.reads()
    }
}

/// A user's current subscriptions: `user:<id>`, `global`, the rule buckets, then the other
/// buckets the device holds (an embedder's); without bucket rules, what the device holds.
/// The cached rule buckets are shared and the device's own borrowed, not copied: a user in
/// many teams has dozens of them, and every pull looks at them.
pub(crate) struct Current<'h> {
    defaults: Vec<String>,
    rules: Option<RuleBuckets>,
    extra: Vec<&'h str>,
}

impl<'h> Current<'h> {
    fn compose(cat: &CatalogState, user: &UserId, rules: RuleBuckets, held: &'h [String]) -> Current<'h> {
        let defaults = vec![BucketId::user(user.as_str()).into_string(), BucketId::global().into_string()];
        // An embedder's own buckets the device holds stay subscriptions.
        let extra = held
            .iter()
            .filter(|b| !defaults.contains(b) && !is_rule_bucket(&cat.registry, b))
            .map(String::as_str)
            .collect();
        Current { defaults, rules: Some(rules), extra }
    }

    /// The buckets, in subscription order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        let rules = self.rules.iter().flat_map(|r| r.iter());
        self.defaults.iter().chain(rules).map(String::as_str).chain(self.extra.iter().copied())
    }

    /// Whether `bucket` is one of them.
    pub(crate) fn contains(&self, bucket: &str) -> bool {
        self.iter().any(|b| b == bucket)
    }

    /// True when they are exactly `user:<id>`, `global` and the rule buckets `rules` (the very
    /// list, as the cache handed it out): no bucket of an embedder's besides.
    pub(crate) fn is_defaults_and(&self, rules: Option<&RuleBuckets>) -> bool {
        match (&self.rules, rules) {
            (Some(mine), Some(theirs)) => Arc::ptr_eq(mine, theirs) && self.extra.is_empty(),
            _ => false,
        }
    }

    /// The buckets as owned strings.
    pub(crate) fn to_vec(&self) -> Vec<String> {
        self.iter().map(str::to_string).collect()
    }
}

/// True when `bucket` belongs to a bucket rule of `registry` (`team:<key>`): the only buckets
/// a device joins or leaves.
pub(crate) fn is_rule_bucket(registry: &Registry, bucket: &str) -> bool {
    registry
        .tables
        .iter()
        .flat_map(|t| &t.shared)
        .any(|root| bucket.strip_prefix(root.bucket.as_str()).is_some_and(|rest| rest.starts_with(':')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(u: &str) -> UserId {
        UserId::new(u).unwrap()
    }

    #[test]
    fn only_the_defaults_and_the_very_rule_list_count_as_the_hint() {
        let rules: RuleBuckets = vec!["team:1".to_string()].into();
        let defaults = || vec!["user:a".to_string(), "global".to_string()];
        let plain = Current { defaults: defaults(), rules: Some(rules.clone()), extra: vec![] };
        assert!(plain.is_defaults_and(Some(&rules)));
        let copy: RuleBuckets = vec!["team:1".to_string()].into();
        assert!(!plain.is_defaults_and(Some(&copy)), "another cache entry may be another version");
        assert!(!plain.is_defaults_and(None));
        let own = Current { defaults: defaults(), rules: Some(rules.clone()), extra: vec!["custom:x"] };
        assert!(!own.is_defaults_and(Some(&rules)), "an embedder's bucket is not in the hint");
        assert_eq!(own.iter().collect::<Vec<_>>(), ["user:a", "global", "team:1", "custom:x"]);
        assert!(own.contains("custom:x") && !own.contains("team:2"));
    }

    #[test]
    fn entries_are_valid_for_their_version_only() {
        let cache = SubscriptionCache::default();
        let alice = user("alice");
        assert!(cache.get(&alice, 0).is_none());
        cache.put(&alice, 7, vec!["team:1".to_string()].into());
        assert_eq!(&*cache.get(&alice, 7).unwrap(), &["team:1"]);
        assert!(cache.get(&alice, 8).is_none(), "a moved version reads the memberships again");
        assert!(cache.get(&user("bob"), 7).is_none());
        assert_eq!(cache.reads(), 1);
        cache.clear();
        assert!(cache.get(&alice, 7).is_none());
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = SubscriptionCache::default();
        for i in 0..CAPACITY + 5 {
            let u = user(&format!("u{i}"));
            cache.put(&u, 1, Vec::new().into());
        }
        let len = cache.entries.lock().unwrap().len();
        assert!(len <= CAPACITY, "{len}");
    }
}
