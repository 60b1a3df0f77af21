//! Interning of event names into compact ids.
//!
//! `data:users:created` is interned once into an [`EventKey`]: a name id and
//! the id of its prefix (`data:users`, the name minus its last `:` segment),
//! plus the identity of the engine that interned it. Hot paths carry keys,
//! never strings.
//!
//! The structure, and why it makes a new name amortised O(1):
//!
//! * **Arenas.** Names and prefixes live in append-only [`Arena`]s: chunks
//!   of doubling size that are allocated once and never move, so an entry's
//!   address (and the `NameMeta` events point to) is fixed from the moment
//!   it is written until the interner's storage is dropped. A published
//!   length (Release store by the writer, Acquire load by readers) says
//!   which entries are complete; `name(id)` is one length check and two
//!   indexed reads, lock-free.
//! * **Index.** Name strings map to ids through an open-addressing table of
//!   atomic slots (`hash tag << 32 | id + 1`, 0 = empty), probed linearly
//!   and kept at most half full. The writer fills a slot in place; only when
//!   the table would pass half full does it build one twice the size and
//!   publish it through an arc-swap cell. Each doubling rehashes every name
//!   once, so over `n` names the rebuilds cost O(n) in total: amortised
//!   O(1) per name, where the old copy-on-write snapshot cost O(names) for
//!   every new name. A lookup is one arc-swap load, one hash and one probe
//!   sequence, never a lock.
//! * **Writers** (a name seen for the first time) serialise on a mutex,
//!   re-check the index, and then, in this order: append the prefix if it
//!   is new, fill the index slot, append the name (publishing the new
//!   length). A reader that sees the length `n` therefore also sees the
//!   index slots of ids below `n` (a whole [`View`]); a reader that finds a
//!   slot whose id is not yet published treats it as a miss and takes the
//!   lock, where it finds the name.
//!
//! Ids are dense, never reused and never move, so the interner needs no
//! snapshots: an id below `name_count()` resolves forever.

use std::sync::Arc as StdArc;
use std::time::Instant;

use ahash::RandomState;

mod arena;
mod index;

use arena::Arena;
use index::{new_hasher, place, Index, MIN_INDEX, TAG};

use crate::error::Error;
use crate::policy::{Policy, PolicyTable};
use crate::sync::{lock, Arc, AtomicBool, Mutex, Ordering, SnapshotCell};

/// An interned event name: compact ids for the name and its prefix, and the
/// identity of the engine that interned it.
///
/// Obtain one with `Engine::key` and keep it on the hot path. A key is only
/// meaningful to the engine that made it: another engine refuses it rather
/// than delivering it under whatever name has the same id there.
///
/// ```
/// use ringfold::{Engine, Value};
/// let engine = Engine::<Value>::builder().build()?;
/// let a = engine.key("data:users:created")?;
/// let b = engine.key("data:users:deleted")?;
/// assert_eq!(a.prefix_id(), b.prefix_id());
/// assert_ne!(a.name_id(), b.name_id());
/// assert_eq!(engine.key("data:users:created")?, a);
///
/// // The same name in another engine is another key.
/// let other = Engine::<Value>::builder().build()?;
/// assert_ne!(other.key("data:users:created")?, a);
/// # Ok::<(), ringfold::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventKey(u128);

// The three ids live in one `u128` (name in the top 32 bits, then the
// prefix, then the engine tag in the low 32; ordering compares them in that
// order) rather than in a struct of three `u32`s. Why: the key is copied by
// value on every publish, and a 12-byte struct made LLVM copy it through the
// stack as an 8- and a 4-byte store, then read the prefix and the tag back
// with one 8-byte load spanning both: a failed store-to-load forwarding,
// which stalls the load until the whole store buffer (the ring slot and
// tail stores of the previous publishes, whose lines the flusher is reading)
// has drained. `perf annotate` put 85% of a streaming producer's samples on
// that load. A scalar stays in registers.
const NAME_SHIFT: u32 = 64;
const PREFIX_SHIFT: u32 = 32;

impl std::fmt::Debug for EventKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventKey")
            .field("name_id", &self.name_id())
            .field("prefix_id", &self.prefix_id())
            .field("engine", &self.engine_tag())
            .finish()
    }
}

/// Top bit of the key's name word: wake the flusher on publish.
const WAKES: u32 = 1 << 31;
/// Next bit (name ids stay below `record::MAX_NAMES` = 2^30): stamp events
/// at publish, because the name's policy (`latest`) picks survivors by
/// publish time, or because the engine has `precise_timestamps`.
const STAMPS: u32 = 1 << 30;

