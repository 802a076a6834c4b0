//! Benchmarks that span services. The end-to-end bench lives in `benches/`; the summary table
//! of every recorded run is rendered by the `prx-ci-bench-table` binary.
