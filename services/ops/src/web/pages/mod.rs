//! One module per page (or page family) of the dashboard.

pub mod actions;
pub mod branch;
pub mod build;
pub mod builds;
pub mod notice;
pub mod parameters;
pub mod parked;
pub mod shadow;
