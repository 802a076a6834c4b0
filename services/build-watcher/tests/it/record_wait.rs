//! Waiting for a build's record against a real nats-server: one watch of the builds bucket per
//! process wakes every wait, whoever writes the record, and comes back after the server
//! restarts or the watch's consumer disappears; a wait creates nothing on the server.

use std::time::Duration;

use async_nats::jetstream;
use prx_ci_build_watcher::build_store::BUILDS_BUCKET;
use prx_ci_build_watcher::{BuildStore, WatchedBuildRecord};
use prx_ci_shared::CancellationToken;
use prx_ci_shared::kv::Versioned;
use prx_ci_shared::testing::wait_until;
use tokio::task::JoinHandle;

use crate::utils::{WAIT, World, new_build_id};

/// Longer than any test waits for a wake: a wait that ends before it was woken (a timeout
/// would take this long).
const NEVER: Duration = Duration::from_secs(600);

/// The stream behind the builds bucket.
const BUILDS_STREAM: &str = "KV_prx_ci_builds";

/// Runs `store`'s watch until the returned token is cancelled.
fn start_watch(store: &BuildStore) -> CancellationToken {
    let stop = CancellationToken::new();
    tokio::spawn({
        let (store, stop) = (store.clone(), stop.clone());
        async move { store.watch_builds(stop).await }
    });
    stop
}

/// Starts waiting (up to `timeout`) for `build_id`'s record, and returns once the wait is
/// registered.
async fn start_wait(
    store: &BuildStore,
    build_id: &str,
    timeout: Duration,
) -> JoinHandle<Versioned<WatchedBuildRecord>> {
    let before = store.waiters().len();
    let task = tokio::spawn({
        let (store, build_id) = (store.clone(), build_id.to_owned());
        async move { store.wait_for(&build_id, timeout).await.unwrap() }
    });
    wait_until(WAIT, "the wait to be registered", || async {
        (store.waiters().len() > before).then_some(())
    })
    .await;
    task
}

/// Writes a fresh record for `build_id` through `store`.
async fn write_record(store: &BuildStore, build_id: &str) -> u64 {
    let record = WatchedBuildRecord {
        build_id: build_id.to_owned(),
        ..WatchedBuildRecord::default()
    };
    store
        .save(&record, 0)
        .await
        .unwrap()
        .expect("the record was absent")
}

/// The wait's answer, which must come well before its own timeout ([`NEVER`]).
async fn woken(wait: JoinHandle<Versioned<WatchedBuildRecord>>) -> Versioned<WatchedBuildRecord> {
    tokio::time::timeout(WAIT, wait)
        .await
        .expect("the wait was woken before its timeout")
        .unwrap()
}

