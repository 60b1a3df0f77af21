#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod barrier;
mod engine;
mod error;
mod event;
mod flusher;
pub mod gpu;
mod intern;
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
mod stats;
mod subscriber;
mod sync;
mod value;

pub use engine::{Engine, EngineBuilder, FullPolicy};
pub use error::{Error, PublishError};
pub use event::{Aggregate, Batch, BatchReason, Event};
pub use intern::EventKey;
pub use policy::{default_rules, Pattern, Policy};
pub use producer::Producer;
pub use stats::{DropStats, PrefixStats, Stats};
pub use subscriber::Subscriber;
pub use value::{Sample, ShortStr, Value, SHORT_STR_MAX};
