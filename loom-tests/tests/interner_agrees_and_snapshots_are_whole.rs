//! Model 5: the interner (`Interner::key` / `insert` / `snapshot`).
//!
//! Properties: two threads interning the same new name get the same id
//! (the check / lock / re-check / publish protocol); two threads interning
//! different new names get distinct dense ids and neither insert is lost
//! (copy-on-write under the writer lock); and a concurrent reader sees
//! either the old or the new snapshot, whole, never a mix.
//!
//! Under loom the arc-swap cell is replaced by a stand-in with the same API
//! (`sync::SnapshotCell`), so this checks the interner's own protocol.
#![cfg(ringfold_loom)]

use loom::sync::Arc;
use loom::thread;
use loom_tests::model;
use ringfold::loom_api::Interner;

#[test]
fn same_new_name_gets_one_id_and_readers_see_whole_snapshots() {
    model(|| {
        let interner = Arc::new(Interner::new(8));
        let old = interner.key("a:old").unwrap();
        let spawn = |interner: Arc<Interner>| thread::spawn(move || interner.key("a:new").unwrap());
        let t1 = spawn(interner.clone());
        let t2 = spawn(interner.clone());
        // The reader: the old table (1 name) or the new one (2), whole.
        let snap = interner.snapshot();
        snap.check_consistent().unwrap();
        match snap.len() {
            1 => assert_eq!(snap.get("a:new"), None),
            2 => assert_eq!(snap.get("a:new").unwrap().name_id(), 1),
            n => panic!("snapshot with {n} names"),
        }
        assert_eq!(snap.get("a:old"), Some(old));
        let (k1, k2) = (t1.join().unwrap(), t2.join().unwrap());
        assert_eq!(k1, k2, "one name, two ids");
        assert_eq!(k1.name_id(), 1);
        assert_eq!(k1.prefix_id(), old.prefix_id());
        let last = interner.snapshot();
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
        let snap = interner.snapshot();
        snap.check_consistent().unwrap();
        assert!(!snap.is_empty() && snap.get("a:x") == Some(mine));
        let theirs = t.join().unwrap();
        let mut ids = [mine.name_id(), theirs.name_id()];
        ids.sort();
        assert_eq!(ids, [0, 1], "ids must be dense and distinct");
        assert_ne!(mine.prefix_id(), theirs.prefix_id());
        let last = interner.snapshot();
        last.check_consistent().unwrap();
        assert_eq!(last.len(), 2, "an insert was lost");
        assert_eq!(last.get("a:x"), Some(mine));
        assert_eq!(last.get("b:y"), Some(theirs));
    });
}
