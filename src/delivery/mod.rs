//! The delivery layer: subscribers off the flusher thread.
//!
//! The flusher seals a window into a shared [`Batch`] (buffers recycled by
//! a pool, so the steady state allocates nothing) and pushes one handle per
//! subscriber into that subscriber's own bounded queue; that push is its
//! whole cost per delivery. Each queue is drained by its consumer: a
//! callback [`Subscriber`] on its own delivery thread, or a [`Receiver`]
//! pulled by a plain thread or polled as a `Stream` (feature `stream`).
//! A slow consumer fills only its own queue, which then coalesces: later
//! windows of a prefix merge into the batch of that prefix already queued
//! (`merge`), so a lagging subscriber gets fewer, larger batches and loses
//! nothing while within its [`Budget`] (events and bytes). Over budget,
//! its [`LagPolicy`] decides: drop the oldest batch and report it in band
//! (the default), or make the flusher wait a bounded time (`Block`).
//!
//! Layout: `batch` (owned batches, the recycling pool), `events` (a
//! batch's events as one view over one or several windows), `merge` (how
//! windows of one prefix merge, per policy), `queue` (one subscriber's
//! queue, budget, lag policies, flush accounting), `registry`
//! (run-time subscriptions, per-prefix routing cache, flush tickets),
//! `subscriber` (callback subscribers and their threads), `receiver`
//! (blocking and async pull), `stats` (per-subscriber counters).

mod batch;
mod events;
mod merge;
mod queue;
mod receiver;
mod registry;
mod stats;
mod subscriber;

pub use batch::Batch;
pub use events::{Events, EventsIter};
pub use queue::{Budget, LagPolicy, OnUnsubscribe};
pub use receiver::{Receiver, RecvTimeoutError, TryRecvError};
pub use registry::SubscribeOptions;
pub use stats::SubscriberStats;
pub use subscriber::{Subscriber, Subscription};

#[cfg(ringfold_loom)]
pub(crate) use batch::Sealed;
pub(crate) use batch::{BatchPool, Epoch, Header, KeepAlive};
#[cfg(ringfold_loom)]
pub(crate) use queue::{Hand, Push, Queue};
pub(crate) use registry::{Registry, RouteCache};
pub(crate) use subscriber::on_delivery_thread;

#[cfg(all(test, not(ringfold_loom)))]
mod tests;
