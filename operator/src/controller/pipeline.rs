//! Reconciling a `RecognitionPipeline`: validate → the referenced `ImageModel` (missing:
//! `Ready=False`, reason `ModelNotFound`; the model watch brings the pipeline back when it
//! appears; the pipeline needs it available, not mid-rollout-free) → build → apply the ConfigMap, PVCs, store and upload Deployments and
//! Services, the HTTPRoute or Ingress, NetworkPolicies and the ServiceMonitor (pruning the
//! optional ones no longer wanted) → status per component.

use std::sync::Arc;
use std::time::Duration;

use gateway_api::apis::standard::httproutes::HttpRoute;
use k8s_openapi::api::networking::v1::Ingress;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use k8s_openapi::api::apps::v1::Deployment;

use super::{Context, Error, RESYNC, instrumented, observe};
use crate::apply::ApplyError;
use crate::build::monitoring::{self, ServiceMonitor};
use crate::build::{meta, pipeline};
use crate::crd::{ImageModel, RecognitionPipeline, RecognitionPipelineStatus};
use crate::status::{Cond, kstatus, merge, ready_from, reasons, types};
use crate::validate;
use crate::verdict::{missing_secrets, verdict};

const PENDING: Duration = Duration::from_secs(15);

pub async fn reconcile(p: Arc<RecognitionPipeline>, ctx: Arc<Context>) -> Result<Action, Error> {
    // Boxed: the reconcile future is large, and lives on the heap, not the task stack.
    instrumented(p.as_ref(), &ctx, Box::pin(reconcile_pipeline(&p, &ctx))).await
}

async fn reconcile_pipeline(p: &RecognitionPipeline, ctx: &Context) -> Result<Action, Error> {
    let ns = p
        .namespace()
        .ok_or_else(|| Error::Incomplete(p.name_any()))?;
    let uid = p.uid().ok_or_else(|| Error::Incomplete(p.name_any()))?;
    let name = p.name_any();
    if let Err(invalid) = validate::pipeline(p) {
        let cond = Cond::no(types::READY, reasons::INVALID_SPEC, invalid.to_string());
        write_status(p, ctx, vec![cond]).await?;
        return Err(invalid.into());
    }

    let model_name = &p.spec.model_ref.name;
    let model =
        super::observe::named::<ImageModel>(&ctx.client, &ns, model_name, "ImageModel").await?;
    let Some(model) = model else {
        let missing = Cond::no(
            types::MODEL_AVAILABLE,
            reasons::MODEL_NOT_FOUND,
            format!("ImageModel {model_name:?} does not exist in namespace {ns:?}"),
        );
        write_status(
            p,
            ctx,
            vec![ready_from(std::slice::from_ref(&missing)), missing],
        )
        .await?;
        // The ImageModel watch brings this pipeline back as soon as the model appears.
        return Ok(Action::requeue(RESYNC));
    };

    let (secrets, missing) = observe::secrets_digest(
        &ctx.client,
        &ns,
        &pipeline::rolling_secrets(p),
        &pipeline::secret_names(p),
    )
    .await?;
    let c = pipeline::children(p, &model, &ctx.platform, &secrets);
    let applied = match apply_children(p, ctx, &ns, &uid, &c).await {
        Ok(applied) => applied,
        Err(error) => {
            let cond = |type_| Cond::no(type_, error.reason(), error.to_string());
            write_status(p, ctx, vec![cond(types::READY), cond(types::PROGRESSING)]).await?;
            return Err(error.into());
        }
    };

    let model_available = model_available_condition(&model);
    let missing = missing_secrets(&missing);
    let upload_rollout = observe::rollout(
        &ctx.client,
        &ns,
        &applied.upload,
        &meta::selector_labels(&name, pipeline::UPLOAD),
    )
    .await?;
    let store_rollout = observe::rollout(
        &ctx.client,
        &ns,
        &applied.store,
        &meta::selector_labels(&name, pipeline::STORE),
    )
    .await?;
    let upload = verdict(
        types::UPLOAD_READY,
        reasons::AVAILABLE,
        &upload_rollout,
        missing.clone(),
    );
    let store = verdict(
        types::STORE_READY,
        reasons::AVAILABLE,
        &store_rollout,
        missing,
    );
    let progressing = [&upload, &store]
        .into_iter()
        .map(|v| v.progressing.clone())
        .find(|c| !c.status || c.reason != reasons::ROLLED_OUT)
        .unwrap_or_else(|| upload.progressing.clone());
    let failed = upload.failed || store.failed;
    let mut components = vec![model_available, upload.ready, store.ready];
    components.extend(applied.route);
    let ready = ready_from(&components);
    let is_ready = ready.status;
    let previous = p.status.clone().unwrap_or_default();
    super::warn_on_new_failure(p, ctx, &previous.conditions, &ready, failed).await;
    let mut wanted = vec![ready, progressing];
    wanted.extend(components);
    write_status(p, ctx, wanted).await?;
    let key = super::key(p);
    Ok(Action::requeue(if failed {
        ctx.stalled(&key)
    } else {
        ctx.unstalled(&key);
        if is_ready { RESYNC } else { PENDING }
    }))
}

/// What applying the children left to observe.
struct Applied {
    upload: Deployment,
    store: Deployment,
    route: Option<Cond>,
}

