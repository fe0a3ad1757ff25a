//! Writing a model's traffic file with its generation, and removing a candidate only once
//! every front door applies the traffic that no longer sends it anything
//! (docs/rollouts.md, "Front doors confirm the traffic generation").

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::ResourceExt;
use kube::runtime::events::EventType;

use super::super::{Context, Error};
use crate::apply::ApplyError;
use crate::build::canary::{self as build, Traffic, TrafficFor};
use crate::build::model as model_build;
use crate::crd::{ImageModel, RolloutStatus};

/// How long after the stable-only traffic was written the candidate is removed even if a
/// front door has not reported applying it: a kubelet projects a ConfigMap change within
/// its sync period (1 minute by default) plus its cache's time to live (1 minute by
/// default); a front door still sending the candidate a request after that gets a
/// refused connection and answers from stable.
pub const REMOVAL_LIMIT_SECONDS: u64 = 300;

/// The routing in the live traffic ConfigMap, when there is one.
async fn live_traffic(ctx: &Context, ns: &str, m: &ImageModel) -> Result<Option<Traffic>, Error> {
    let live = crate::controller::observe::named::<ConfigMap>(
        &ctx.client,
        ns,
        &build::traffic_name(m),
        "ConfigMap",
    )
    .await?;
    Ok(live.as_ref().and_then(build::traffic_of))
}

/// The generation `traffic` has when written over `live`: the same when it routes the
/// same, the next one otherwise (1 for the first file).
pub fn generation_over(live: Option<&Traffic>, traffic: &Traffic) -> u64 {
    match live {
        Some(live) if live.routes_as(traffic) => live.generation,
        Some(live) => live.generation.saturating_add(1),
        None => 1,
    }
}

/// Writes `traffic` into the model's ConfigMap under its generation; the generation.
pub async fn publish(
    ctx: &Context,
    ns: &str,
    m: &ImageModel,
    traffic: &Traffic,
) -> Result<u64, Error> {
    let live = live_traffic(ctx, ns, m).await?;
    let generation = generation_over(live.as_ref(), traffic);
    let file = Traffic {
        generation,
        ..traffic.clone()
    };
    ctx.apply(&build::traffic_config(m, &file), &mut Vec::new())
        .await?;
    Ok(generation)
}

/// The canary ended (promoted, rolled back or superseded): everything to the stable
/// revision, and the candidate to be removed once the front doors apply that.
pub async fn hand_back(
    ctx: &Context,
    ns: &str,
    m: &ImageModel,
    status: &mut RolloutStatus,
) -> Result<(), Error> {
    status.candidate_weight = 0;
    status.mirror_percent = 0;
    status.baseline = None;
    status.step_started_at = None;
    status.pending_generation = Some(publish(ctx, ns, m, &Traffic::stable_only(m)).await?);
    status.step_entered_at = Some(ctx.clock.now().to_string());
    Ok(())
}

/// Removes the candidate once every front door applies the generation `status` waits for
/// (or [`REMOVAL_LIMIT_SECONDS`] after it was written). Whether nothing is left to wait
/// for.
pub async fn retire(
    ctx: &Context,
    ns: &str,
    m: &ImageModel,
    uid: &str,
    status: &mut RolloutStatus,
) -> Result<bool, Error> {
    let Some(generation) = status.pending_generation else {
        return Ok(true);
    };
    let doors = super::read::front_doors(ctx, ns, m).await?;
    let lagging = super::read::lagging(ctx, ns, m, &doors, generation).await;
    let waited = super::clock::seconds_since(ctx, status.step_entered_at.as_deref());
    if !lagging.is_empty() && waited < REMOVAL_LIMIT_SECONDS {
        return Ok(false);
    }
    if !lagging.is_empty() {
        let note = format!(
            "removing the candidate though front doors have not reported applying traffic \
             generation {generation} within {REMOVAL_LIMIT_SECONDS}s: {}",
            lagging.join(", ")
        );
        ctx.event(m, EventType::Warning, "TrafficNotConfirmed", note)
            .await;
    }
    remove_candidate(ctx, ns, m, uid).await?;
    status.pending_generation = None;
    Ok(true)
}

/// Deletes the candidate's Deployment, Service and NetworkPolicy (when they exist).
pub async fn remove_candidate(
    ctx: &Context,
    ns: &str,
    m: &ImageModel,
    uid: &str,
) -> Result<(), ApplyError> {
    let mut changes = Vec::new();
    let keep = [model_build::name(m)];
    let name = m.name_any();
    ctx.prune::<Deployment>(ns, &name, uid, &keep, &mut changes)
        .await?;
    ctx.prune::<Service>(ns, &name, uid, &keep, &mut changes)
        .await?;
    ctx.prune::<NetworkPolicy>(ns, &name, uid, &keep, &mut changes)
        .await?;
    if !changes.is_empty() {
        ctx.event(m, EventType::Normal, "Applied", changes.join(", "))
            .await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(weight: u32, generation: u64) -> Traffic {
        Traffic {
            model: "m".into(),
            stable: "http://s".into(),
            candidate: Some("http://c".into()),
            candidate_weight: weight.into(),
            mirror_percent: 0.into(),
            revision: Some("r".into()),
            generation,
        }
    }

    #[test]
    fn a_generation_moves_only_with_the_routing() {
        assert_eq!(generation_over(None, &file(10, 0)), 1);
        assert_eq!(generation_over(Some(&file(10, 4)), &file(10, 0)), 4);
        assert_eq!(generation_over(Some(&file(10, 4)), &file(50, 0)), 5);
        assert_eq!(
            generation_over(Some(&file(10, u64::MAX)), &file(50, 0)),
            u64::MAX
        );
    }
}
