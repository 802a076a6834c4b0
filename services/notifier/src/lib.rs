//! The notifier service (being built).
