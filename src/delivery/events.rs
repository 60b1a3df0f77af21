//! [`Events`]: the events of a batch, as one sequence.
//!
//! A batch sealed from one window lends its events as a plain slice. A
//! batch merged from several windows of one prefix (a lagging subscriber's
//! queue coalesces them, see `queue`) lends the windows' events in order
//! without copying them: payloads are not `Clone`, and every subscriber
//! shares the sealed windows. `Events` hides which of the two it is.

use std::fmt;
use std::iter::FusedIterator;
use std::ops::Index;

use super::batch::Sealed;
use crate::event::Event;
use crate::sync::Arc;

/// The events of one [`Batch`](super::Batch), in delivery order: an
/// iterable, indexable view that borrows from the batch.
///
/// ```
/// use ringfold::{Batch, Engine};
/// let engine = Engine::<u64>::builder()
///     .subscriber(|b: &Batch<u64>| {
///         let events = b.events();
///         let total: u64 = events.iter().map(|e| *e.payload()).sum();
///         assert_eq!((events.len(), total), (3, 6));
///         assert_eq!(*events[0].payload(), 1);
///         assert_eq!(events.last().map(|e| *e.payload()), Some(3));
///     })
///     .build()?;
/// for v in 1..=3u64 {
///     engine.publish("data:users:created", v)?;
/// }
/// engine.shutdown()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Events<'a, T> {
    repr: Repr<'a, T>,
}

// `Merged` is made by the coalescing queue (next commit).
#[allow(dead_code)]
enum Repr<'a, T> {
    /// One window's events (every unmerged batch).
    Slice(&'a [Event<T>]),
    /// Several windows' events: every event of `segments`, in order,
    /// unless `picks` selects (segment, index) pairs (a merged `latest`
    /// window's survivors).
    Merged {
        segments: &'a [Arc<Sealed<T>>],
        picks: Option<&'a [(u32, u32)]>,
        len: usize,
    },
}

impl<T> Clone for Repr<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Repr<'_, T> {}

impl<T> Clone for Events<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Events<'_, T> {}

impl<'a, T> Events<'a, T> {
    pub(crate) fn slice(events: &'a [Event<T>]) -> Self {
        Events {
            repr: Repr::Slice(events),
        }
    }

    /// Every event of `segments`, in order (`picks`: `None`), or the
    /// `(segment, index)` pairs of `picks`, in that order. `len` is the
    /// number of events either way.
    #[allow(dead_code)]
    pub(crate) fn merged(
        segments: &'a [Arc<Sealed<T>>],
        picks: Option<&'a [(u32, u32)]>,
        len: usize,
    ) -> Self {
        Events {
            repr: Repr::Merged {
                segments,
                picks,
                len,
            },
        }
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        match self.repr {
            Repr::Slice(s) => s.len(),
            Repr::Merged { len, .. } => len,
        }
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The events in order.
    pub fn iter(&self) -> EventsIter<'a, T> {
        EventsIter {
            repr: self.repr,
            front: 0,
            back: self.len(),
            seg: 0,
            offset: 0,
        }
    }

    /// The `i`-th event, if any (`O(1)` unmerged; merged batches walk their
    /// windows).
    pub fn get(&self, i: usize) -> Option<&'a Event<T>> {
        match self.repr {
            Repr::Slice(s) => s.get(i),
            Repr::Merged {
                segments, picks, ..
            } => match picks {
                Some(p) => {
                    let &(seg, idx) = p.get(i)?;
                    segments.get(seg as usize)?.events.get(idx as usize)
                }
                None => {
                    let mut i = i;
                    for s in segments {
                        if i < s.events.len() {
                            return s.events.get(i);
                        }
                        i -= s.events.len();
                    }
                    None
                }
            },
        }
    }

    /// The first event.
    pub fn first(&self) -> Option<&'a Event<T>> {
        self.get(0)
    }

    /// The last event.
    pub fn last(&self) -> Option<&'a Event<T>> {
        self.len().checked_sub(1).and_then(|i| self.get(i))
    }

    /// The events as one slice, when they are one window's (every batch
    /// that was not merged); `None` for a merged batch.
    pub fn as_slice(&self) -> Option<&'a [Event<T>]> {
        match self.repr {
            Repr::Slice(s) => Some(s),
            Repr::Merged { .. } => None,
        }
    }
}

impl<T> Index<usize> for Events<'_, T> {
    type Output = Event<T>;
    fn index(&self, i: usize) -> &Event<T> {
        match self.get(i) {
            Some(e) => e,
            None => panic!("event index {i} out of range for {} events", self.len()),
        }
    }
}

impl<'a, T> IntoIterator for Events<'a, T> {
    type Item = &'a Event<T>;
    type IntoIter = EventsIter<'a, T>;
    fn into_iter(self) -> EventsIter<'a, T> {
        self.iter()
    }
}

impl<'a, T> IntoIterator for &Events<'a, T> {
    type Item = &'a Event<T>;
    type IntoIter = EventsIter<'a, T>;
    fn into_iter(self) -> EventsIter<'a, T> {
        self.iter()
    }
}

impl<T: fmt::Debug> fmt::Debug for Events<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Iterator over [`Events`].
pub struct EventsIter<'a, T> {
    repr: Repr<'a, T>,
    /// Next position from the front, and one past the last from the back.
    front: usize,
    back: usize,
    /// Unpicked merged iteration: the segment holding `front`, and the
    /// position of that segment's first event.
    seg: usize,
    offset: usize,
}

impl<T> Clone for EventsIter<'_, T> {
    fn clone(&self) -> Self {
        EventsIter { ..*self }
    }
}

impl<'a, T> Iterator for EventsIter<'a, T> {
    type Item = &'a Event<T>;

    fn next(&mut self) -> Option<&'a Event<T>> {
        if self.front >= self.back {
            return None;
        }
        let i = self.front;
        self.front += 1;
        match self.repr {
            Repr::Slice(s) => s.get(i),
            Repr::Merged {
                segments,
                picks: Some(p),
                ..
            } => {
                let &(seg, idx) = p.get(i)?;
                segments.get(seg as usize)?.events.get(idx as usize)
            }
            Repr::Merged {
                segments,
                picks: None,
                ..
            } => loop {
                let s = segments.get(self.seg)?;
                if i - self.offset < s.events.len() {
                    return s.events.get(i - self.offset);
                }
                self.offset += s.events.len();
                self.seg += 1;
            },
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.back.saturating_sub(self.front);
        (n, Some(n))
    }
}

impl<'a, T> DoubleEndedIterator for EventsIter<'a, T> {
    fn next_back(&mut self) -> Option<&'a Event<T>> {
        if self.front >= self.back {
            return None;
        }
        self.back -= 1;
        Events { repr: self.repr }.get(self.back)
    }
}

impl<T> ExactSizeIterator for EventsIter<'_, T> {}
impl<T> FusedIterator for EventsIter<'_, T> {}