/// Ids must fit below [`STAMPS`]; the interner refuses names beyond it even
/// if `max_names` is higher (the engine builder caps it there anyway).
const MAX_IDS: usize = STAMPS as usize;

impl EventKey {
    #[cfg(all(test, not(ringfold_loom)))]
    pub(crate) fn for_tests(name: u32, prefix: u32) -> Self {
        EventKey::pack(name, prefix, 0)
    }

    /// Packs the name word (id and flag bits), the prefix id and the
    /// engine tag.
    #[inline(always)]
    const fn pack(name: u32, prefix: u32, engine: u32) -> Self {
        EventKey((name as u128) << NAME_SHIFT | (prefix as u128) << PREFIX_SHIFT | engine as u128)
    }

    /// The name word: the id and the `WAKES` / `STAMPS` bits.
    #[inline(always)]
    const fn name_word(&self) -> u32 {
        (self.0 >> NAME_SHIFT) as u32
    }

    /// Dense id of the full name within its engine.
    pub fn name_id(&self) -> u32 {
        self.name_word() & !(WAKES | STAMPS)
    }

    /// Events of this name carry a publish stamp (see `STAMPS`).
    #[inline]
    pub(crate) fn stamps(&self) -> bool {
        self.name_word() & STAMPS != 0
    }

    /// Events of this name wake a sleeping flusher at once (the name is
    /// passthrough or matches an urgent rule).
    pub(crate) fn wakes(&self) -> bool {
        self.name_word() & WAKES != 0
    }
    /// Dense id of the prefix within its engine.
    pub fn prefix_id(&self) -> u32 {
        (self.0 >> PREFIX_SHIFT) as u32
    }

    /// The tag of the engine that made this key (`Interner::owns`).
    #[inline]
    pub(crate) fn engine_tag(&self) -> u32 {
        self.0 as u32
    }
}

/// Source of engine tags. A plain std atomic even under the model-checking
/// cfg: it only hands out distinct numbers and takes no part in any
/// protocol the loom models check (and loom atomics cannot be statics).
static NEXT_ENGINE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

/// A tag for a new interner: distinct from every live engine's unless
/// 2^32 - 1 engines were created in between (the counter wraps, skipping 0).
/// After a wrap two live engines can share a tag, and then a key from one
/// is accepted by the other if its id is below the other's name count,
/// which is the pre-tag behaviour; creating four billion engines while one
/// stays alive is the price of a 4-byte tag.
fn next_engine_tag() -> u32 {
    loop {
        let tag = NEXT_ENGINE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if tag != 0 {
            return tag;
        }
    }
}

