//! `shared::kv::Records` against a real nats-server: the compare-and-set loop serialises
//! concurrent writers without losing an update, and records keep their JSON shape.

use async_nats::jetstream::{self, kv};
use prx_ci_shared::kv::{KvError, Modify, Records};
use prx_ci_shared::testing::NatsServer;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct Counter {
    count: u64,
    writers: Vec<u32>,
}

async fn bucket(server: &NatsServer) -> kv::Store {
    let js = jetstream::new(server.connect().await);
    js.create_key_value(kv::Config {
        bucket: "test_records".into(),
        history: 1,
        ..Default::default()
    })
    .await
    .expect("create bucket")
}

#[tokio::test]
async fn concurrent_modifies_of_one_key_lose_no_update() {
    let server = NatsServer::start().await;
    let records = Records::<Counter>::new(bucket(&server).await);
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..24u32 {
        let records = records.clone();
        tasks.spawn(async move {
            records
                .modify("c", |counter| {
                    counter.count += 1;
                    counter.writers.push(writer);
                    Modify::Write(counter.count)
                })
                .await
        });
    }
    let mut seen = Vec::new();
    while let Some(result) = tasks.join_next().await {
        let (count, _) = result.unwrap().expect("modify");
        seen.push(count);
    }
    seen.sort_unstable();
    // Every writer saw a distinct count: each step ran on the record its write replaced.
    assert_eq!(seen, (1..=24).collect::<Vec<_>>());
    let stored = records.get("c").await.unwrap().record.unwrap();
    assert_eq!(stored.count, 24);
    let mut writers = stored.writers;
    writers.sort_unstable();
    assert_eq!(writers, (0..24).collect::<Vec<_>>());
}

#[tokio::test]
async fn keep_writes_nothing_and_create_and_compare_and_set_report_losing() {
    let server = NatsServer::start().await;
    let records = Records::<Counter>::new(bucket(&server).await);

    let (result, record) = records
        .modify("k", |counter| Modify::Keep(counter.count))
        .await
        .unwrap();
    assert_eq!((result, record), (0, Counter::default()));
    assert_eq!(records.get("k").await.unwrap().revision, 0);

    let one = Counter {
        count: 1,
        writers: vec![],
    };
    assert!(records.create("k", &one).await.unwrap());
    assert!(!records.create("k", &one).await.unwrap());
    let read = records.get("k").await.unwrap();
    assert_eq!(read.record.as_ref(), Some(&one));
    // A stale revision loses; the current one wins.
    assert_eq!(
        records
            .compare_and_set("k", &one, read.revision + 7)
            .await
            .unwrap(),
        None
    );
    assert!(
        records
            .compare_and_set("k", &one, read.revision)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(records.keys().await.unwrap(), vec!["k".to_owned()]);
}

#[tokio::test]
async fn a_record_that_is_not_its_type_is_a_permanent_error_naming_bucket_and_key() {
    let server = NatsServer::start().await;
    let store = bucket(&server).await;
    store.put("bad", "not json".into()).await.unwrap();
    let records = Records::<Counter>::new(store);
    let err = records.get("bad").await.unwrap_err();
    assert!(matches!(err, KvError::Corrupt { .. }), "{err}");
    assert!(!err.is_transient());
    assert!(err.to_string().contains("test_records record bad"), "{err}");
}

#[tokio::test]
async fn the_leader_read_agrees_with_the_direct_read() {
    let server = NatsServer::start().await;
    let store = bucket(&server).await;
    let records = Records::<Counter>::new(store.clone());
    let absent = records.get_from_leader("missing").await.unwrap();
    assert_eq!((absent.record, absent.revision), (None, 0));
    let (_, written) = records
        .modify("k", |c| {
            c.count = 7;
            Modify::Write(())
        })
        .await
        .unwrap();
    let direct = records.get("k").await.unwrap();
    let leader = records.get_from_leader("k").await.unwrap();
    assert_eq!(leader.record, Some(written));
    assert_eq!(leader.record, direct.record);
    assert_eq!(leader.revision, direct.revision);
    store.delete("k").await.unwrap();
    let deleted = records.get_from_leader("k").await.unwrap();
    assert_eq!(deleted.record, None, "a delete marker is no record");
    assert_eq!(deleted.revision, records.get("k").await.unwrap().revision);
    store.purge("k").await.unwrap();
    let purged = records.get_from_leader("k").await.unwrap();
    assert_eq!(purged.record, None);
    // A compare-and-set against the leader's revision of a removed key succeeds.
    assert!(
        records
            .compare_and_set("k", &Counter::default(), purged.revision)
            .await
            .unwrap()
            .is_some()
    );
}
