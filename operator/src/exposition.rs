//! What `/metrics` serves: the conventional `process_*` families and the classic text format
//! (`promtool check metrics`-clean), from `sightline-telemetry`, which `sightline-server`
//! uses too, so every Sightline process exports them the same way.

pub use sightline_telemetry::exposition::*;
