//! Interning of event names into compact ids.
//!
//! `data:users:created` is interned once into an [`EventKey`]: a name id and
//! the id of its prefix (`data:users`, the name minus its last `:` segment).
//! Hot paths carry keys, never strings.
//!
//! Readers never take a lock: the table is an immutable snapshot published
//! through an arc-swap cell, looked up with ahash. Writers (a name seen for
//! the first time) serialise on a mutex, re-check, and publish a new
//! snapshot (copy-on-write: O(names) per new name, which the configurable
//! name limit bounds). Ids are dense and never reused, so a snapshot is a
//! prefix of every later one.

use std::sync::Arc as StdArc;
use std::time::Instant;

use ahash::AHashMap;

use crate::error::Error;
use crate::policy::{Policy, PolicyTable};
use crate::sync::{lock, Arc, Mutex, SnapshotCell};

/// An interned event name: compact ids for the name and its prefix.
///
/// Obtain one with `Engine::key` and keep it on the hot path.
///
/// ```
/// use ringfold::{Engine, Value};
/// let engine = Engine::<Value>::builder().build()?;
/// let a = engine.key("data:users:created")?;
/// let b = engine.key("data:users:deleted")?;
/// assert_eq!(a.prefix_id(), b.prefix_id());
/// assert_ne!(a.name_id(), b.name_id());
/// assert_eq!(engine.key("data:users:created")?, a);
/// # Ok::<(), ringfold::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventKey {
    /// Name id in the low 31 bits; the top bit marks names whose events
    /// should wake a sleeping flusher at once (passthrough or urgent rule),
    /// so the hot path learns it from the key without a lookup.
    name: u32,
    prefix: u32,
}

/// Top bit of `EventKey::name`: wake the flusher on publish.
const WAKES: u32 = 1 << 31;
/// Next bit (name ids stay below `record::MAX_NAMES` = 2^30): stamp events
/// at publish, because the name's policy (`latest`) picks survivors by
/// publish time.
const STAMPS: u32 = 1 << 30;

impl EventKey {
    #[cfg(all(test, not(ringfold_loom)))]
    pub(crate) fn for_tests(name: u32, prefix: u32) -> Self {
        EventKey { name, prefix }
    }

    /// Dense id of the full name within its engine.
    pub fn name_id(&self) -> u32 {
        self.name & !(WAKES | STAMPS)
    }

    /// Events of this name carry a publish stamp (see `STAMPS`).
    #[inline]
    pub(crate) fn stamps(&self) -> bool {
        self.name & STAMPS != 0
    }

    /// Events of this name wake a sleeping flusher at once (the name is
    /// passthrough or matches an urgent rule).
    pub(crate) fn wakes(&self) -> bool {
        self.name & WAKES != 0
    }
    /// Dense id of the prefix within its engine.
    pub fn prefix_id(&self) -> u32 {
        self.prefix
    }
}

/// What an event carries about its name: one thin pointer to this (see
/// `event::NameRef`) instead of two fat string pointers and the key.
///
/// Created once per name and shared (the same `Arc`) by every later
/// snapshot, so it lives at a fixed address for as long as any snapshot does.
pub(crate) struct NameMeta {
    pub(crate) name: StdArc<str>,
    pub(crate) prefix: StdArc<str>,
    pub(crate) key: EventKey,
    /// The engine's epoch: events carry their timestamp as nanoseconds
    /// since it, which keeps an event at 32 bytes for a `u64` payload.
    pub(crate) epoch: Instant,
}

/// What the engine knows about one interned name.
#[derive(Clone)]
pub(crate) struct NameInfo {
    pub(crate) meta: StdArc<NameMeta>,
    pub(crate) prefix: u32,
    pub(crate) policy: Policy,
    pub(crate) urgent: bool,
}

/// What the engine knows about one prefix.
#[derive(Clone)]
pub(crate) struct PrefixInfo {
    pub(crate) prefix: StdArc<str>,
    /// `"<prefix>:batch"`, built once.
    pub(crate) batch_name: StdArc<str>,
}

/// One immutable snapshot of the interned names.
#[derive(Clone, Default)]
pub(crate) struct Table {
    by_name: AHashMap<StdArc<str>, EventKey>,
    by_prefix: AHashMap<StdArc<str>, u32>,
    pub(crate) names: Vec<NameInfo>,
    pub(crate) prefixes: Vec<PrefixInfo>,
    /// Some name's events are stamped at publish (its key has `STAMPS`).
    pub(crate) any_stamps: bool,
}

impl Table {
    pub(crate) fn get(&self, name: &str) -> Option<EventKey> {
        self.by_name.get(name).copied()
    }
    pub(crate) fn prefix_id(&self, prefix: &str) -> Option<u32> {
        self.by_prefix.get(prefix).copied()
    }
}

/// The concurrent interner of one engine.
pub(crate) struct Interner {
    snapshot: SnapshotCell<Table>,
    /// Serialises writers; readers never touch it.
    writer: Mutex<()>,
    policies: PolicyTable,
    max_names: usize,
    max_len: usize,
    /// Time zero of event timestamps (see `NameMeta::epoch`).
    epoch: Instant,
}

