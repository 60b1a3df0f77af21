// The front page is README.md, with the guide's link definitions first so
// that its links to docs/*.md resolve to the `guide` modules (see
// src/guide.rs).
#![doc = include_str!("guide/links.md")]
#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

// Module map, in data-path order: `producer` (publish) -> `record` (slots)
// -> `ring` -> `flusher` (sweep) -> `fold` (windows) -> `event` (batch) ->
// `subscriber`. Around it: `engine` (handle), `builder` + `config`,
// `local` (thread-local publish path), `shared` (what the threads share),
// `state` (the state word) over `barrier`, `control` (flush/shutdown
// hand-offs), `lane` (a producer's shared half), `stats`, `intern`,
// `policy`, `sync` (std or loom primitives).
mod barrier;
mod builder;
mod config;
mod control;
pub mod delivery;
mod engine;
mod error;
mod event;
mod flusher;
mod fold;
pub mod gpu;
pub mod guide;
mod histogram;
mod intern;
mod lane;
mod local;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "nats")]
pub mod nats;
// `ringfold_loom`, not the conventional `loom`: a downstream crate running
// its own loom tests (`--cfg loom`) must not switch ringfold into model
// mode, whose primitives only work inside `loom::model`.
#[cfg(ringfold_loom)]
#[doc(hidden)]
pub mod loom_api;
mod policy;
mod producer;
mod record;
mod ring;
mod shared;
#[cfg(feature = "jsonl")]
pub mod sink;
mod sketch;
mod state;
mod stats;
mod sync;
#[cfg(feature = "tracing")]
pub mod tracing;
mod value;
#[cfg(feature = "serde")]
pub mod wire;
#[cfg(feature = "ws")]
pub mod ws;

pub use builder::EngineBuilder;
pub use config::FullPolicy;
pub use delivery::{
    Batch, Budget, Events, EventsIter, LagPolicy, OnUnsubscribe, Receiver, RecvTimeoutError,
    SubscribeOptions, Subscriber, SubscriberStats, Subscription, TryRecvError,
};
pub use engine::{Engine, DROP_SHUTDOWN_WAIT};
pub use error::{Error, PublishError, PublishManyError};
pub use event::{Aggregate, BatchReason, Event};
pub use histogram::Histogram;
pub use intern::EventKey;
pub use policy::{default_rules, Pattern, Policy};
pub use producer::Producer;
pub use sketch::{Sketch, Summary};
pub use stats::{DropStats, PrefixStats, Stats};
pub use value::{Number, Sample, ShortStr, Value, SHORT_STR_MAX};