/// What an event carries about its name: one thin pointer to this (see
/// `event::NameRef`) instead of two fat string pointers and the key.
///
/// Created once per name and held by the interner's name arena, which never
/// moves or drops an entry before the arena itself is dropped: it lives at
/// a fixed address for as long as the interner or any [`Keepalive`] does.
pub(crate) struct NameMeta {
    pub(crate) name: StdArc<str>,
    pub(crate) prefix: StdArc<str>,
    pub(crate) key: EventKey,
    /// The engine's epoch: events carry their timestamp as nanoseconds
    /// since it, which keeps an event at 32 bytes for a `u64` payload.
    pub(crate) epoch: Instant,
    /// The name folds under `Policy::Latest`: a lagging subscriber's queue
    /// merges its windows last-value-wins (`delivery::merge`).
    pub(crate) latest: bool,
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

/// What the writer lock guards besides the right to push.
struct Writer {
    /// Prefix string to id, for writers only: an open-addressing table like
    /// the name index (`hash tag << 32 | id + 1`, 0 = empty, linear probes,
    /// at most half full), whose strings are the prefix arena's own. Plain
    /// words behind the lock: 8 bytes a slot, about 17 per prefix, where a
    /// map keyed by a second handle to each string took about 50 (issue 19:
    /// a million prefixes).
    prefix_slots: Vec<u64>,
}

/// Name and prefix storage, shared with every [`Keepalive`].
struct Store {
    names: Arena<NameInfo>,
    prefixes: Arena<PrefixInfo>,
    /// By name id: the name and its key, all a lookup by string needs, in
    /// one entry (the string pointer inline), so a hit costs the index
    /// slot, this entry and the string bytes, as a hash map's bucket would,
    /// rather than two more pointer hops through `NameInfo` and `NameMeta`.
    /// Pushed before the index slot and the name, so it is complete for
    /// every id the index or a `View` can yield.
    keys: Arena<(StdArc<str>, EventKey)>,
}

/// A cheap handle (one reference count) that keeps an interner's names
/// and prefixes, including every `NameMeta` and interned string, at their
/// addresses for as long as it lives, even after the engine is dropped.
/// What a delivered batch holds so the raw name pointers in its events
/// (`event::NameRef`, `event::InternedStr`) stay valid.
///
/// The fold holds one for the flusher's lifetime.
#[derive(Clone)]
pub(crate) struct Keepalive(Arc<Store>);

impl Keepalive {
    /// Name `id`, as [`Interner::name`].
    pub(crate) fn name(&self, id: usize) -> Option<&NameInfo> {
        self.0.names.get(id)
    }
    /// Prefix `id`, as [`Interner::prefix`].
    pub(crate) fn prefix(&self, id: usize) -> Option<&PrefixInfo> {
        self.0.prefixes.get(id)
    }
}

/// The concurrent interner of one engine.
pub(crate) struct Interner {
    store: Arc<Store>,
    /// The current index; replaced (never mutated in place except for
    /// filling empty slots) when it doubles.
    index: SnapshotCell<Index>,
    hasher: RandomState,
    /// Serialises writers; readers never touch it.
    writer: Mutex<Writer>,
    policies: PolicyTable,
    max_names: usize,
    max_len: usize,
    /// Time zero of event timestamps (see `NameMeta::epoch`).
    epoch: Instant,
    /// This engine's identity, carried by every key it makes.
    tag: u32,
    /// Some name's events are stamped at publish (its key has `STAMPS`).
    any_stamps: AtomicBool,
    /// Every name's events are stamped (`precise_timestamps`).
    stamp_all: bool,
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
            store: Arc::new(Store {
                names: Arena::new(),
                prefixes: Arena::new(),
                keys: Arena::new(),
            }),
            index: SnapshotCell::new(Arc::new(Index::from_slots(vec![0; MIN_INDEX]))),
            hasher: new_hasher(),
            writer: Mutex::new(Writer {
                prefix_slots: vec![0; MIN_INDEX],
            }),
            policies,
            max_names: max_names.min(MAX_IDS),
            max_len,
            epoch: Instant::now(),
            tag: next_engine_tag(),
            any_stamps: AtomicBool::new(false),
            stamp_all: false,
        }
    }

    /// Every key this interner makes carries `STAMPS`
    /// (`EngineBuilder::precise_timestamps`), so the publish path decides
    /// whether to read the clock from the key alone.
    pub(crate) fn stamping_all(mut self, on: bool) -> Self {
        self.stamp_all = on;
        self.any_stamps = AtomicBool::new(on);
        self
    }

    /// Time zero of this engine's event timestamps.
    pub(crate) fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Interns `name`, returning the same key for the same name from any
    /// thread.
    pub(crate) fn key(&self, name: &str) -> Result<EventKey, Error> {
        let hash = self.hasher.hash_one(name);
        if let Some(key) = self.find(name, hash) {
            return Ok(key);
        }
        self.insert(name, hash)
    }

    /// The key of `name` if it is interned (lock-free; interns nothing).
    #[cfg_attr(not(any(test, ringfold_loom)), allow(dead_code))]
    pub(crate) fn get(&self, name: &str) -> Option<EventKey> {
        self.find(name, self.hasher.hash_one(name))
    }

    /// True if `key` was made by this interner: one tag compare and the id
    /// bound. The publish path checks this so that a key from another
    /// engine is refused instead of delivered under this engine's name for
    /// the same id.
    #[inline]
    pub(crate) fn owns(&self, key: EventKey) -> bool {
        key.engine_tag() == self.tag && (key.name_id() as usize) < self.store.names.len()
    }

    /// This engine's tag, carried by every key it makes (see `owns`).
    #[inline]
    pub(crate) fn tag(&self) -> u32 {
        self.tag
    }

    /// Some name of this engine has publish stamps (a `latest` name).
    #[inline]
    pub(crate) fn any_stamps(&self) -> bool {
        // Relaxed: see `insert`; a name whose id a caller learnt from
        // `name_count` (Acquire) was published after the flag was set.
        self.any_stamps.load(Ordering::Relaxed)
    }

    /// Number of names interned so far; every id below resolves through
    /// [`Interner::name`]. Lock-free (one Acquire load).
    #[inline]
    pub(crate) fn name_count(&self) -> usize {
        self.store.names.len()
    }

    /// What the engine knows about name `id`; `None` if no such name (yet).
    /// Lock-free O(1).
    #[inline]
    #[cfg_attr(not(any(test, ringfold_loom)), allow(dead_code))]
    pub(crate) fn name(&self, id: usize) -> Option<&NameInfo> {
        self.store.names.get(id)
    }

    /// Number of prefixes interned so far.
    #[cfg_attr(not(any(test, ringfold_loom)), allow(dead_code))]
    pub(crate) fn prefix_count(&self) -> usize {
        self.store.prefixes.len()
    }

    /// What the engine knows about prefix `id`; `None` if no such prefix
    /// (yet). Lock-free O(1).
    #[inline]
    pub(crate) fn prefix(&self, id: usize) -> Option<&PrefixInfo> {
        self.store.prefixes.get(id)
    }

    /// A handle that keeps every interned name and prefix alive and in
    /// place, even after this interner is dropped (see [`Keepalive`]).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn keepalive(&self) -> Keepalive {
        Keepalive(self.store.clone())
    }

    /// The names published as of now, as one consistent view (the length is
    /// read once; see [`View`]).
    #[cfg(any(test, ringfold_loom))]
    pub(crate) fn view(&self) -> View<'_> {
        View {
            interner: self,
            len: self.name_count(),
        }
    }

    /// The lock-free lookup: one index load, one probe sequence; a slot
    /// whose id is not published yet counts as a miss (the caller then
    /// takes the writer lock, behind which the name is complete).
    #[inline]
    fn find(&self, name: &str, hash: u64) -> Option<EventKey> {
        let index = self.index.load();
        let mask = index.slots.len() - 1;
        let mut pos = hash as usize & mask;
        // Ends: the table is kept at most half full.
        loop {
            let slot = index.slots[pos].load(Ordering::Acquire);
            if slot == 0 {
                return None;
            }
            if slot & TAG == hash & TAG {
                let id = (slot as u32 as usize).wrapping_sub(1);
                if let Some((known, key)) = self.store.keys.get(id) {
                    if **known == *name {
                        return Some(*key);
                    }
                }
            }
            pos = (pos + 1) & mask;
        }
    }

    #[cold]
    fn insert(&self, name: &str, hash: u64) -> Result<EventKey, Error> {
        let prefix = validate_name(name, self.max_len)?;
        let mut writer = lock(&self.writer);
        // Re-check under the writer lock: another thread may have won. The
        // lock orders this after every earlier insert, all of whose slots
        // and lengths are therefore visible here.
        if let Some(key) = self.find(name, hash) {
            return Ok(key);
        }
        let id = self.store.names.len();
        if id >= self.max_names {
            return Err(Error::TooManyNames {
                limit: self.max_names,
            });
        }
        let prefix_hash = self.hasher.hash_one(prefix);
        let prefix_id = match self.find_prefix(&writer.prefix_slots, prefix, prefix_hash) {
            Some(id) => id,
            None => {
                let prefix: StdArc<str> = prefix.into();
                let info = PrefixInfo {
                    batch_name: format!("{prefix}:batch").into(),
                    prefix: prefix.clone(),
                };
                // SAFETY: we hold the writer lock, the only way to push.
                // Published before the name, so a reader that sees the
                // name sees its prefix.
                let Some(id) = (unsafe { self.store.prefixes.push(info) }) else {
                    // Unreachable: fewer prefixes than names.
                    return Err(Error::TooManyNames {
                        limit: self.max_names,
                    });
                };
                self.prefix_slots_insert(&mut writer.prefix_slots, prefix_hash, id);
                id as u32
            }
        };
        let resolved = self.policies.resolve(name);
        let wakes = resolved.urgent || resolved.policy == Policy::Passthrough;
        let stamps = self.stamp_all || matches!(resolved.policy, Policy::Latest { .. });
        let key = EventKey::pack(
            id as u32 | if wakes { WAKES } else { 0 } | if stamps { STAMPS } else { 0 },
            prefix_id,
            self.tag,
        );
        let prefix_str = match self.store.prefixes.get(prefix_id as usize) {
            Some(p) => p.prefix.clone(),
            None => prefix.into(),
        };
        let name: StdArc<str> = name.into();
        // SAFETY: we hold the writer lock, the only way to push.
        let pushed = unsafe { self.store.keys.push((name.clone(), key)) };
        debug_assert_eq!(pushed, Some(id));
        let meta = StdArc::new(NameMeta {
            name,
            prefix: prefix_str,
            key,
            epoch: self.epoch,
            latest: matches!(resolved.policy, Policy::Latest { .. }),
        });
        // Relaxed: published with the name below (its Release length
        // store), so a reader that sees this name's id sees the flag.
        if stamps {
            self.any_stamps.store(true, Ordering::Relaxed);
        }
        self.index_insert(hash, id);
        // SAFETY: we hold the writer lock, the only way to push.
        let pushed = unsafe {
            self.store.names.push(NameInfo {
                meta,
                prefix: prefix_id,
                policy: resolved.policy,
                urgent: resolved.urgent,
            })
        };
        debug_assert_eq!(pushed, Some(id));
        Ok(key)
    }

    /// Writer only: the id of `prefix` (hashed `hash`), if interned.
    fn find_prefix(&self, slots: &[u64], prefix: &str, hash: u64) -> Option<u32> {
        let mask = slots.len() - 1;
        let mut pos = hash as usize & mask;
        // Ends: the table is kept at most half full.
        loop {
            let slot = slots[pos];
            if slot == 0 {
                return None;
            }
            if slot & TAG == hash & TAG {
                let id = (slot as u32).wrapping_sub(1);
                if self
                    .store
                    .prefixes
                    .get(id as usize)
                    .is_some_and(|p| *p.prefix == *prefix)
                {
                    return Some(id);
                }
            }
            pos = (pos + 1) & mask;
        }
    }

    /// Writer only: records prefix `id` (just pushed) with hash `hash`,
    /// doubling the table first if it would pass half full (rehashing every
    /// prefix: amortised O(1) per prefix).
    fn prefix_slots_insert(&self, slots: &mut Vec<u64>, hash: u64, id: usize) {
        if (id + 1) * 2 > slots.len() {
            let mut grown = vec![0; slots.len() * 2];
            for old in 0..id {
                if let Some(p) = self.store.prefixes.get(old) {
                    place(&mut grown, self.hasher.hash_one(&*p.prefix), old);
                }
            }
            *slots = grown;
        }
        place(slots, hash, id);
    }

    /// Writer only (lock held): records that name `id` (not yet published)
    /// has hash `hash`, in place if the table stays at most half full, or
    /// in a table twice the size that then replaces it. Readers still on
    /// the old table miss only names newer than it, and take the lock.
    fn index_insert(&self, hash: u64, id: usize) {
        let index = self.index.load_full();
        let needed = (id + 1) * 2;
        if needed <= index.slots.len() {
            index.insert(hash, id);
            return;
        }
        let mut slots = index.slots.len() * 2;
        while slots < needed {
            slots *= 2;
        }
        let mut grown = vec![0; slots];
        for old in 0..id {
            if let Some((name, _)) = self.store.keys.get(old) {
                place(&mut grown, self.hasher.hash_one(&**name), old);
            }
        }
        place(&mut grown, hash, id);
        self.index.store(Arc::new(Index::from_slots(grown)));
    }
}

