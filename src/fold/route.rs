//! A name's route: everything the fold needs to know about one name.

use std::time::Duration;

use super::window::Fold;
use crate::event::NameRef;
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
    pub(super) passthrough: bool,
    pub(super) interval: Duration,
    pub(super) max_count: usize,
}

impl Route {
    pub(super) fn of(info: &NameInfo) -> Route {
        let (interval, max_count) = info.policy.effective_window();
        Route {
            meta: NameRef::new(&info.meta),
            prefix: info.prefix,
            fold: match info.policy {
                Policy::Passthrough | Policy::Batch { .. } => Fold::Keep,
                Policy::Latest { .. } => Fold::Latest,
                Policy::Aggregate { .. } => Fold::Aggregate,
            },
            urgent: info.urgent,
            passthrough: info.policy == Policy::Passthrough,
            interval,
            max_count,
        }
    }
}
