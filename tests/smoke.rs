use ringfold::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn smoke() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let engine = Engine::<Value>::builder()
        .default_rules()
        .subscriber(move |b: &Batch<'_, Value>| {
            s2.lock().unwrap().push((b.prefix().to_string(), b.len(), b.reason()))
        })
        .build()
        .unwrap();
    for i in 0..250u64 {
        engine.publish("data:users:created", i).unwrap();
    }
    engine.publish("chat:s1:delta", "hi").unwrap();
    engine.flush().unwrap();
    let st = engine.stats();
    eprintln!("{:?}\n{:?}", seen.lock().unwrap(), st);
    assert_eq!(st.delivered, 251);
    assert!(st.is_conserved());
    std::thread::sleep(Duration::from_millis(100));
    engine.publish("data:users:created", 1u64).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(engine.stats().delivered, 252, "interval emission");
    let st = engine.shutdown().unwrap();
    assert!(st.is_conserved());
}
