//! The publisher service (being built).
