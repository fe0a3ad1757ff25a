//! The Sightline operator: custom resource types, pure builders of the child objects, and
//! the reconcilers that apply them.

pub mod build;
pub mod crd;
pub mod crdgen;
pub mod render;
