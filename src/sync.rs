//! The one place that chooses between `std` and `loom` primitives.
//!
//! Every atomic, cell, lock and thread operation that takes part in the
//! concurrency model (ring indices, wake-ups, flush hand-off, interner
//! snapshots) goes through here, so compiling with `--cfg loom` makes loom
//! check the real ring, interner and hand-off code rather than a copy.

#[cfg(not(loom))]
mod imp {
    pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
    pub(crate) use std::sync::{Arc, Condvar, Mutex, MutexGuard};
    pub(crate) use std::thread::{current, JoinHandle, Thread};

    /// Spawns a named thread.
    pub(crate) fn spawn_named<F>(name: String, f: F) -> std::io::Result<JoinHandle<()>>
    where
        F: FnOnce() + Send + 'static,
    {
        std::thread::Builder::new().name(name).spawn(f)
    }

    /// Parks the current thread for at most `timeout`.
    pub(crate) fn park_timeout(timeout: std::time::Duration) {
        std::thread::park_timeout(timeout)
    }

    /// A cell whose accesses loom can see; with std it is a thin
    /// `UnsafeCell` wrapper with loom's closure-based API.
    #[derive(Debug)]
    pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        pub(crate) const fn new(value: T) -> Self {
            Self(std::cell::UnsafeCell::new(value))
        }
        #[inline(always)]
        pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }
        #[inline(always)]
        pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }

    /// Lock-free snapshot cell: readers never block (arc-swap).
    pub(crate) struct SnapshotCell<T>(arc_swap::ArcSwap<T>);

    impl<T> SnapshotCell<T> {
        pub(crate) fn new(value: Arc<T>) -> Self {
            Self(arc_swap::ArcSwap::new(value))
        }
        #[inline]
        pub(crate) fn load(&self) -> arc_swap::Guard<Arc<T>> {
            self.0.load()
        }
        pub(crate) fn load_full(&self) -> Arc<T> {
            self.0.load_full()
        }
        pub(crate) fn store(&self, value: Arc<T>) {
            self.0.store(value)
        }
    }
}

#[cfg(loom)]
mod imp {
    pub(crate) use loom::cell::UnsafeCell;
    pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
    pub(crate) use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
    pub(crate) use loom::thread::{current, JoinHandle, Thread};

    /// Spawns a loom thread (names are not modelled).
    pub(crate) fn spawn_named<F>(_name: String, f: F) -> std::io::Result<JoinHandle<()>>
    where
        F: FnOnce() + Send + 'static,
    {
        Ok(loom::thread::spawn(f))
    }

    /// loom has no `park_timeout`; a timed park is modelled as a plain park,
    /// i.e. the timer never fires and only an explicit wake-up (or loom's
    /// spurious wake-ups) can end it. This is what makes lost wake-ups show
    /// up as deadlocks in the models.
    pub(crate) fn park_timeout(_timeout: std::time::Duration) {
        loom::thread::park()
    }

    /// Stand-in for arc-swap, whose internals loom cannot see: the same small
    /// API over a loom mutex, so the interner's publication protocol is
    /// still explored.
    pub(crate) struct SnapshotCell<T>(loom::sync::Mutex<Arc<T>>);

    impl<T> SnapshotCell<T> {
        pub(crate) fn new(value: Arc<T>) -> Self {
            Self(loom::sync::Mutex::new(value))
        }
        pub(crate) fn load(&self) -> Arc<T> {
            self.0.lock().unwrap().clone()
        }
        pub(crate) fn load_full(&self) -> Arc<T> {
            self.0.lock().unwrap().clone()
        }
        pub(crate) fn store(&self, value: Arc<T>) {
            *self.0.lock().unwrap() = value;
        }
    }
}

pub(crate) use imp::*;

/// Locks a mutex, recovering the data if a panicking thread poisoned it:
/// every structure guarded here stays consistent across a panic (they are
/// plain counters and lists), so poisoning must not cascade into the engine.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}
