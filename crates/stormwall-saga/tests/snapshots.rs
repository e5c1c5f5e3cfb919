//! Property: loading an aggregate from its snapshot plus the events after it equals
//! replaying every event, whatever the events, the commit batches and the snapshot
//! interval.

use proptest::prelude::*;
use stormwall_saga::{EventStore, SqliteStore};

mod common;
use common::{Account, AccountEvent};

fn event() -> impl Strategy<Value = AccountEvent> {
    prop_oneof![
        (1i64..1000).prop_map(AccountEvent::Deposited),
        (1i64..1000).prop_map(AccountEvent::Withdrew),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn snapshot_plus_tail_equals_full_replay(
        batches in prop::collection::vec(prop::collection::vec(event(), 1..6), 1..25),
        every in 1u32..8,
    ) {
        let dir = std::env::temp_dir().join(format!("stormwall-saga-prop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.db");
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let events = EventStore::new(SqliteStore::open(&path).unwrap()).snapshot_every(every);
            let mut expected = Account::default();
            let mut loaded = events.load::<Account>("a").await.unwrap();
            for batch in batches {
                for e in &batch {
                    stormwall_saga::Aggregate::apply(&mut expected, e);
                }
                loaded = events.commit("a", loaded, batch).await.unwrap();
                // Every load (snapshot + tail) equals the full replay and the model.
                let from_snapshot = events.load::<Account>("a").await.unwrap();
                let replayed = events.replay::<Account>("a").await.unwrap();
                prop_assert_eq!(&from_snapshot, &replayed);
                prop_assert_eq!(&from_snapshot.0, &expected);
                prop_assert_eq!(&loaded, &from_snapshot);
            }
            Ok(())
        })?;
    }
}
