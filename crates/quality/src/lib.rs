//! The seed's quality figures, defined once: accuracy, per-class precision, recall and F1,
//! their macro and weighted averages, with the seed's divide-by-zero rules ([`formulas`]),
//! and the same figures from counted (predicted, true) label pairs ([`live`]), so that the
//! offline evaluation (`sightline-eval`) and the live quality of the results database
//! (`sightline-store`, from users' feedback) can never disagree on what a figure means.
//! And the divergence that says when answers drift away from a baseline ([`drift`]), used
//! by the recognize role where no labels exist.
//!
//! May use: `serde` (the figures are serialised as they are); nothing else — no I/O, no
//! model, no database, no HTTP. Whoever counts (the evaluation runner, a SQL `GROUP BY`)
//! hands the counts here.

pub mod drift;
pub mod formulas;
pub mod live;

pub use formulas::*;
pub use live::{Pair, Quality, Window};
