//! Model 5: the interner (`Interner::key` / `insert` / `view`).
//!
//! The interner is an append-only arena (chunks that never move, a
//! published length) plus an open-addressing index of atomic slots that is
//! filled in place and replaced when it doubles. Under loom the first
//! chunks hold one and two entries and the index starts at two slots, so
//! with two names every model crosses a chunk boundary and replaces the
//! index while other threads read.
//!
//! Properties: two threads interning the same new name get the same id
//! (the check / lock / re-check / publish protocol); two threads interning
//! different new names get distinct dense ids and neither insert is lost;
//! a concurrent reader's view (the length, read once) is whole: every id
//! below it resolves by id and by name, and nothing above it is seen; and a
//! lock-free lookup of an existing name keeps finding it while the index is
//! replaced and a new chunk allocated. loom's cell tracking also checks
//! that no arena entry or chunk pointer is read while it is written.
//!
//! Under loom the arc-swap cell holding the index is replaced by a
//! stand-in with the same API (`sync::SnapshotCell`), so this checks the
//! interner's own protocol.
#![cfg(ringfold_loom)]

use loom::sync::Arc;
use loom::thread;
use loom_tests::model;
use ringfold::loom_api::Interner;

#[test]
fn same_new_name_gets_one_id_and_readers_see_whole_views() {
    model(|| {
        let interner = Arc::new(Interner::new(8));
        let old = interner.key("a:old").unwrap();
        let spawn = |interner: Arc<Interner>| thread::spawn(move || interner.key("a:new").unwrap());
        let t1 = spawn(interner.clone());
        let t2 = spawn(interner.clone());
        // The reader: the old names (1) or the new ones (2), whole.
        let view = interner.view();
        view.check_consistent().unwrap();
        match view.len() {
            1 => assert_eq!(view.get("a:new"), None),
            2 => assert_eq!(view.get("a:new").unwrap().name_id(), 1),
            n => panic!("view with {n} names"),
        }
        assert_eq!(view.get("a:old"), Some(old));
        let (k1, k2) = (t1.join().unwrap(), t2.join().unwrap());
        assert_eq!(k1, k2, "one name, two ids");
        assert_eq!(k1.name_id(), 1);
        assert_eq!(k1.prefix_id(), old.prefix_id());
        assert!(interner.owns(k1));
        let last = interner.view();
        last.check_consistent().unwrap();
        assert_eq!(last.len(), 2);
    });
}

#[test]
fn different_new_names_get_distinct_dense_ids_and_none_is_lost() {
    model(|| {
        let interner = Arc::new(Interner::new(8));
        let other = interner.clone();
        let t = thread::spawn(move || other.key("b:y").unwrap());
        let mine = interner.key("a:x").unwrap();
        let view = interner.view();
        view.check_consistent().unwrap();
        assert!(!view.is_empty() && view.get("a:x") == Some(mine));
        let theirs = t.join().unwrap();
        let mut ids = [mine.name_id(), theirs.name_id()];
        ids.sort();
        assert_eq!(ids, [0, 1], "ids must be dense and distinct");
        assert_ne!(mine.prefix_id(), theirs.prefix_id());
        let last = interner.view();
        last.check_consistent().unwrap();
        assert_eq!(last.len(), 2, "an insert was lost");
        assert_eq!(last.get("a:x"), Some(mine));
        assert_eq!(last.get("b:y"), Some(theirs));
    });
}

#[test]
fn existing_names_resolve_while_the_index_and_arena_grow() {
    model(|| {
        let interner = Arc::new(Interner::new(8));
        let old = interner.key("a:old").unwrap();
        let other = interner.clone();
        // Grows the arena into its second chunk and replaces the index.
        let t = thread::spawn(move || other.key("b:new").unwrap());
        // Lock-free lookups of the existing name, racing the growth.
        assert_eq!(interner.key("a:old").unwrap(), old);
        assert_eq!(interner.name(0).as_deref(), Some("a:old"));
        assert_eq!(interner.key("a:old").unwrap(), old);
        let new = t.join().unwrap();
        assert_eq!(new.name_id(), 1);
        assert_eq!(interner.name(1).as_deref(), Some("b:new"));
        assert_eq!(interner.key("b:new").unwrap(), new);
        interner.view().check_consistent().unwrap();
    });
}

#[test]
fn a_view_taken_during_an_insert_is_whole() {
    model(|| {
        let interner = Arc::new(Interner::new(8));
        interner.key("a:old").unwrap();
        let other = interner.clone();
        let t = thread::spawn(move || other.key("b:new").unwrap());
        // One view, raced against the insert: its length decides, and
        // everything below it resolves by id and by name.
        let view = interner.view();
        view.check_consistent().unwrap();
        match view.len() {
            1 => assert_eq!(view.get("b:new"), None),
            2 => assert_eq!(view.get("b:new").map(|k| k.name_id()), Some(1)),
            n => panic!("view with {n} names"),
        }
        t.join().unwrap();
    });
}
