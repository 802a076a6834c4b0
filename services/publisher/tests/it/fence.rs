//! The fence protocol alone (`KvFence` over a real nats-server), under more contention than
//! the service test: many concurrent writers of random positions to one parameter, some of
//! whose writes land and then lose their answer, retried like redeliveries.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use prx_ci_publisher::fence::{Position, Publication};
use prx_ci_publisher::fence_store::{FenceOutcome, FenceSettings, KvFence};
use prx_ci_publisher::metrics::FenceMetrics;
use prx_ci_publisher::{ParameterStore, StoreError, StoredParameter};
use prx_ci_shared::testing::NatsServer;
use tokio::task::JoinSet;

use crate::utils::runtime;

/// An in-memory store that keeps every write; writes of values in `lose_answer` land but
/// answer "unknown" the first time.
#[derive(Debug, Default)]
struct Recording {
    history: Mutex<Vec<String>>,
    lose_answer: Mutex<Vec<String>>,
}

#[async_trait]
impl ParameterStore for Recording {
    async fn put(&self, _name: &str, value: &str) -> Result<i64, StoreError> {
        tokio::task::yield_now().await;
        let version = {
            let mut history = self.history.lock().unwrap();
            history.push(value.to_owned());
            i64::try_from(history.len()).unwrap()
        };
        let mut lose = self.lose_answer.lock().unwrap();
        if let Some(i) = lose.iter().position(|v| v == value) {
            lose.remove(i);
            return Err(StoreError::Unknown {
                message: "answer lost".into(),
            });
        }
        Ok(version)
    }

    async fn get(&self, name: &str) -> Result<Option<StoredParameter>, StoreError> {
        let history = self.history.lock().unwrap();
        Ok(history.last().map(|v| StoredParameter {
            name: name.to_owned(),
            value: v.clone(),
            version: i64::try_from(history.len()).unwrap(),
        }))
    }

    async fn list(&self, _prefix: &str) -> Result<Vec<StoredParameter>, StoreError> {
        Ok(Vec::new())
    }
}

fn publication(seq: u64, primary: bool) -> Publication {
    Publication {
        position: Position::new(seq, primary),
        value: format!("v{seq}-{}", u8::from(primary)),
        commit: format!("{seq:040x}"),
        build_id: format!("b{seq}-{primary}"),
        ordering_key: "PRX/app@main".into(),
        architecture: String::new(),
    }
}

fn position_of(value: &str) -> (u64, u8) {
    let (seq, rank) = value[1..].split_once('-').unwrap();
    (seq.parse().unwrap(), rank.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_only_ever_move_a_parameter_forward() {
    let nats = NatsServer::start().await;
    let rt = runtime(&nats).await;
    let metrics = FenceMetrics::new();
    let fence = Arc::new(
        KvFence::open(
            &rt.js,
            FenceSettings {
                lease: Duration::from_millis(300),
                write_timeout: Duration::from_millis(100),
                poll_interval: Duration::from_millis(2),
            },
            metrics.clone(),
        )
        .await
        .unwrap(),
    );
    let mut seed = 0x0123_4567_89ab_cdefu64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..10 {
        let parameter = format!("/prx/stag/Spire/Fence{round}/pkg/docker-image-tag");
        let store = Arc::new(Recording::default());
        let publications: Vec<Publication> = (0..24)
            .map(|_| publication(1 + next() % 12, next() % 2 == 0))
            .collect();
        for p in publications.iter().filter(|_| next() % 5 == 0) {
            store.lose_answer.lock().unwrap().push(p.value.clone());
        }
        let mut tasks = JoinSet::new();
        for p in publications.clone() {
            let (fence, store, parameter) = (fence.clone(), store.clone(), parameter.clone());
            tasks.spawn(async move {
                // Retried like a redelivery until the fence settles it.
                for _ in 0..200 {
                    match fence.publish(&parameter, &p, store.as_ref()).await {
                        Ok(outcome) => return outcome,
                        Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
                panic!("{} never settled", p.value);
            });
        }
        let mut applied = 0;
        while let Some(outcome) = tasks.join_next().await {
            if matches!(outcome.unwrap(), FenceOutcome::Applied { .. }) {
                applied += 1;
            }
        }
        let history = store.history.lock().unwrap().clone();
        let positions: Vec<(u64, u8)> = history.iter().map(|v| position_of(v)).collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "round {round}: {history:?}"
        );
        let newest = publications.iter().map(|p| p.position).max().unwrap();
        assert_eq!(
            positions.last().copied(),
            Some((newest.push_sequence, newest.arch_rank)),
            "round {round}"
        );
        assert!(applied >= history.len());
    }
    assert_eq!(metrics.lost_after_write.get(), 0);
    assert!(metrics.waits.get() > 0, "writers contended");
}
