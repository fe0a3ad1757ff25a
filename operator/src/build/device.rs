//! Where a model runs: `spec.runtime.device`, and for `auto` the decision — taken once per
//! spec generation from the nodes that offer the GPU resource, and kept in
//! `status.device`.

use crate::crd::{Device, DeviceStatus, ImageModel};

/// Where `model` runs. `gpu_nodes` are the nodes with allocatable units of its GPU
/// resource (`None`: not known, as in `render`).
pub fn resolve_device(model: &ImageModel, gpu_nodes: Option<&[String]>) -> DeviceStatus {
    let r = &model.spec.runtime;
    let resource = r.gpu_resource.as_deref().unwrap_or("nvidia.com/gpu");
    let (requested, resolved, reason) = match (r.device, gpu_nodes) {
        (Device::Cpu, _) => ("cpu", "cpu", "spec.runtime.device is cpu".to_string()),
        (Device::Gpu, _) => ("gpu", "gpu", "spec.runtime.device is gpu".to_string()),
        (Device::Auto, Some(nodes)) if !nodes.is_empty() => (
            "auto",
            "gpu",
            format!(
                "{} node(s) offer {resource}: {}",
                nodes.len(),
                nodes.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
            ),
        ),
        (Device::Auto, Some(_)) => (
            "auto",
            "cpu",
            format!("no node has allocatable {resource}; serving on the CPU"),
        ),
        (Device::Auto, None) => (
            "auto",
            "cpu",
            "no cluster to ask (render): auto is shown as cpu".to_string(),
        ),
    };
    DeviceStatus {
        requested: requested.into(),
        resolved: resolved.into(),
        reason,
        allow_cpu_fallback: r.allow_cpu_fallback,
        generation: model.metadata.generation,
    }
}

/// `device: auto` as decided for the model's current generation, when its status has it:
/// decided once per generation, then kept.
pub fn decided_device(model: &ImageModel) -> Option<DeviceStatus> {
    let decided = model.status.as_ref()?.device.clone()?;
    (model.spec.runtime.device == Device::Auto
        && decided.requested == "auto"
        && decided.generation.is_some()
        && decided.generation == model.metadata.generation)
        .then_some(decided)
}

/// `device: auto` where the operator may not read the nodes (watching only some
/// namespaces): the CPU, saying why.
pub fn device_without_nodes(model: &ImageModel) -> DeviceStatus {
    DeviceStatus {
        reason: "the operator watches only some namespaces and reads no Node (a Role cannot \
                 grant it): auto serves on the CPU; set device: gpu for a GPU"
            .into(),
        ..resolve_device(model, Some(&[]))
    }
}
