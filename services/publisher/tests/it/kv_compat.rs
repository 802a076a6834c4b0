//! Records written by the code before `shared::kv` (its own key encoder and compare-and-set
//! loops) read unchanged through the stores built on `shared::kv`, under the same keys, and new
//! writes store the same JSON.

use std::time::Duration;

use prx_ci_publisher::fence::Stale;
use prx_ci_publisher::fence::{Position, Publication};
use prx_ci_publisher::fence_store::{FENCE_BUCKET, FenceOutcome, FenceSettings, KvFence};
use prx_ci_publisher::metrics::FenceMetrics;
use prx_ci_publisher::parameter_store::PARAMETERS_BUCKET;
use prx_ci_publisher::skip_store::{SKIPS_BUCKET, SkipStore};
use prx_ci_publisher::{KvParameterStore, parameter_views};
use prx_ci_shared::kv::key_token;
use prx_ci_shared::ownership::{OWNERS_BUCKET, OwnerRecord, OwnerStore};
use prx_ci_shared::testing::NatsServer;
use serde_json::{Value, json};

use crate::utils::runtime;

const NAME: &str = "/prx/stag/Spire/My.App/pkg/docker-image-tag";
/// The key the publisher's former `keys::kv_key` gave [`NAME`].
const OLD_KEY: &str = "=2Fprx=2Fstag=2FSpire=2FMy=2EApp=2Fpkg=2Fdocker-image-tag";
const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const VALUE: &str = "github/prx/my.app:0123456789abcdef0123456789abcdef01234567-x86_64";

/// A fence record as the former `ordering.rs` stored it.
fn old_fence_record() -> Value {
    json!({
        "parameter": NAME,
        "written": {
            "position": {"push_sequence": 42, "arch_rank": 1},
            "value": VALUE,
            "commit": SHA,
            "build_id": "b42",
            "ordering_key": "PRX/my.app@main",
            "architecture": "x86_64",
            "version": 3,
            "at": "2026-11-01T00:00:00Z"
        },
        "recent": [
            {"position": {"push_sequence": 42, "arch_rank": 1}, "build_id": "b42", "value": VALUE, "version": 3}
        ]
    })
}

/// An owner record as the former `owner_store.rs` stored it (a claim).
fn old_owner_record() -> Value {
    json!({
        "parameter": NAME,
        "repository": "PRX/my.app",
        "action": "claim",
        "build_id": "b40",
        "commit": SHA,
        "at": "2026-10-01T00:00:00Z"
    })
}

/// A skip record as the former `report.rs` stored it.
fn old_skip_record() -> Value {
    json!({
        "parameter": NAME,
        "reason": "SUPERSEDED",
        "detail": "push #42 (0123456) already published",
        "value": "v41",
        "commit": SHA,
        "push_sequence": 41,
        "build_id": "b41",
        "superseded_by_sequence": 42,
        "superseded_by_commit": SHA,
        "at": "2026-11-01T00:00:01Z"
    })
}

async fn put_raw(js: &async_nats::jetstream::Context, bucket: &str, key: &str, value: Vec<u8>) {
    js.get_key_value(bucket)
        .await
        .unwrap()
        .put(key, value.into())
        .await
        .unwrap();
}

async fn get_raw(js: &async_nats::jetstream::Context, bucket: &str, key: &str) -> Value {
    let bytes = js
        .get_key_value(bucket)
        .await
        .unwrap()
        .get(key)
        .await
        .unwrap()
        .expect("a record at the key");
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn the_shared_key_token_is_the_former_key() {
    assert_eq!(key_token(NAME), OLD_KEY);
    // The former encoder, verbatim.
    let former = prx_ci_shared::bus::subject::encode_token(NAME).replace('~', "=");
    assert_eq!(former, OLD_KEY);
}

#[tokio::test]
async fn records_written_before_read_and_write_the_same() {
    let nats = NatsServer::start().await;
    let rt = runtime(&nats).await;
    let js = &rt.js;
    put_raw(
        js,
        FENCE_BUCKET,
        OLD_KEY,
        serde_json::to_vec(&old_fence_record()).unwrap(),
    )
    .await;
    put_raw(
        js,
        OWNERS_BUCKET,
        OLD_KEY,
        serde_json::to_vec(&old_owner_record()).unwrap(),
    )
    .await;
    put_raw(
        js,
        SKIPS_BUCKET,
        OLD_KEY,
        serde_json::to_vec(&old_skip_record()).unwrap(),
    )
    .await;
    put_raw(js, PARAMETERS_BUCKET, OLD_KEY, VALUE.as_bytes().to_vec()).await;

    // The fence reads the old record and decides on it.
    let fence = KvFence::open(
        js,
        FenceSettings {
            lease: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_millis(20),
        },
        FenceMetrics::new(),
    )
    .await
    .unwrap();
    let (record, revision) = fence.read(NAME).await.unwrap();
    assert!(revision > 0);
    assert_eq!(serde_json::to_value(&record).unwrap(), old_fence_record());
    let older = Publication {
        position: Position::new(41, true),
        value: "v41".into(),
        commit: SHA.into(),
        build_id: "b41".into(),
        ordering_key: "PRX/my.app@main".into(),
        architecture: "x86_64".into(),
    };
    assert_eq!(
        fence.precheck(NAME, &older).await.unwrap(),
        Some(FenceOutcome::Skipped(Stale::Superseded {
            by_sequence: 42,
            by_commit: SHA.into(),
        }))
    );

    // The owner store reads the old claim, lists it, and a new claim stores the same JSON at
    // the same kind of key.
    let owners = OwnerStore::open(js).await.unwrap();
    let (owner, _) = owners.get(NAME).await.unwrap().expect("the old claim");
    assert_eq!(serde_json::to_value(&owner).unwrap(), old_owner_record());
    assert_eq!(
        owners.all("/prx/stag/Spire/").await.unwrap(),
        vec![owner.clone()]
    );
    let other = NAME.replace("My.App", "Other");
    let claim = OwnerRecord {
        parameter: other.clone(),
        ..owner.clone()
    };
    assert!(owners.create(&claim).await.unwrap());
    let mut expected = old_owner_record();
    expected["parameter"] = json!(other);
    assert_eq!(
        get_raw(
            js,
            OWNERS_BUCKET,
            "=2Fprx=2Fstag=2FSpire=2FOther=2Fpkg=2Fdocker-image-tag"
        )
        .await,
        expected
    );

    // The skip store reads the old skip, and writes one back byte-for-byte the same JSON.
    let skips = SkipStore::open(js).await.unwrap();
    let all = skips.all("/prx/stag/Spire/").await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(serde_json::to_value(&all[0]).unwrap(), old_skip_record());
    skips.record(&all[0]).await.unwrap();
    assert_eq!(get_raw(js, SKIPS_BUCKET, OLD_KEY).await, old_skip_record());

    // `prx-ci params` shows all of it together.
    let store = KvParameterStore::new(js).await.unwrap();
    let views = parameter_views(js, &store, "/prx/stag/Spire/")
        .await
        .unwrap();
    assert_eq!(views.len(), 1, "{views:?}");
    let view = &views[0];
    assert_eq!(view.parameter, NAME);
    assert_eq!(view.value.as_deref(), Some(VALUE));
    assert_eq!(view.push_sequence, Some(42));
    assert_eq!(view.commit.as_deref(), Some(SHA));
    assert_eq!(view.last_skip.as_ref().map(|s| s.push_sequence), Some(41));
}