async fn builds_consumers(js: &jetstream::Context) -> usize {
    js.get_stream(BUILDS_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .consumer_count
}

#[tokio::test]
async fn a_wait_is_woken_by_the_write_of_its_record() {
    let world = World::nats_only().await;
    let stop = start_watch(&world.store);
    let build_id = new_build_id();
    let wait = start_wait(&world.store, &build_id, NEVER).await;
    let revision = write_record(&world.store, &build_id).await;
    let got = woken(wait).await;
    assert_eq!(got.revision, revision);
    assert_eq!(got.record.unwrap().build_id, build_id);
    assert!(world.store.waiters().is_empty());
    stop.cancel();
}

#[tokio::test]
async fn a_record_another_replica_writes_wakes_the_wait() {
    let world = World::nats_only().await;
    let stop = start_watch(&world.store);
    // Another replica: its own connection and store.
    let other = BuildStore::open(&jetstream::new(world.nats.connect().await))
        .await
        .unwrap();
    let build_id = new_build_id();
    let wait = start_wait(&world.store, &build_id, NEVER).await;
    let revision = write_record(&other, &build_id).await;
    assert_eq!(woken(wait).await.revision, revision);
    assert!(world.store.waiters().is_empty());
    stop.cancel();
}

#[tokio::test]
async fn a_record_already_there_is_returned_at_once() {
    let world = World::nats_only().await;
    // No watch at all: the first read finds it.
    let build_id = new_build_id();
    let revision = write_record(&world.store, &build_id).await;
    let got = tokio::time::timeout(WAIT, world.store.wait_for(&build_id, NEVER))
        .await
        .expect("no wait")
        .unwrap();
    assert_eq!(got.revision, revision);
    assert!(world.store.waiters().is_empty());
}

#[tokio::test]
async fn a_wait_that_times_out_answers_without_a_record_and_leaves_no_waiter() {
    let world = World::nats_only().await;
    let stop = start_watch(&world.store);
    let build_id = new_build_id();
    // Another build's write is no reason to wake it.
    let wait = start_wait(&world.store, &build_id, Duration::from_millis(300)).await;
    write_record(&world.store, &new_build_id()).await;
    let got = tokio::time::timeout(WAIT, wait).await.unwrap().unwrap();
    assert_eq!(got.record, None);
    assert!(world.store.waiters().is_empty());
    stop.cancel();
}

#[tokio::test]
async fn waits_create_nothing_on_the_server_one_watch_wakes_them_all() {
    let world = World::nats_only().await;
    let stop = start_watch(&world.store);
    wait_until(WAIT, "the watch's consumer", || async {
        (builds_consumers(&world.rt.js).await == 1).then_some(())
    })
    .await;
    let builds: Vec<String> = (0..20).map(|_| new_build_id()).collect();
    let mut waits = Vec::new();
    for build_id in &builds {
        waits.push(start_wait(&world.store, build_id, NEVER).await);
    }
    assert_eq!(world.store.waiters().len(), 20);
    assert_eq!(
        builds_consumers(&world.rt.js).await,
        1,
        "only the watch; no consumer per wait"
    );
    for build_id in &builds {
        write_record(&world.store, build_id).await;
    }
    for (wait, build_id) in waits.into_iter().zip(&builds) {
        assert_eq!(&woken(wait).await.record.unwrap().build_id, build_id);
    }
    assert!(world.store.waiters().is_empty());
    stop.cancel();
}

#[tokio::test]
async fn the_watch_comes_back_after_the_server_restarts() {
    let mut world = World::nats_only().await;
    let stop = start_watch(&world.store);
    let before = new_build_id();
    let wait = start_wait(&world.store, &before, NEVER).await;
    write_record(&world.store, &before).await;
    woken(wait).await;

    world.nats.restart().await;
    // Once the client is back (reads answer), a wait is woken again.
    wait_until(WAIT, "the store to answer again", || async {
        world.store.get(&before).await.ok()
    })
    .await;
    let after = new_build_id();
    let wait = start_wait(&world.store, &after, NEVER).await;
    let revision = write_record(&world.store, &after).await;
    assert_eq!(woken(wait).await.revision, revision);
    stop.cancel();
}

#[tokio::test]
async fn the_watch_comes_back_after_its_consumer_is_deleted() {
    let world = World::nats_only().await;
    let stop = start_watch(&world.store);
    let stream = world.rt.js.get_stream(BUILDS_STREAM).await.unwrap();
    let watch_consumer = wait_until(WAIT, "the watch's consumer", || async {
        use futures::TryStreamExt as _;
        let names: Vec<String> = stream.consumer_names().try_collect().await.ok()?;
        names.into_iter().next()
    })
    .await;
    assert!(
        stream
            .delete_consumer(&watch_consumer)
            .await
            .unwrap()
            .success
    );
    // Written while no watch exists: the new watch cannot deliver it, its opening wakes the
    // wait to read again.
    let build_id = new_build_id();
    let wait = start_wait(&world.store, &build_id, NEVER).await;
    let revision = write_record(&world.store, &build_id).await;
    assert_eq!(woken(wait).await.revision, revision);
    // And the watch is one consumer again, a new one.
    let names: Vec<String> = {
        use futures::TryStreamExt as _;
        stream.consumer_names().try_collect().await.unwrap()
    };
    assert_eq!(names.len(), 1, "{names:?}");
    assert_ne!(names[0], watch_consumer);
    stop.cancel();
}

#[test]
fn the_bucket_stream_is_named_after_the_bucket() {
    assert_eq!(BUILDS_STREAM, format!("KV_{BUILDS_BUCKET}"));
}
