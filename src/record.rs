//! What travels through a producer's ring: compact slots.
//!
//! A slot is an 8-byte header and the payload, 16 bytes for a `u64`. Most
//! events are one slot: the name id and the urgent flag, the low 32 bits of
//! the sub-key, and the payload. An event whose sub-key does not fit in 32
//! bits, or that carries a publish-time stamp (`precise_timestamps`), is
//! preceded by extension slots holding those words. All slots of one event
//! are published by a single tail store, so a drain never sees part of an
//! event.
//!
//! Why so small: when producers stream, the flusher reads every ring line
//! shortly after it is written, so each line the producer writes on its
//! next lap must first be taken back from the flusher's cache (one
//! cross-core ownership transfer per line). That transfer, not the slot
//! write, dominates the producer's cost; 16-byte slots put four events in a
//! cache line where a 32-byte record put two. Measured on the 2-core
//! benchmark machine, one producer streaming `u64`s over 64 prefixes: ~20
//! ns per event end to end with 32-byte records, ~11 with these slots.

use std::mem::{ManuallyDrop, MaybeUninit};

use crate::intern::EventKey;

/// Header bit: an extension slot (no payload).
const EXT: u32 = 1 << 31;
/// Header bit of an event slot: publish_urgent.
const URGENT: u32 = 1 << 30;
/// Name ids live in the header's low bits, below the flags.
pub(crate) const MAX_NAMES: usize = 1 << 30;

/// Extension kinds (header low bits when `EXT` is set).
const SUB_KEY_HIGH: u32 = 0;
const STAMP_LOW: u32 = 1;
const STAMP_HIGH: u32 = 2;

/// One ring slot: an event (header, low sub-key bits, payload) or an
/// extension word for the event that follows it.
pub(crate) struct Slot<T> {
    header: u32,
    data: u32,
    /// Initialised exactly when `header & EXT == 0`.
    payload: MaybeUninit<T>,
}

/// A slot taken apart by the flusher.
enum Parts<T> {
    Event {
        name_id: u32,
        urgent: bool,
        sub_key_low: u32,
        payload: T,
    },
    /// Part of the next event's sub-key or stamp.
    Ext { kind: u32, data: u32 },
}

/// Extension words collected for the next event slot of the same ring.
#[derive(Clone, Copy, Default)]
struct Ext {
    sub_key_high: u32,
    /// Nanoseconds since the epoch plus one; 0: not stamped.
    stamp: u64,
}

impl Ext {
    /// Applies one extension slot's word.
    fn set(&mut self, kind: u32, data: u32) {
        match kind {
            SUB_KEY_HIGH => self.sub_key_high = data,
            STAMP_LOW => self.stamp = (self.stamp & !0xffff_ffff) | u64::from(data),
            _ => self.stamp = (self.stamp & 0xffff_ffff) | (u64::from(data) << 32),
        }
    }
}

impl<T> Slot<T> {
    fn ext(kind: u32, data: u32) -> Self {
        Slot {
            header: EXT | kind,
            data,
            payload: MaybeUninit::uninit(),
        }
    }

    /// Whether this is an event slot (holding a payload).
    pub(crate) fn is_event(&self) -> bool {
        self.header & EXT == 0
    }

    /// Takes the slot apart, moving the payload out of event slots.
    #[inline]
    fn into_parts(self) -> Parts<T> {
        // The payload is moved out below; the slot's own drop must not run.
        let slot = ManuallyDrop::new(self);
        if slot.header & EXT != 0 {
            return Parts::Ext {
                kind: slot.header & !EXT,
                data: slot.data,
            };
        }
        // SAFETY: event slots are always built with an initialised payload
        // (`Outgoing::event_slot`), and `slot` is never used or dropped
        // again, so the payload is moved out exactly once.
        let payload = unsafe { slot.payload.assume_init_read() };
        Parts::Event {
            name_id: slot.header & !URGENT,
            urgent: slot.header & URGENT != 0,
            sub_key_low: slot.data,
            payload,
        }
    }

    /// The payload of an event slot; `None` for an extension slot.
    pub(crate) fn into_payload(self) -> Option<T> {
        match self.into_parts() {
            Parts::Event { payload, .. } => Some(payload),
            Parts::Ext { .. } => None,
        }
    }
}

impl<T> Drop for Slot<T> {
    fn drop(&mut self) {
        if self.is_event() {
            // SAFETY: event slots always hold an initialised payload, and
            // this is its only drop (`into_parts` suppresses this one).
            unsafe { self.payload.assume_init_drop() }
        }
    }
}

