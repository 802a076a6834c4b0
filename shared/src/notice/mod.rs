//! What the notifier says about a build, pure (no I/O): the build's [`view`] folded from its
//! events, the Slack message [`render`]ed from it (through [`mrkdwn`]'s escaper and link
//! builder, and [`console_links`]), and the GitHub [`commit_status`] it calls for. The notifier
//! delivers them; the ops dashboard shows them on a build's page.

pub mod commit_status;
pub mod console_links;
#[cfg(any(test, feature = "testing"))]
pub mod fixtures;
pub mod mrkdwn;
pub mod render;
pub mod view;
