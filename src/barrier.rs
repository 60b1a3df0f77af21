//! Asymmetric store-load barrier for the producer/flusher Dekker hand-offs.
//!
//! Two hand-offs in the engine are store-load (Dekker) races: a producer
//! stores its ring tail (and maybe the urgent hint) and then loads the state
//! word; the flusher stores PARKED/DEEP (or observes CLOSED) and then loads
//! the ring tails. Each side needs a full barrier between its store and its
//! load, or both could miss the other's store (a lost wake-up, or an event
//! accepted after the final drain).
//!
//! The producer runs this once per publish and the flusher once per park,
//! so the cost is moved to the rare side, as folly's
//! `asymmetricLightBarrier`/`asymmetricHeavyBarrier` and liburcu do:
//!
//! * [`light`] (producer) is only a compiler barrier;
//! * [`heavy`] (flusher) is `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`,
//!   which returns only after every thread of this process that was running
//!   on another CPU has executed a full memory barrier (the kernel IPIs
//!   those CPUs), and threads not running have passed through a context
//!   switch, itself a full barrier; the caller gets a full barrier too.
//!
//! Why that is enough: take the point where the producer's thread went
//! through the barrier that `heavy` forced. If it is after the producer's
//! `light` (so after its tail store, which the compiler barrier keeps in
//! program order), the tail store is globally visible before `heavy`
//! returns, and the flusher's re-check after `heavy` sees it. If it is
//! before the producer's `light`, the producer's state load comes after a
//! full barrier that itself comes after the flusher's state store (or its
//! observation of CLOSED) was made visible, so the load sees PARKED/DEEP/
//! CLOSED and the producer takes the slow path. Either way at least one
//! side sees the other, exactly as with a SeqCst fence on both sides.
//!
//! If registering for expedited membarrier fails (not Linux, a kernel older
//! than 4.14, a seccomp filter) both sides use `fence(SeqCst)`. The choice is
//! made once, before any producer can observe it as "membarrier", and never
//! changes back, so the two sides always agree: a producer that still reads
//! the flag as unset fences fully, which is only stronger.
//!
//! Under `cfg(ringfold_loom)` both are the shim's `fence(SeqCst)`, so the loom models
//! keep checking the protocol itself.

#[cfg(ringfold_loom)]
mod imp {
    use crate::sync::{fence, Ordering};

    /// Producer side: a SeqCst fence under loom.
    #[inline]
    pub(crate) fn light() {
        fence(Ordering::SeqCst);
    }

    /// Flusher side: a SeqCst fence under loom.
    pub(crate) fn heavy() {
        fence(Ordering::SeqCst);
    }

    /// Nothing to set up under loom.
    pub(crate) fn init() -> bool {
        false
    }
}

#[cfg(all(not(ringfold_loom), target_os = "linux"))]
mod imp {
    use std::sync::atomic::{compiler_fence, fence, AtomicBool, Ordering};
    use std::sync::OnceLock;

    /// Set once expedited membarrier is registered for this process; never
    /// cleared. Read Relaxed by producers: a stale `false` only makes them
    /// fence fully (see the module docs).
    static EXPEDITED: AtomicBool = AtomicBool::new(false);
    static REGISTERED: OnceLock<bool> = OnceLock::new();

    // `enum membarrier_cmd` from <linux/membarrier.h> (stable kernel ABI);
    // spelled out here so any libc 0.2 with `SYS_membarrier` will do.
    const MEMBARRIER_CMD_QUERY: libc::c_int = 0;
    const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
    const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

    fn membarrier(cmd: libc::c_int) -> libc::c_long {
        // SAFETY: membarrier(2) takes (int cmd, unsigned int flags, int
        // cpu_id), reads no user memory and has no effect on this process'
        // memory other than ordering; an unsupported command or a filtered
        // syscall just returns -1 with errno set.
        unsafe {
            libc::syscall(
                libc::SYS_membarrier,
                cmd,
                0 as libc::c_uint,
                0 as libc::c_int,
            )
        }
    }

    /// Registers for expedited private membarrier once per process; true
    /// if [`heavy`] may use it (and so producers may use [`light`]).
    pub(crate) fn init() -> bool {
        *REGISTERED.get_or_init(|| {
            let query = membarrier(MEMBARRIER_CMD_QUERY);
            let ok = query >= 0
                && query & libc::c_long::from(MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0
                && membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0;
            if ok {
                // Published only after registration succeeded: a producer
                // that sees `true` is paired with a flusher whose `heavy`
                // takes the membarrier branch (it reads REGISTERED).
                EXPEDITED.store(true, Ordering::Relaxed);
            }
            ok
        })
    }

    /// Producer side of the Dekker hand-off, between the store that
    /// publishes work (ring tail, urgent hint) and the load of the state
    /// word. A compiler barrier when expedited membarrier is registered:
    /// the flusher's [`heavy`] supplies the CPU barrier on this thread's
    /// behalf (module docs). Otherwise a SeqCst fence.
    #[inline(always)]
    pub(crate) fn light() {
        if EXPEDITED.load(Ordering::Relaxed) {
            compiler_fence(Ordering::SeqCst);
        } else {
            fence(Ordering::SeqCst);
        }
    }

    /// Flusher side, between storing PARKED/DEEP (or observing CLOSED) and
    /// re-reading the rings: forces a full barrier on every running thread
    /// of the process, then returns (module docs). Falls back to a SeqCst
    /// fence when membarrier is unavailable.
    pub(crate) fn heavy() {
        if init() {
            if membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0 {
                // Cannot happen once registered (EPERM is the only error
                // the kernel documents, for an unregistered process). A
                // producer that used only a compiler barrier concurrently
                // is then not covered for this one hand-off; the fence
                // below still orders our side.
                debug_assert!(false, "membarrier failed after registration");
            }
            // The kernel's barrier is not visible to the compiler.
            fence(Ordering::SeqCst);
        } else {
            fence(Ordering::SeqCst);
        }
    }
}

#[cfg(all(not(ringfold_loom), not(target_os = "linux")))]
mod imp {
    use std::sync::atomic::{fence, Ordering};

    /// Producer side: a SeqCst fence (no membarrier on this platform).
    #[inline(always)]
    pub(crate) fn light() {
        fence(Ordering::SeqCst);
    }

    /// Flusher side: a SeqCst fence (no membarrier on this platform).
    pub(crate) fn heavy() {
        fence(Ordering::SeqCst);
    }

    /// Nothing to set up on this platform.
    pub(crate) fn init() -> bool {
        false
    }
}

pub(crate) use imp::{heavy, init, light};