/// An event as the flusher folds it: its extension words already applied.
pub(crate) struct Decoded<T> {
    pub(crate) name_id: u32,
    /// Published with `publish_urgent*`.
    pub(crate) urgent: bool,
    pub(crate) sub_key: u64,
    /// Nanoseconds since the epoch, if stamped at publish.
    pub(crate) stamp: Option<u64>,
    pub(crate) payload: T,
}

/// Reassembles events from one ring's slots: extension slots are collected
/// for the event slot that follows them, so nothing outside this module
/// handles extension words. One per ring being drained (an event's slots
/// are contiguous in its ring, published by one tail store).
#[derive(Default)]
pub(crate) struct Decoder {
    ext: Ext,
    /// `ext` holds words for the next event. Most events have none: the
    /// flag spares them reading and zeroing the words.
    ext_pending: bool,
    /// Extension slots consumed since `take_ext_count`.
    ext_taken: u64,
}

impl Decoder {
    /// The event this slot completes, or `None` for an extension slot.
    #[inline]
    pub(crate) fn decode<T>(&mut self, slot: Slot<T>) -> Option<Decoded<T>> {
        match slot.into_parts() {
            Parts::Event {
                name_id,
                urgent,
                sub_key_low,
                payload,
            } => {
                let (sub_key, stamp) = if self.ext_pending {
                    // Taking the words leaves zeros (no wide sub-key, no
                    // stamp) for the next event.
                    self.ext_pending = false;
                    let ext = std::mem::take(&mut self.ext);
                    (
                        u64::from(ext.sub_key_high) << 32 | u64::from(sub_key_low),
                        ext.stamp.checked_sub(1),
                    )
                } else {
                    (u64::from(sub_key_low), None)
                };
                Some(Decoded {
                    name_id,
                    urgent,
                    sub_key,
                    stamp,
                    payload,
                })
            }
            Parts::Ext { kind, data } => {
                self.take_ext(kind, data);
                None
            }
        }
    }

    #[cold]
    fn take_ext(&mut self, kind: u32, data: u32) {
        self.ext.set(kind, data);
        self.ext_pending = true;
        self.ext_taken += 1;
    }

    /// Extension slots consumed since the last call (for the lane's
    /// event count).
    pub(crate) fn take_ext_count(&mut self) -> u64 {
        std::mem::take(&mut self.ext_taken)
    }
}

/// An event on its way into a ring, before it is cut into slots.
pub(crate) struct Outgoing<T> {
    pub(crate) key: EventKey,
    pub(crate) urgent: bool,
    pub(crate) sub_key: u64,
    /// Nanoseconds since the epoch plus one; 0: not stamped.
    pub(crate) stamp: u64,
    pub(crate) payload: T,
}

impl<T> Outgoing<T> {
    /// Slots this event takes in a ring.
    #[inline]
    pub(crate) fn slots(&self) -> usize {
        1 + usize::from(self.sub_key >> 32 != 0) + 2 * usize::from(self.stamp != 0)
    }

    /// The event slot alone: enough when `slots()` is 1.
    #[inline]
    pub(crate) fn into_event_slot(self) -> Slot<T> {
        let urgent = if self.urgent { URGENT } else { 0 };
        Slot {
            header: self.key.name_id() | urgent,
            data: self.sub_key as u32,
            payload: MaybeUninit::new(self.payload),
        }
    }

    /// The event's slots in ring order: extension words first, then the
    /// event slot with the payload. Yields exactly `slots()` items.
    pub(crate) fn into_slots(self) -> impl Iterator<Item = Slot<T>> {
        let high = (self.sub_key >> 32) as u32;
        let sub_key = (high != 0).then(|| Slot::ext(SUB_KEY_HIGH, high));
        let stamp = (self.stamp != 0).then(|| {
            [
                Slot::ext(STAMP_LOW, self.stamp as u32),
                Slot::ext(STAMP_HIGH, (self.stamp >> 32) as u32),
            ]
        });
        let event = self.into_event_slot();
        sub_key
            .into_iter()
            .chain(stamp.into_iter().flatten())
            .chain(std::iter::once(event))
    }
}

#[cfg(all(test, not(ringfold_loom)))]
mod tests {
    use super::*;

    use crate::intern::EventKey;

