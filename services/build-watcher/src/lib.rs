//! The build-watcher service (being built).
