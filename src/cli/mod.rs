//! What the commands print, made from the library's APIs: the library itself
//! holds no command's output.
//!
//! - [`check_config`]: `qbroker check-config`, the resolved configuration.
//! - [`explain`]: `qbroker stdin --once`, what a message becomes.
//! - [`doctor`]: `qbroker doctor`, the checks of the clusters, the targets and
//!   the host, as a table.

pub mod check_config;
pub mod doctor;
pub mod explain;
