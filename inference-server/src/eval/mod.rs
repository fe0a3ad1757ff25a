//! Model evaluation in the server: the `eval` command ([`command`]) and
//! `POST /api/v1/evaluations` ([`api`]: the same evaluation over HTTP, in the background;
//! [`jobs`]: admission and the jobs kept; [`startup`]: `--evaluate-on-start`). The
//! evaluation itself — datasets, the seed's metric definitions, reports — is
//! [`sightline_eval`], re-exported here.

pub use sightline_eval::*;

pub mod api;
pub mod command;
pub mod jobs;
pub mod startup;

pub use command::{run_cli, run_eval};