/// Applies the children in dependency order, pruning the optional ones no longer wanted.
async fn apply_children(
    p: &RecognitionPipeline,
    ctx: &Context,
    ns: &str,
    uid: &str,
    c: &pipeline::PipelineChildren,
) -> Result<Applied, ApplyError> {
    let name = p.name_any();
    let mut changes = Vec::new();
    let mut kinds = vec![
        "ConfigMap",
        "Service",
        "Service",
        "Deployment",
        "Deployment",
    ];
    ctx.apply(&c.config_map, &mut changes).await?;
    for claim in &c.claims {
        ctx.apply(claim, &mut changes).await?;
        kinds.push("PersistentVolumeClaim");
    }
    ctx.apply(&c.store_service, &mut changes).await?;
    let store = ctx.apply(&c.store_deployment, &mut changes).await?;
    ctx.apply(&c.upload_service, &mut changes).await?;
    let upload = ctx.apply(&c.upload_deployment, &mut changes).await?;
    for policy in &c.network_policies {
        ctx.apply(policy, &mut changes).await?;
        kinds.push("NetworkPolicy");
    }

    let route = match (&c.http_route, ctx.gateway_api) {
        (None, _) => {
            if ctx.gateway_api {
                ctx.prune::<HttpRoute>(ns, &name, uid, &[], &mut changes)
                    .await?;
            }
            None
        }
        (Some(_), false) => Some(Cond::no(
            types::ROUTE_ACCEPTED,
            reasons::GATEWAY_API_MISSING,
            "the cluster does not serve gateway.networking.k8s.io/v1 HTTPRoute",
        )),
        (Some(route), true) => {
            let live = ctx.apply(route, &mut changes).await?;
            kinds.push("HTTPRoute");
            Some(route_condition(&live))
        }
    };
    match &c.ingress {
        Some(ingress) => {
            ctx.apply(ingress, &mut changes).await?;
            kinds.push("Ingress");
        }
        None => {
            ctx.prune::<Ingress>(ns, &name, uid, &[], &mut changes)
                .await?
        }
    }
    if ctx.service_monitors {
        ctx.apply(&c.monitor, &mut changes).await?;
        kinds.push("ServiceMonitor");
        // Monitors of older versions (named after the pipeline alone) would scrape twice.
        let keep = [monitoring::pipeline_monitor_name(p)];
        ctx.prune::<ServiceMonitor>(ns, &name, uid, &keep, &mut changes)
            .await?;
    }
    ctx.metrics.owns(uid, "RecognitionPipeline", &kinds);
    if !changes.is_empty() {
        ctx.event(p, EventType::Normal, "Applied", changes.join(", "))
            .await;
    }
    Ok(Applied {
        upload,
        store,
        route,
    })
}

/// `ModelAvailable`: some revision of the model serves (its own `Available`), which is
/// what the pipeline's front door needs. A rollout or canary of the model — its `Ready`
/// false while the stable revision serves — is quoted in the message, never a reason for
/// the pipeline to stop being ready.
pub fn model_available_condition(model: &ImageModel) -> Cond {
    let name = model.name_any();
    let status = model.status.clone().unwrap_or_default();
    let find = |t: &str| status.conditions.iter().find(|c| c.type_ == t);
    let rollout = match find(types::READY) {
        Some(r) if r.status != "True" => format!(" (its rollout: {}: {})", r.reason, r.message),
        _ => String::new(),
    };
    match find(types::AVAILABLE) {
        Some(a) if a.status == "True" => Cond::yes(
            types::MODEL_AVAILABLE,
            reasons::MODEL_AVAILABLE,
            format!("ImageModel {name:?} serves: {}{rollout}", a.message),
        ),
        Some(a) => Cond::no(
            types::MODEL_AVAILABLE,
            reasons::MODEL_UNAVAILABLE,
            format!(
                "no revision of ImageModel {name:?} serves: {}{rollout}",
                a.message
            ),
        ),
        None => Cond::no(
            types::MODEL_AVAILABLE,
            reasons::MODEL_UNAVAILABLE,
            format!("ImageModel {name:?} has reported no availability yet{rollout}"),
        ),
    }
}

/// `RouteAccepted` from the HTTPRoute's status: every parent Gateway accepted it.
pub fn route_condition(route: &HttpRoute) -> Cond {
    let parents = route
        .status
        .as_ref()
        .map(|s| s.parents.as_slice())
        .unwrap_or_default();
    let accepted = |parent: &&gateway_api::apis::standard::httproutes::HttpRouteStatusParents| {
        parent
            .conditions
            .iter()
            .any(|c| c.type_ == "Accepted" && c.status == "True")
    };
    if parents.is_empty() {
        Cond::no(
            types::ROUTE_ACCEPTED,
            reasons::PENDING,
            "no Gateway has answered for the HTTPRoute yet",
        )
    } else if parents.iter().all(|p| accepted(&p)) {
        Cond::yes(
            types::ROUTE_ACCEPTED,
            reasons::ACCEPTED,
            "every parent Gateway accepted the HTTPRoute",
        )
    } else {
        Cond::no(
            types::ROUTE_ACCEPTED,
            reasons::NOT_ACCEPTED,
            "a parent Gateway did not accept the HTTPRoute",
        )
    }
}

async fn write_status(
    p: &RecognitionPipeline,
    ctx: &Context,
    wanted: Vec<Cond>,
) -> Result<(), Error> {
    let previous = p.status.clone().unwrap_or_default();
    let generation = p.meta().generation;
    let mut wanted = wanted;
    wanted.extend(kstatus(&wanted));
    let status = RecognitionPipelineStatus {
        observed_generation: generation,
        conditions: merge(
            &previous.conditions,
            &wanted,
            generation,
            ctx.clock.as_ref(),
        ),
        url: Some(pipeline::public_url(p)),
        retained_volumes: pipeline::retained_claims(p),
    };
    if p.status.as_ref() != Some(&status) {
        ctx.patch_status(p, &status).await?;
    }
    Ok(())
}
