//! The one place that chooses between `std` and `loom` primitives.
//!
//! Every atomic, cell, lock and thread operation that takes part in the
//! concurrency model (ring indices, wake-ups, flush hand-off, interner
//! snapshots) goes through here, so compiling with `--cfg loom` makes loom
//! check the real ring, interner and hand-off code rather than a copy.

#[cfg(not(ringfold_loom))]
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

    /// Offers the core to another runnable thread.
    pub(crate) fn yield_now() {
        std::thread::yield_now()
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

#[cfg(ringfold_loom)]
mod imp {
    pub(crate) use loom::cell::UnsafeCell;
    pub(crate) use loom::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};

    /// loom's `AtomicBool` with every `store` modelled as a `swap`.
    ///
    /// loom 0.7 does not enforce read-modify-write atomicity against plain
    /// stores (tokio-rs/loom#254, fix pending in tokio-rs/loom#391): it lets
    /// a concurrent `store(true)` slip between the read and the write of a
    /// `swap(false)`, so the `true` is lost even though no C++/Rust
    /// execution allows that. The engine's hand-off flags
    /// (`flush_pending`, `registry_dirty`) are exactly such a store racing
    /// the flusher's `swap`, and the false loss shows up as a lost flush
    /// (a loom deadlock). A `swap` whose result is discarded is a store
    /// that loom orders correctly against other read-modify-writes; with a
    /// Relaxed or Release ordering its read adds no synchronisation, and
    /// loom already treats every SeqCst access as a full synchronisation
    /// point, so nothing the models check is weakened or strengthened
    /// beyond what loom does anyway. Only `AtomicBool` is wrapped: it is
    /// the only atomic the crate both stores to and swaps.
    #[derive(Debug)]
    pub(crate) struct AtomicBool(loom::sync::atomic::AtomicBool);

    impl AtomicBool {
        pub(crate) fn new(value: bool) -> Self {
            Self(loom::sync::atomic::AtomicBool::new(value))
        }
        pub(crate) fn load(&self, order: Ordering) -> bool {
            self.0.load(order)
        }
        pub(crate) fn store(&self, value: bool, order: Ordering) {
            self.0.swap(value, order);
        }
        pub(crate) fn swap(&self, value: bool, order: Ordering) -> bool {
            self.0.swap(value, order)
        }
    }
    pub(crate) use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
    pub(crate) use loom::thread::JoinHandle;

    /// Spawns a loom thread (names are not modelled).
    pub(crate) fn spawn_named<F>(_name: String, f: F) -> std::io::Result<JoinHandle<()>>
    where
        F: FnOnce() + Send + 'static,
    {
        Ok(loom::thread::spawn(f))
    }

    /// A thread handle with std's park/unpark token semantics.
    ///
    /// loom's own `Thread::unpark` also wakes a thread that is blocked on a
    /// loom `Mutex` (it marks it runnable), and that thread then fails
    /// loom's internal "expected to be able to acquire lock" assertion, a
    /// false failure: std's park token is independent of mutex waits, and
    /// the flusher is routinely unparked while it waits for the registry or
    /// control lock. So under loom the token is a `bool` behind a loom
    /// mutex and condvar per thread: `unpark` sets it (and, like std, an
    /// unpark before the park makes the park return at once), `park`
    /// consumes it; the mutex gives the same unpark-happens-before-park
    /// edge as std.
    #[derive(Clone)]
    pub(crate) struct Thread {
        id: loom::thread::ThreadId,
        parker: Arc<Parker>,
    }

    pub(crate) struct Parker {
        token: Mutex<bool>,
        cv: Condvar,
    }

    impl Parker {
        fn new() -> Self {
            Parker {
                token: Mutex::new(false),
                cv: Condvar::new(),
            }
        }
    }

    loom::thread_local! {
        static PARKER: Arc<Parker> = Arc::new(Parker::new());
    }

    impl Thread {
        pub(crate) fn id(&self) -> loom::thread::ThreadId {
            self.id
        }
        pub(crate) fn unpark(&self) {
            let mut token = self.parker.token.lock().unwrap();
            *token = true;
            self.parker.cv.notify_one();
        }
    }

    /// The calling thread's handle.
    pub(crate) fn current() -> Thread {
        Thread {
            id: loom::thread::current().id(),
            parker: PARKER.with(Arc::clone),
        }
    }

    /// Offers the core to another thread (a scheduling point for loom).
    pub(crate) fn yield_now() {
        loom::thread::yield_now()
    }

    /// loom has no `park_timeout`; a timed park is modelled as a plain park
    /// (see [`Thread`]), i.e. the timer never fires and only an explicit
    /// unpark can end it. This is what makes lost wake-ups show up as
    /// deadlocks in the models.
    pub(crate) fn park_timeout(_timeout: std::time::Duration) {
        PARKER.with(|parker| {
            let mut token = parker.token.lock().unwrap();
            while !*token {
                token = parker.cv.wait(token).unwrap();
            }
            *token = false;
        })
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

/// Waits on `cv` for at most `timeout`, recovering a poisoned guard (as
/// [`lock`] does). loom has no timed waits: under it this is a plain wait,
/// and a spurious wake-up models the timer.
pub(crate) fn wait_timeout<'a, C>(
    cv: &Condvar,
    guard: MutexGuard<'a, C>,
    timeout: std::time::Duration,
) -> MutexGuard<'a, C> {
    #[cfg(not(ringfold_loom))]
    {
        match cv.wait_timeout(guard, timeout) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        }
    }
    #[cfg(ringfold_loom)]
    {
        let _ = timeout;
        cv.wait(guard).unwrap_or_else(|p| p.into_inner())
    }
}
