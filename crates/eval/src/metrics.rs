//! The seed's metric definitions, as the evaluation uses them. They live in
//! `sightline-quality` (one implementation shared with the live quality of the results
//! database) and are re-exported here, so `sightline_eval::metrics::*` keeps working.

pub use sightline_quality::formulas::*;