    #[test]
    fn a_u64_event_is_one_16_byte_slot() {
        assert_eq!(std::mem::size_of::<Slot<u64>>(), 16);
    }

    fn round_trip(sub_key: u64, stamp: u64, urgent: bool) {
        let key = EventKey::for_tests(7, 3);
        let out = Outgoing {
            key,
            urgent,
            sub_key,
            stamp,
            payload: String::from("payload"),
        };
        let n = out.slots();
        let slots: Vec<_> = out.into_slots().collect();
        assert_eq!(slots.len(), n, "slots() must count what into_slots yields");
        let mut ext = Ext::default();
        let mut events = 0;
        for slot in slots {
            match slot.into_parts() {
                Parts::Ext { kind, data } => ext.set(kind, data),
                Parts::Event {
                    name_id,
                    urgent: u,
                    sub_key_low,
                    payload,
                } => {
                    events += 1;
                    assert_eq!(name_id, 7);
                    assert_eq!(u, urgent);
                    assert_eq!(
                        u64::from(ext.sub_key_high) << 32 | u64::from(sub_key_low),
                        sub_key
                    );
                    assert_eq!(ext.stamp, stamp);
                    assert_eq!(payload, "payload");
                }
            }
        }
        assert_eq!(events, 1);
    }

    #[test]
    fn extension_slots_carry_large_sub_keys_and_stamps() {
        for sub_key in [0, 1, u32::MAX as u64, 1 << 32, u64::MAX] {
            for stamp in [0, 1, u32::MAX as u64 + 1, (1 << 62) + 12345] {
                round_trip(sub_key, stamp, false);
                round_trip(sub_key, stamp, true);
            }
        }
    }

    /// The flusher keeps one `Decoder` for all rings and feeds it slot by
    /// slot, one drain at a time: a `latest` event's stamp must reach the
    /// fold whichever way its slots are split between calls, and must
    /// never leak onto the next event (which would give an unstamped event
    /// another's stamp, or let a stamped one lose its own).
    #[test]
    fn a_decoder_keeps_each_stamp_with_its_own_event() {
        let stamped = |stamp: u64, payload: u64| {
            Outgoing {
                key: EventKey::for_tests(7, 3),
                urgent: false,
                sub_key: u64::MAX,
                stamp,
                payload,
            }
            .into_slots()
            .collect::<Vec<_>>()
        };
        let mut decoder = Decoder::default();
        // Extension slots, then a "drain boundary" (the ext count is taken,
        // as the flusher does after each ring), then the event slot.
        let mut slots = stamped((1 << 40) + 7, 1).into_iter();
        assert!(decoder.decode(slots.next().unwrap()).is_none());
        assert!(decoder.decode(slots.next().unwrap()).is_none());
        assert_eq!(decoder.take_ext_count(), 2);
        assert!(decoder.decode(slots.next().unwrap()).is_none());
        let first = decoder.decode(slots.next().unwrap()).unwrap();
        assert_eq!(first.stamp, Some((1 << 40) + 6));
        assert_eq!(first.sub_key, u64::MAX);
        assert_eq!(first.payload, 1);
        // The next event, unstamped with a narrow sub-key, gets none of the
        // previous event's words.
        let plain = Outgoing {
            key: EventKey::for_tests(7, 3),
            urgent: false,
            sub_key: 5,
            stamp: 0,
            payload: 2u64,
        };
        let second = decoder.decode(plain.into_event_slot()).unwrap();
        assert_eq!((second.stamp, second.sub_key), (None, 5));
        // A stamp whose low word is zero is still a stamp, not "unstamped".
        let mut slots = stamped(1 << 32, 3).into_iter();
        let third = loop {
            if let Some(e) = decoder.decode(slots.next().unwrap()) {
                break e;
            }
        };
        assert_eq!(third.stamp, Some((1 << 32) - 1));
        assert_eq!(decoder.take_ext_count(), 4);
    }

    #[test]
    fn dropping_slots_drops_payloads_once() {
        let payload = std::sync::Arc::new(());
        let out = Outgoing {
            key: EventKey::for_tests(1, 0),
            urgent: false,
            sub_key: u64::MAX,
            stamp: 5,
            payload: payload.clone(),
        };
        let slots: Vec<_> = out.into_slots().collect();
        assert_eq!(std::sync::Arc::strong_count(&payload), 2);
        drop(slots);
        assert_eq!(std::sync::Arc::strong_count(&payload), 1);
    }
}
