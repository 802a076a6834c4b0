//! `prx-ci-chaos`: runs the chaos run and exits non-zero on any violated invariant.

fn main() {}
