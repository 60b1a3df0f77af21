//! A name's route: everything the fold needs to know about one name.

use std::time::Duration;

use super::window::Fold;
use crate::event::{BatchReason, NameRef};
use crate::intern::NameInfo;
use crate::policy::Policy;

/// Everything the fold needs to know about one name, resolved once from the
/// interner snapshot into a dense array indexed by name id: the per-event
/// cost is one 40-byte read, not a `NameInfo` read plus a policy match.
#[derive(Clone, Copy)]
pub(super) struct Route {
    pub(super) meta: NameRef,
    pub(super) prefix: u32,
    pub(super) fold: Fold,
    /// An urgent rule matches the name: its events close the window.
    pub(super) urgent: bool,
    pub(super) interval: Duration,
    pub(super) max_count: usize,
    /// The fold's fast path applies: the name's events are kept (batch or
    /// passthrough), it matches no urgent rule, and every name of its
    /// prefix seen so far has the same window (`interval`, `max_count`),
    /// so an event only has to open the window or fill it. Cleared by
    /// `Folder` for every name of a prefix once the prefix mixes windows.
    pub(super) simple: bool,
    /// The reason of a batch this name's events close by count.
    pub(super) count_reason: BatchReason,
}

impl Route {
    pub(super) fn of(info: &NameInfo) -> Route {
        let (interval, max_count) = info.policy.effective_window();
        let passthrough = info.policy == Policy::Passthrough;
        let fold = match info.policy {
            Policy::Passthrough | Policy::Batch { .. } => Fold::Keep,
            Policy::Latest { .. } => Fold::Latest,
            Policy::Aggregate { .. } => Fold::Aggregate,
            Policy::Histogram { .. } => Fold::Histogram,
        };
        Route {
            meta: NameRef::new(&info.meta),
            prefix: info.prefix,
            fold,
            urgent: info.urgent,
            interval,
            max_count,
            simple: fold == Fold::Keep && !info.urgent,
            count_reason: if passthrough {
                BatchReason::Passthrough
            } else {
                BatchReason::Count
            },
        }
    }
}
