//! A 3-node NATS JetStream cluster from `deploy/nats/cluster/n*.conf`: the files' settings
//! kept, their loopback ports rewritten to free ones and their stores moved into the run dir;
//! nodes are killed (SIGKILL) and restarted one at a time, or all together.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use prx_ci_shared::testing::{free_port, tool_path, workspace_root};
use tokio::process::{Child, Command};

/// Nodes of the cluster.
pub const NODES: usize = 3;

/// One `nats-server` of the cluster.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    conf: PathBuf,
    log: PathBuf,
    pub client_port: u16,
    child: Option<Child>,
}

impl Node {
    fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let child = Command::new(tool_path("nats-server"))
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start nats-server")?;
        self.child = Some(child);
        Ok(())
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take()
            && let Err(err) = child.kill().await
        {
            tracing::warn!(node = %self.name, %err, "cannot kill nats-server");
        }
    }
}

/// The checked-in node configs with `mapping` (from, to) replacements and a store in `dir`.
pub fn rewrite_config(
    text: &str,
    node: &str,
    mapping: &[(String, String)],
    store: &Path,
) -> String {
    let mut text = text.to_owned();
    for (from, to) in mapping {
        text = text.replace(from, to);
    }
    text.replace(
        &format!("/data/jetstream/{node}"),
        &store.display().to_string(),
    )
}

/// The running cluster.
#[derive(Debug)]
pub struct Cluster {
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// Writes the node configs under `dir` and starts every node.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let mut mapping = Vec::new();
        // Nine distinct ports (`free_port` never hands one out twice).
        for base in [4222u16, 6222, 8222] {
            for i in 0..NODES as u16 {
                mapping.push((
                    format!("127.0.0.1:{}", base + i),
                    format!("127.0.0.1:{}", free_port()),
                ));
            }
        }
        let mut nodes = Vec::new();
        for i in 0..NODES {
            let name = format!("n{}", i + 1);
            let source = workspace_root().join(format!("deploy/nats/cluster/{name}.conf"));
            let text = std::fs::read_to_string(&source)
                .with_context(|| format!("cannot read {}", source.display()))?;
            let conf = dir.join(format!("{name}.conf"));
            std::fs::write(
                &conf,
                rewrite_config(&text, &name, &mapping, &dir.join(format!("{name}-store"))),
            )?;
            let client_port = mapping[i]
                .1
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .context("a port")?;
            let mut node = Node {
                log: dir.join(format!("{name}.log")),
                name,
                conf,
                client_port,
                child: None,
            };
            node.start()?;
            nodes.push(node);
        }
        Ok(Self { nodes })
    }

    /// `nats://127.0.0.1:a,nats://127.0.0.1:b,...`.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills node `i` and starts it again after `down`.
    pub async fn restart(&mut self, i: usize, down: Duration) -> anyhow::Result<()> {
        self.nodes[i].kill().await;
        tokio::time::sleep(down).await;
        self.nodes[i].start()
    }

    /// Kills every node, keeps the cluster down for `down`, starts every node.
    pub async fn outage(&mut self, down: Duration) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            node.kill().await;
        }
        tokio::time::sleep(down).await;
        for node in &mut self.nodes {
            node.start()?;
        }
        Ok(())
    }

    /// The index of the node named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Kills every node (end of the run).
    pub async fn stop(&mut self) {
        for node in &mut self.nodes {
            node.kill().await;
        }
    }
}

/// The name of the node leading `stream`, from the cluster's own view of it.
pub async fn stream_leader(js: &async_nats::jetstream::Context, stream: &str) -> Option<String> {
    js.get_stream(stream)
        .await
        .ok()?
        .info()
        .await
        .ok()?
        .cluster
        .clone()
        .and_then(|c| c.leader)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_store_are_rewritten_and_the_rest_kept() {
        let text =
            std::fs::read_to_string(workspace_root().join("deploy/nats/cluster/n2.conf")).unwrap();
        let mapping = vec![
            ("127.0.0.1:4223".to_owned(), "127.0.0.1:1".to_owned()),
            ("127.0.0.1:6222".to_owned(), "127.0.0.1:2".to_owned()),
        ];
        let out = rewrite_config(&text, "n2", &mapping, Path::new("/run/n2-store"));
        assert!(out.contains("listen: 127.0.0.1:1"), "{out}");
        assert!(out.contains("nats-route://127.0.0.1:2"), "{out}");
        assert!(out.contains("store_dir: \"/run/n2-store\""), "{out}");
        assert!(!out.contains("/data/jetstream"), "{out}");
        assert!(out.contains("max_payload: 32MB"), "{out}");
    }
}
