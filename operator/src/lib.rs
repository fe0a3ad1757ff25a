//! The Sightline operator: custom resource types, pure builders of the child objects, and
//! the reconcilers that apply them.

pub mod apply;
pub mod build;
pub mod canary;
pub mod controller;
pub mod crd;
pub mod crdgen;
pub mod exposition;
pub mod leader;
pub mod metrics;
pub mod quality;
pub mod quantity;
pub mod render;
pub mod rollout;
pub mod served;
pub mod status;
pub mod validate;
pub mod verdict;