/// The interner's names as of one moment: the length is loaded once, so
/// every id below it resolves, by id and by name, and later names are not
/// seen. What the loom models check for wholeness.
#[cfg(any(test, ringfold_loom))]
pub(crate) struct View<'a> {
    interner: &'a Interner,
    len: usize,
}

#[cfg(any(test, ringfold_loom))]
impl View<'_> {
    /// Names in this view.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
    /// The key of `name` if it is in this view.
    pub(crate) fn get(&self, name: &str) -> Option<EventKey> {
        self.interner
            .get(name)
            .filter(|key| (key.name_id() as usize) < self.len)
    }
    /// Checks that the view is whole: every id below its length resolves to
    /// an entry whose key has that id, which the index maps back to the same
    /// key, and whose prefix id resolves to the name's prefix.
    pub(crate) fn check_consistent(&self) -> Result<(), String> {
        for id in 0..self.len {
            let info = self
                .interner
                .name(id)
                .ok_or_else(|| format!("id {id} below the length does not resolve"))?;
            let name = &*info.meta.name;
            let key = info.meta.key;
            if key.name_id() as usize != id || key.prefix_id() != info.prefix {
                return Err(format!("name {name:?}: key {key:?}, slot {id}"));
            }
            if self.get(name) != Some(key) {
                return Err(format!("name {name:?} missing from the index"));
            }
            if !self.interner.owns(key) {
                return Err(format!("name {name:?}: key not owned"));
            }
            let prefix = self
                .interner
                .prefix(info.prefix as usize)
                .ok_or_else(|| format!("prefix id {} has no entry", info.prefix))?;
            if info.prefix as usize >= self.interner.prefix_count() {
                return Err(format!("prefix id {} beyond the prefix count", info.prefix));
            }
            if prefix.prefix != info.meta.prefix {
                return Err(format!("prefix {:?} does not map back", &*prefix.prefix));
            }
        }
        Ok(())
    }
}

#[cfg(all(test, not(ringfold_loom)))]
mod tests;
