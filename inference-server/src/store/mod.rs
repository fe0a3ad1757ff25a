//! The store role: the results database ([`sightline_store`], re-exported here) and its
//! routes ([`http`], and users' feedback and the live quality in [`quality`]), and its
//! work on a timer ([`background`]: the quality gauges, the feedback's retention).

pub use sightline_store::*;

pub mod background;
pub mod checks;
pub mod http;
pub mod quality;
