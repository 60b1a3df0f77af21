use ringfold::{Batch, Engine, Value};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = Engine::<Value>::builder()
        .default_rules() // chat:* passthrough, data:* 50 ms / 100, gpu:* aggregated, ...
        .subscriber(|batch: &Batch<Value>| {
            println!("{} x{} ({:?})", batch.name(), batch.len(), batch.reason());
        })
        .build()?;
    let mut producer = engine.producer()?; // one per publishing thread
    let created = engine.key("data:users:created")?; // intern once, publish ids
    for row in 0..250u64 {
        producer.publish_key(created, Value::from(row))?;
    }
    engine.publish("chat:s1:delta", "hello")?; // passthrough: delivered at once
    engine.flush()?; // everything published so far is now delivered
    let stats = engine.shutdown()?;
    assert_eq!(stats.delivered, 251);
    Ok(())
}
