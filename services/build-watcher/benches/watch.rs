//! Build-watcher throughput and latency (written below; see docs/benchmarks/build-watcher.md).

fn main() {}
