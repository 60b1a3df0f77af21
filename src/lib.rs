#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod barrier;
pub mod delivery;
mod engine;
mod error;
mod event;
mod flusher;
pub mod gpu;
mod intern;
#[cfg(loom)]
#[doc(hidden)]
pub mod loom_api;
mod policy;
mod producer;
mod record;
mod ring;
mod stats;
mod subscriber;
mod sync;
mod value;

pub use delivery::{
    LagPolicy, OnUnsubscribe, Receiver, RecvTimeoutError, SubscribeOptions, SubscriberStats,
    Subscription, TryRecvError,
};
pub use engine::{Engine, EngineBuilder, FullPolicy};
pub use error::{Error, PublishError};
pub use event::{Aggregate, Batch, BatchReason, Event};
pub use intern::EventKey;
pub use policy::{default_rules, Pattern, Policy};
pub use producer::Producer;
pub use stats::{DropStats, PrefixStats, Stats};
pub use subscriber::Subscriber;
pub use value::{Sample, ShortStr, Value, SHORT_STR_MAX};
