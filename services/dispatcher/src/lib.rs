//! The dispatcher service (being built).
