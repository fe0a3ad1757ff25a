//! The store role: the results database ([`sightline_store`], re-exported here) and its
//! routes ([`http`], and users' feedback and the live quality in [`quality`]).

pub use sightline_store::*;

pub mod http;
pub mod quality;
