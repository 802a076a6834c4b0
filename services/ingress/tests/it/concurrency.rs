//! Many deliveries at once.

use std::collections::HashSet;

use futures::future::join_all;

use crate::utils::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_distinct_deliveries_are_all_stored_exactly_once() {
    let h = Harness::start().await;
    let body = push_body();
    let deliveries: Vec<String> = (0..1000).map(|_| new_delivery_id()).collect();

    let answers = join_all(deliveries.iter().map(|delivery| {
        let request = h.webhook("push", delivery, &body, SECRET);
        async move { request.send().await.map(|r| r.status().as_u16()) }
    }))
    .await;
    let statuses: Vec<u16> = answers.into_iter().map(|r| r.unwrap()).collect();
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");

    assert_eq!(h.message_count().await, 1000);
    let stored: HashSet<String> = h
        .stored()
        .await
        .into_iter()
        .map(|(_, envelope)| envelope.event_id)
        .collect();
    let sent: HashSet<String> = deliveries.into_iter().collect();
    assert_eq!(stored, sent);
}
