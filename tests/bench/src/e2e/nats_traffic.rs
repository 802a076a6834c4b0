//! What the services ask of nats-server per push, from its monitoring endpoints (pure parts
//! here, the HTTP reads in the bench): JetStream API calls (`/jsz`: stream and consumer
//! creations and look-ups, KV reads, direct gets; not publishes, acks or pulls, which are
//! messages) and messages each connection sent (`/connz`: publishes, KV writes, acks, pull
//! requests, API requests). With the CPU per push they tell where nats-server's time goes.

use std::collections::BTreeMap;

use serde::Deserialize;

/// A reading of the server's counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Traffic {
    /// JetStream API requests served since the server started.
    pub api_calls: u64,
    /// Messages received from clients, per connection name (connections of one name summed;
    /// unnamed ones as `(unnamed)`).
    pub sent_by: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
struct Jsz {
    api: Api,
}

#[derive(Deserialize)]
struct Api {
    total: u64,
}

#[derive(Deserialize)]
struct Connz {
    #[serde(default)]
    connections: Vec<Connection>,
}

#[derive(Deserialize)]
struct Connection {
    #[serde(default)]
    name: String,
    #[serde(default)]
    in_msgs: u64,
}

impl Traffic {
    /// From the bodies of `/jsz` and `/connz` (`?limit=` high enough for every connection).
    pub fn parse(jsz: &str, connz: &str) -> Result<Self, serde_json::Error> {
        let jsz: Jsz = serde_json::from_str(jsz)?;
        let connz: Connz = serde_json::from_str(connz)?;
        let mut sent_by = BTreeMap::new();
        for c in connz.connections {
            let name = if c.name.is_empty() {
                "(unnamed)".to_owned()
            } else {
                c.name
            };
            *sent_by.entry(name).or_default() += c.in_msgs;
        }
        Ok(Self {
            api_calls: jsz.api.total,
            sent_by,
        })
    }

    /// Per push between `self` (before) and `after`: JetStream API calls, and messages sent per
    /// connection name, largest first. A connection that appeared meanwhile counts from zero;
    /// one that went away (a restart) is left out rather than counted negative.
    pub fn per_push(&self, after: &Traffic, pushes: usize) -> (f64, Vec<(String, f64)>) {
        let n = pushes.max(1) as f64;
        let api = after.api_calls.saturating_sub(self.api_calls) as f64 / n;
        let mut sent: Vec<(String, f64)> = after
            .sent_by
            .iter()
            .filter_map(|(name, count)| {
                let before = self.sent_by.get(name).copied().unwrap_or(0);
                let delta = count.checked_sub(before)?;
                (delta > 0).then(|| (name.clone(), delta as f64 / n))
            })
            .collect();
        sent.sort_by(|a, b| b.1.total_cmp(&a.1));
        (api, sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSZ: &str = r#"{"server_id":"x","api":{"level":1,"total":120,"errors":3},"streams":4}"#;

    #[test]
    fn connections_of_one_name_are_summed_and_unnamed_ones_grouped() {
        let connz = r#"{"num_connections":3,"connections":[
            {"cid":1,"name":"prx-ci-dispatcher","in_msgs":10,"out_msgs":4},
            {"cid":2,"name":"prx-ci-dispatcher","in_msgs":5},
            {"cid":3,"in_msgs":7}]}"#;
        let t = Traffic::parse(JSZ, connz).unwrap();
        assert_eq!(t.api_calls, 120);
        assert_eq!(t.sent_by["prx-ci-dispatcher"], 15);
        assert_eq!(t.sent_by["(unnamed)"], 7);
    }

    #[test]
    fn per_push_counts_new_connections_from_zero_and_drops_vanished_ones() {
        let before = Traffic {
            api_calls: 100,
            sent_by: [("a".to_owned(), 50), ("gone".to_owned(), 9)].into(),
        };
        let after = Traffic {
            api_calls: 300,
            sent_by: [("a".to_owned(), 250), ("new".to_owned(), 400)].into(),
        };
        let (api, sent) = before.per_push(&after, 100);
        assert_eq!(api, 2.0);
        assert_eq!(sent, vec![("new".to_owned(), 4.0), ("a".to_owned(), 2.0)]);
    }

    #[test]
    fn a_body_that_is_not_the_servers_is_an_error() {
        assert!(Traffic::parse("{}", "{}").is_err());
        assert!(Traffic::parse(JSZ, "not json").is_err());
    }
}
