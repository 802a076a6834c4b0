//! Benchmarks across services: the end-to-end run's pure parts and fakes ([`e2e`]), and the
//! summary table `docs/benchmarks.md` rendered from the recorded runs (`prx-ci-bench-table`).

pub mod e2e;
