//! Dropping the last handle after a timed-out shutdown (issue 19, "also
//! fix"): the caller already chose a bound with `shutdown_timeout`, so the
//! drop must not wait `DROP_SHUTDOWN_WAIT` (5 s) again behind the same
//! stuck subscriber.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use ringfold::{Batch, Engine, Error, DROP_SHUTDOWN_WAIT};

#[test]
fn drop_after_a_timed_out_shutdown_does_not_wait_again() {
    let (release, released) = mpsc::channel::<()>();
    let (entered, entered_rx) = mpsc::channel::<()>();
    let released = std::sync::Mutex::new(released);
    let engine = Engine::<u64>::builder()
        .subscriber(move |_: &Batch<u64>| {
            let _ = entered.send(());
            // Stuck until the test lets go (at its end).
            let _ = released.lock().unwrap().recv();
        })
        .build()
        .unwrap();
    engine.publish("data:users:created", 1u64).unwrap();
    engine.flush_timeout(Duration::from_millis(1)).ok();
    entered_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the subscriber got its batch");
    let started = Instant::now();
    match engine.shutdown_timeout(Duration::from_secs(1)) {
        Err(Error::Timeout(_)) => {}
        other => panic!("expected a timeout behind the stuck subscriber, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_secs(1));
    let dropping = Instant::now();
    drop(engine);
    let took = dropping.elapsed();
    release.send(()).unwrap();
    // Generous: well under the 5 s the drop used to wait again.
    assert!(
        took < DROP_SHUTDOWN_WAIT / 2,
        "dropping after a timed-out shutdown took {took:?}"
    );
}

#[test]
fn drop_without_a_shutdown_still_waits_for_a_slow_subscriber() {
    // The bounded wait of a plain drop is unchanged: a subscriber that
    // needs a moment still gets its batch delivered before the drop
    // returns.
    let (done, done_rx) = mpsc::channel::<u64>();
    let engine = Engine::<u64>::builder()
        .subscriber(move |b: &Batch<u64>| {
            std::thread::sleep(Duration::from_millis(200));
            let _ = done.send(b.len() as u64);
        })
        .build()
        .unwrap();
    engine.publish("data:users:created", 1u64).unwrap();
    drop(engine);
    assert_eq!(
        done_rx.try_recv(),
        Ok(1),
        "delivered before the drop returned"
    );
}
