//! Unit tests of the interner: name validation, limits, growth across
//! arena chunks and index doublings, fixed addresses, engine ownership of
//! keys, keepalives, views and concurrent interning.

use super::*;
use std::time::Duration;

fn interner(max: usize) -> Interner {
    Interner::new(
        PolicyTable::new(Policy::batch(Duration::from_millis(1), 1)),
        max,
        64,
    )
}

#[test]
fn prefix_is_name_minus_last_segment() {
    let i = interner(16);
    let k = i.key("data:users:created").unwrap();
    let p = i.prefix(k.prefix_id() as usize).unwrap();
    assert_eq!(&*p.prefix, "data:users");
    assert_eq!(&*p.batch_name, "data:users:batch");
    let n = i.name(k.name_id() as usize).unwrap();
    assert_eq!(&*n.meta.name, "data:users:created");
    assert_eq!(&*n.meta.prefix, "data:users");
    assert_eq!(n.meta.key, k);
}

#[test]
fn bad_names_are_typed_errors() {
    let i = interner(16);
    assert!(matches!(i.key(""), Err(Error::EmptyName)));
    assert!(matches!(i.key("a::b"), Err(Error::EmptySegment { .. })));
    assert!(matches!(i.key("a:*"), Err(Error::ReservedCharacter { .. })));
    assert!(matches!(
        i.key(&"x".repeat(65)),
        Err(Error::NameTooLong { len: 65, max: 64 })
    ));
    assert_eq!(i.name_count(), 0);
}

#[test]
fn limit_is_enforced_and_existing_names_still_resolve() {
    let i = interner(2);
    let a = i.key("a:1").unwrap();
    i.key("a:2").unwrap();
    assert!(matches!(
        i.key("a:3"),
        Err(Error::TooManyNames { limit: 2 })
    ));
    assert_eq!(i.key("a:1").unwrap(), a);
    assert_eq!(i.get("a:3"), None);
    assert_eq!(i.name_count(), 2);
}

#[test]
fn many_names_cross_chunks_and_index_growth() {
    // Several arena chunks (64, 128, ...) and index doublings.
    let n = 20_000;
    let i = interner(n);
    let keys: Vec<_> = (0..n)
        .map(|k| i.key(&format!("p{}:n{k}", k % 97)).unwrap())
        .collect();
    assert_eq!(i.name_count(), n);
    assert_eq!(i.prefix_count(), 97);
    for (k, key) in keys.iter().enumerate() {
        assert_eq!(key.name_id() as usize, k, "ids are dense, in order");
        let name = format!("p{}:n{k}", k % 97);
        assert_eq!(i.get(&name), Some(*key));
        assert_eq!(i.key(&name).unwrap(), *key);
        let info = i.name(k).unwrap();
        assert_eq!(&*info.meta.name, name);
        assert_eq!(info.prefix, key.prefix_id());
        assert_eq!(
            &*i.prefix(key.prefix_id() as usize).unwrap().prefix,
            format!("p{}", k % 97)
        );
    }
    assert!(i.name(n).is_none());
    assert!(i.prefix(97).is_none());
    i.view().check_consistent().unwrap();
}

#[test]
fn name_meta_never_moves() {
    let i = interner(1000);
    let k = i.key("a:first").unwrap();
    let before = StdArc::as_ptr(&i.name(0).unwrap().meta);
    let entry = i.name(0).unwrap() as *const NameInfo;
    for n in 0..999 {
        i.key(&format!("b:{n}")).unwrap();
    }
    assert_eq!(StdArc::as_ptr(&i.name(0).unwrap().meta), before);
    assert_eq!(i.name(0).unwrap() as *const NameInfo, entry);
    assert_eq!(i.key("a:first").unwrap(), k);
}

#[test]
fn owns_only_its_own_keys() {
    let a = interner(16);
    let b = interner(16);
    let ka = a.key("a:secret:x").unwrap();
    let kb = b.key("billing:invoice:n5").unwrap();
    // Same ids in both engines: only the tag tells them apart.
    assert_eq!(ka.name_id(), kb.name_id());
    assert_eq!(ka.prefix_id(), kb.prefix_id());
    assert_ne!(ka, kb);
    assert!(a.owns(ka));
    assert!(b.owns(kb));
    assert!(!b.owns(ka), "a foreign key must not be owned");
    assert!(!a.owns(kb), "a foreign key must not be owned");
    // The same name interned by both is still two different keys.
    let kb2 = b.key("a:secret:x").unwrap();
    assert!(!a.owns(kb2) && b.owns(kb2));
    // A key with this engine's tag but an id it never handed out.
    let forged = EventKey::pack(5, ka.prefix_id(), ka.engine_tag());
    assert!(!a.owns(forged));
    assert!(!a.owns(EventKey::for_tests(0, 0)));
}

#[test]
fn event_key_stays_small_and_copy() {
    fn copy<T: Copy>() {}
    copy::<EventKey>();
    // One `u128`: copied in two registers, never through a stack slot read
    // back at another width (see `EventKey`).
    assert_eq!(std::mem::size_of::<EventKey>(), 16);
}

#[test]
fn keepalive_outlives_the_interner() {
    let i = interner(16);
    let k = i.key("data:users:created").unwrap();
    let keep = i.keepalive();
    let meta = StdArc::as_ptr(&i.name(0).unwrap().meta);
    drop(i);
    let info = keep.name(k.name_id() as usize).unwrap();
    assert_eq!(StdArc::as_ptr(&info.meta), meta);
    assert_eq!(&*info.meta.name, "data:users:created");
    assert_eq!(
        &*keep.prefix(k.prefix_id() as usize).unwrap().batch_name,
        "data:users:batch"
    );
}

#[test]
fn view_is_fixed_at_its_length() {
    let i = interner(16);
    i.key("a:old").unwrap();
    let view = i.view();
    let new = i.key("a:new").unwrap();
    assert_eq!(view.len(), 1);
    assert_eq!(view.get("a:new"), None);
    assert_eq!(i.view().get("a:new"), Some(new));
    view.check_consistent().unwrap();
}

#[test]
fn concurrent_interning_agrees() {
    let i = std::sync::Arc::new(interner(10_000));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let i = i.clone();
            std::thread::spawn(move || {
                (0..500)
                    .map(|n| i.key(&format!("p{}:n{n}", n % 7)).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(results.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(i.name_count(), 500);
    assert_eq!(i.prefix_count(), 7);
    i.view().check_consistent().unwrap();
}
