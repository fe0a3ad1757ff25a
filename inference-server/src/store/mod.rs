//! The store role: the results database ([`sightline_store`], re-exported here) and its
//! routes ([`http`]).

pub use sightline_store::*;

pub mod http;
