//! What `/metrics` serves: the conventional `process_*` families and the classic text format
//! (`promtool check metrics`-clean), from the very source file `sightline-server` uses, so
//! every Sightline process exports them the same way. See that file for the details.

#[path = "../../inference-server/src/exposition.rs"]
mod shared;

pub use shared::*;