/// Splits `name` into its prefix after validating it.
pub(crate) fn validate_name(name: &str, max_len: usize) -> Result<&str, Error> {
    if name.is_empty() {
        return Err(Error::EmptyName);
    }
    if name.len() > max_len {
        return Err(Error::NameTooLong {
            len: name.len(),
            max: max_len,
        });
    }
    if name.split(':').any(str::is_empty) {
        return Err(Error::EmptySegment { name: name.into() });
    }
    if name.contains('*') {
        return Err(Error::ReservedCharacter { name: name.into() });
    }
    // A single-segment name is its own prefix.
    Ok(name.rsplit_once(':').map_or(name, |(prefix, _)| prefix))
}

impl Interner {
    pub(crate) fn new(policies: PolicyTable, max_names: usize, max_len: usize) -> Self {
        Interner {
            snapshot: SnapshotCell::new(Arc::new(Table::default())),
            writer: Mutex::new(()),
            policies,
            max_names,
            max_len,
            epoch: Instant::now(),
        }
    }

    /// Time zero of this engine's event timestamps.
    pub(crate) fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Interns `name`, returning the same key for the same name from any
    /// thread.
    pub(crate) fn key(&self, name: &str) -> Result<EventKey, Error> {
        if let Some(key) = self.snapshot.load().get(name) {
            return Ok(key);
        }
        self.insert(name)
    }

    #[cold]
    fn insert(&self, name: &str) -> Result<EventKey, Error> {
        let prefix = validate_name(name, self.max_len)?;
        let _writer = lock(&self.writer);
        // Re-check under the writer lock: another thread may have won.
        let current = self.snapshot.load_full();
        if let Some(key) = current.get(name) {
            return Ok(key);
        }
        if current.names.len() >= self.max_names {
            return Err(Error::TooManyNames {
                limit: self.max_names,
            });
        }
        let mut next = Table::clone(&current);
        let prefix_id = match next.prefix_id(prefix) {
            Some(id) => id,
            None => {
                let id = next.prefixes.len() as u32;
                let prefix: StdArc<str> = prefix.into();
                next.prefixes.push(PrefixInfo {
                    batch_name: format!("{prefix}:batch").into(),
                    prefix: prefix.clone(),
                });
                next.by_prefix.insert(prefix, id);
                id
            }
        };
        let resolved = self.policies.resolve(name);
        let wakes = resolved.urgent || resolved.policy == Policy::Passthrough;
        let stamps = matches!(resolved.policy, Policy::Latest { .. });
        let key = EventKey {
            name: next.names.len() as u32
                | if wakes { WAKES } else { 0 }
                | if stamps { STAMPS } else { 0 },
            prefix: prefix_id,
        };
        let name: StdArc<str> = name.into();
        let meta = StdArc::new(NameMeta {
            name: name.clone(),
            prefix: next.prefixes[prefix_id as usize].prefix.clone(),
            key,
            epoch: self.epoch,
        });
        next.names.push(NameInfo {
            meta,
            prefix: prefix_id,
            policy: resolved.policy,
            urgent: resolved.urgent,
        });
        next.by_name.insert(name, key);
        next.any_stamps |= stamps;
        self.snapshot.store(Arc::new(next));
        Ok(key)
    }

    /// The current snapshot (never torn: either before or after an insert).
    pub(crate) fn snapshot(&self) -> Arc<Table> {
        self.snapshot.load_full()
    }
}

#[cfg(all(test, not(ringfold_loom)))]
mod tests {
    use super::*;
    use std::time::Duration;

    fn interner(max: usize) -> Interner {
        Interner::new(
            PolicyTable::new(Policy::batch(Duration::from_millis(1), 1)),
            max,
            64,
        )
    }

    #[test]
    fn prefix_is_name_minus_last_segment() {
        let i = interner(16);
        let k = i.key("data:users:created").unwrap();
        let t = i.snapshot();
        assert_eq!(&*t.prefixes[k.prefix_id() as usize].prefix, "data:users");
        assert_eq!(
            &*t.prefixes[k.prefix_id() as usize].batch_name,
            "data:users:batch"
        );
        assert_eq!(
            &*t.names[k.name_id() as usize].meta.name,
            "data:users:created"
        );
    }

    #[test]
    fn bad_names_are_typed_errors() {
        let i = interner(16);
        assert!(matches!(i.key(""), Err(Error::EmptyName)));
        assert!(matches!(i.key("a::b"), Err(Error::EmptySegment { .. })));
        assert!(matches!(i.key("a:*"), Err(Error::ReservedCharacter { .. })));
        assert!(matches!(
            i.key(&"x".repeat(65)),
            Err(Error::NameTooLong { len: 65, max: 64 })
        ));
    }

    #[test]
    fn limit_is_enforced_and_existing_names_still_resolve() {
        let i = interner(2);
        let a = i.key("a:1").unwrap();
        i.key("a:2").unwrap();
        assert!(matches!(
            i.key("a:3"),
            Err(Error::TooManyNames { limit: 2 })
        ));
        assert_eq!(i.key("a:1").unwrap(), a);
    }

    #[test]
    fn concurrent_interning_agrees() {
        let i = std::sync::Arc::new(interner(10_000));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let i = i.clone();
                std::thread::spawn(move || {
                    (0..500)
                        .map(|n| i.key(&format!("p{}:n{n}", n % 7)).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(results.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(i.snapshot().names.len(), 500);
        assert_eq!(i.snapshot().prefixes.len(), 7);
    }
}
