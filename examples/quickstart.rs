use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use ringfold::{Batch, Engine, Value};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // What the subscriber received: events per prefix.
    let received = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let sink = received.clone();
    let engine = Engine::<Value>::builder()
        .default_rules() // chat:* passthrough, data:* 50 ms / 100, gpu:* aggregated, ...
        .subscriber(move |batch: &Batch<Value>| {
            println!("{} x{} ({})", batch.name(), batch.len(), batch.reason());
            let mut received = sink.lock().unwrap();
            *received.entry(batch.prefix().to_owned()).or_default() += batch.len();
        })
        .build()?;
    let mut producer = engine.producer()?; // one per publishing thread
    let created = engine.key("data:users:created")?; // intern once, publish by key
    for row in 0..250u64 {
        producer.publish_key(created, row)?; // Full past 4,096 pending: see below
    }
    engine.publish("chat:s1:delta", "hello")?; // passthrough: delivered at once
    engine.flush()?; // everything published so far has reached the subscriber
    let received = received.lock().unwrap().clone();
    assert_eq!(received.get("data:users"), Some(&250));
    assert_eq!(received.get("chat:s1"), Some(&1));
    let stats = engine.shutdown()?;
    assert_eq!((stats.sealed, stats.dropped.rejected()), (251, 0));
    Ok(())
}
