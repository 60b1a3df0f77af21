//! A payload whose `Drop` panics (issue 19, "also fix"): the engine drops
//! payloads on the flusher (a `latest` value replaced, an aggregated
//! reading, a recycled batch's events, batches the pool lets go of) and on
//! delivery threads. Every such panic must be caught and counted; none may
//! take a thread down, and above all none may abort the process (a second
//! panic while a `Vec` of payloads unwinds from the first one does, with
//! "thread caused non-unwinding panic. aborting").
//!
//! An abort cannot be caught inside the process, so the scenario runs in a
//! child process (this test binary, re-run with `RINGFOLD_BOMB_CHILD` set
//! and filtered to the scenario) and the parent checks how it ended.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ringfold::{Batch, Engine, FullPolicy, LagPolicy, Policy, SubscribeOptions};

/// Payload drops that panicked, process-wide.
static PANICKED: AtomicU64 = AtomicU64::new(0);

/// A payload whose `Drop` always panics.
struct Bomb(u64);

impl Drop for Bomb {
    fn drop(&mut self) {
        PANICKED.fetch_add(1, Ordering::SeqCst);
        panic!("payload {} exploded in Drop", self.0);
    }
}

const CHILD: &str = "RINGFOLD_BOMB_CHILD";
const EVENTS: u64 = 60_000;

/// The scenario, run in the child only: latest, aggregate and batched
/// names (so payloads drop in the fold, in recycled batches and in batches
/// the pool lets go of), many events, flushes, shutdown. `exact`: one
/// must-deliver subscriber, whose queue (1024 batches) is shorter than the
/// pool (2048), so the pool always holds a batch's last handle and counts
/// each payload's panic. `held`: also a slow lossy subscriber that still
/// holds batches when the pool lets go of them at shutdown, so some last
/// handles are dropped on its delivery thread. Prints the figures the
/// parent checks.
#[test]
fn child_scenario() {
    let Some(mode) = std::env::var_os(CHILD) else {
        return;
    };
    let held = mode == "held";
    // Thousands of panics: keep the output readable.
    std::panic::set_hook(Box::new(|_| {}));
    let mut builder = Engine::<Bomb>::builder()
        .policy("l:*", Policy::latest(Duration::from_millis(1), 64))
        .policy("a:*", Policy::aggregate(Duration::from_millis(1), 64))
        .policy("b:*", Policy::batch(Duration::from_millis(1), 16))
        .sample_with(|b: &Bomb| Some(b.0 as f64))
        .on_full(FullPolicy::Block(Duration::from_secs(10)))
        .subscriber_with(
            "*",
            SubscribeOptions::new("blocking").lag(LagPolicy::Block {
                timeout: Duration::from_secs(10),
            }),
            |_: &Batch<Bomb>| {},
        );
    if held {
        builder = builder.subscriber_with("*", SubscribeOptions::new("slow"), |_: &Batch<Bomb>| {
            std::thread::sleep(Duration::from_micros(200))
        });
    }
    let engine = builder.build().unwrap();
    let names: Vec<String> = (0..32)
        .flat_map(|i| [format!("l:{i}:v"), format!("a:{i}:v"), format!("b:{i}:v")])
        .collect();
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let engine = &engine;
            let names = &names;
            s.spawn(move || {
                for i in 0..EVENTS / 2 {
                    let name = &names[(i as usize * 7 + t as usize) % names.len()];
                    if let Err(e) = engine.publish(name, Bomb(i)) {
                        // Handed back: not the engine's to drop.
                        std::mem::forget(e);
                    }
                    if !held && i % 10_000 == 0 {
                        engine.flush().unwrap();
                    }
                }
            });
        }
    });
    if !held {
        engine.flush().unwrap();
    }
    let stats = engine.shutdown().unwrap();
    drop(engine);
    println!(
        "BOMB published={} rejected={} panicked={} counted={} flusher_died={}",
        stats.published,
        stats.dropped.rejected(),
        PANICKED.load(Ordering::SeqCst),
        stats.subscriber_panics,
        u8::from(stats.flusher_died),
    );
}

/// Figures printed by the child.
fn figure(out: &str, key: &str) -> Option<u64> {
    // The harness may print the test's name on the same line first.
    let line = out
        .lines()
        .find_map(|l| l.split_once("BOMB ").map(|(_, f)| f))?;
    let field = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix(&format!("{key}=")))?;
    field.parse().ok()
}

/// Runs the child scenario `mode`; its figures (published, panicked,
/// counted), after checking that it exited cleanly.
fn run_child(mode: &str) -> (u64, u64, u64) {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args([
            "--exact",
            "child_scenario",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD, mode)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{mode}: the child process did not exit cleanly ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        stderr.lines().rev().take(20).collect::<Vec<_>>().join("\n"),
    );
    let published = figure(&stdout, "published").expect("figures printed");
    assert_eq!(figure(&stdout, "flusher_died"), Some(0), "{stdout}");
    assert_eq!(figure(&stdout, "rejected"), Some(0), "{stdout}");
    assert_eq!(published, EVENTS, "{stdout}");
    let panicked = figure(&stdout, "panicked").unwrap();
    let counted = figure(&stdout, "counted").unwrap();
    // Every payload the engine accepted was dropped (each drop panics)
    // by the time `shutdown` returned.
    assert_eq!(panicked, published, "{stdout}");
    (published, panicked, counted)
}

#[test]
fn panicking_payload_drops_are_caught_and_counted_never_abort() {
    let (_, panicked, counted) = run_child("exact");
    // The pool held every batch's last handle: each panic counted.
    assert_eq!(counted, panicked);
}

#[test]
fn panicking_payload_drops_in_batches_held_at_shutdown_never_abort() {
    let (_, panicked, counted) = run_child("held");
    // A batch whose last handle a delivery thread drops counts as one
    // panic there (not one per payload), so at most `panicked`.
    assert!(
        counted > 0 && counted <= panicked,
        "{counted} of {panicked}"
    );
}
