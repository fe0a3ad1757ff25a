//! `sightline-operator run`: the metrics and probe endpoints, leader election, discovery
//! of the optional APIs (Gateway API, Prometheus Operator), and the two controllers with
//! their watches — cluster-wide, or one pair per namespace of `--namespaces` — until
//! SIGTERM or a lost lease.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use futures::StreamExt;
use gateway_api::apis::standard::httproutes::HttpRoute;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::Store;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::watch;
use tracing::{info, warn};

use super::referrers::referring_to;
use super::{ClusterApis, Context, error_policy, model, pipeline, recognition_job};
use crate::build::meta::{LABEL_MANAGED_BY, MANAGED_BY};
use crate::build::monitoring::ServiceMonitor;
use crate::build::pod::Platform;
use crate::crd::{ImageModel, RecognitionJob, RecognitionPipeline};
use crate::leader::{Leadership, LeaseLock};
use crate::metrics::Metrics;
use crate::status::SystemClock;

/// How the operator runs (from its flags).
#[derive(Debug, Clone)]
pub struct Settings {
    pub platform: Platform,
    pub metrics_listen: SocketAddr,
    pub lease_namespace: String,
    pub lease_name: String,
    /// This replica's name in the Lease and in events (its pod name).
    pub identity: String,
    pub lease_duration: Duration,
    /// Watch only these namespaces (Roles there suffice; no Node is read); empty: all.
    pub namespaces: Vec<String>,
}

/// What the probe and metrics endpoints read.
struct Probe {
    metrics: Arc<Metrics>,
    /// The last call to the Kubernetes API succeeded.
    api_ok: AtomicBool,
    stores: std::sync::Mutex<Option<Vec<Stores>>>,
}

/// The caches of one scope's two controllers.
type Stores = (Store<ImageModel>, Store<RecognitionPipeline>);

async fn metrics_text(State(probe): State<Arc<Probe>>) -> String {
    let live: Option<HashSet<String>> = probe.stores.lock().ok().and_then(|stores| {
        stores.as_ref().map(|scopes| {
            let mut uids = HashSet::new();
            for (models, pipelines) in scopes {
                uids.extend(models.state().into_iter().filter_map(|m| m.uid()));
                uids.extend(pipelines.state().into_iter().filter_map(|p| p.uid()));
            }
            uids
        })
    });
    probe.metrics.encode(live.as_ref())
}

async fn readyz(State(probe): State<Arc<Probe>>) -> (StatusCode, &'static str) {
    if probe.api_ok.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the Kubernetes API is not reachable\n",
        )
    }
}

/// The objects the operator writes carry this label; the child watches select on it so
/// the operator never caches the whole cluster's Deployments.
fn owned_children() -> watcher::Config {
    watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"))
}

/// Whether the API server serves `plural` in `group/version`.
async fn serves(client: &Client, group_version: &str, plural: &str) -> Result<bool, kube::Error> {
    match client.list_api_group_resources(group_version).await {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == plural)),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

async fn discover(client: &Client) -> Result<ClusterApis, kube::Error> {
    Ok(ClusterApis {
        gateway_api: serves(client, "gateway.networking.k8s.io/v1", "httproutes").await?,
        service_monitors: serves(client, "monitoring.coreos.com/v1", "servicemonitors").await?,
    })
}

/// Resolves when `shutdown` turns true.
async fn stopped(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Waits for SIGTERM or Ctrl-C, then tells everyone.
async fn signals(tx: watch::Sender<bool>) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(error) => {
                    warn!(%error, "cannot listen for SIGTERM; Ctrl-C only");
                    let _ = ctrl_c.await;
                    let _ = tx.send(true);
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    info!("shutting down");
    let _ = tx.send(true);
}

/// Sleeps `period` unless shutdown comes first; `false` on shutdown.
async fn pause(period: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    let slept = tokio::select! {
        _ = tokio::time::sleep(period) => true,
        _ = shutdown.wait_for(|stop| *stop) => false,
    };
    slept && !*shutdown.borrow()
}

/// A panic anywhere — a controller, the lease renewal — ends the process (exit code 70)
/// instead of leaving a silent zombie leader whose Lease another replica waits on.
fn exit_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        tracing::error!(%info, "a task panicked; exiting so a healthy replica takes over");
        std::process::exit(70);
    }));
}

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    exit_on_panic();
    let metrics = Arc::new(Metrics::new());
    metrics.preinit(&[
        ImageModel::kind(&()).as_ref(),
        RecognitionPipeline::kind(&()).as_ref(),
        RecognitionJob::kind(&()).as_ref(),
    ]);
    let probe = Arc::new(Probe {
        metrics: metrics.clone(),
        api_ok: AtomicBool::new(false),
        stores: std::sync::Mutex::new(None),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(signals(stop_tx.clone()));

    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(probe.clone());
    let listener = tokio::net::TcpListener::bind(settings.metrics_listen)
        .await
        .with_context(|| format!("binding {}", settings.metrics_listen))?;
    info!(addr = %settings.metrics_listen, "metrics and probes listening");
    let server_stop = stopped(stop_rx.clone());
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(server_stop)
            .await
    });

    let client = Client::try_default()
        .await
        .context("no Kubernetes client configuration (in-cluster or KUBECONFIG)")?;
    let lock = LeaseLock::new(
        client.clone(),
        &settings.lease_namespace,
        &settings.lease_name,
        &settings.identity,
        settings.lease_duration,
    );

    // Stand by until this replica leads.
    let mut shutdown = stop_rx.clone();
    loop {
        match lock.try_acquire(Timestamp::now()).await {
            Ok(true) => break,
            Ok(false) => probe.api_ok.store(true, Ordering::Relaxed),
            Err(error) => {
                probe.api_ok.store(false, Ordering::Relaxed);
                warn!(%error, "cannot reach the leader Lease; retrying");
            }
        }
        if !pause(lock.renew_every(), &mut shutdown).await {
            return finish(server).await;
        }
    }
    probe.api_ok.store(true, Ordering::Relaxed);
    metrics.set_leader(true);
    info!(identity = %settings.identity, "leading");

    let apis = loop {
        match discover(&client).await {
            Ok(apis) => break apis,
            Err(error) => warn!(%error, "API discovery failed; retrying"),
        }
        if !pause(Duration::from_secs(2), &mut shutdown).await {
            return finish(server).await;
        }
    };
    info!(?apis, "optional APIs");

    // Keep the Lease renewed; losing it (another replica holds it, or no renewal within the
    // renew deadline) stops the controllers and the process fails, so the Deployment
    // restarts it as a standby.
    // The reconcilers write only while this replica leads: losing the Lease cancels the
    // reconciles in flight and refuses every later write, before the controllers stop.
    let leadership = Leadership::default();
    let lost = Arc::new(AtomicBool::new(false));
    let renew = {
        let (lost, stop_tx, mut shutdown, probe, lock, leadership) = (
            lost.clone(),
            stop_tx.clone(),
            stop_rx.clone(),
            probe.clone(),
            lock.clone(),
            leadership.clone(),
        );
        async move {
            tokio::select! {
                outcome = crate::leader::keep_leading(&lock) => {
                    warn!(?outcome, "stepping down as leader");
                    leadership.step_down();
                    probe.api_ok.store(false, Ordering::Relaxed);
                    lost.store(true, Ordering::Relaxed);
                    let _ = stop_tx.send(true);
                }
                _ = shutdown.wait_for(|stop| *stop) => {}
            }
        }
    };
    let renew = tokio::spawn(renew);

    let mut context = Context::new(
        client.clone(),
        settings.platform.clone(),
        apis,
        metrics.clone(),
        Arc::new(SystemClock),
        Some(settings.identity.clone()),
    )
    .with_leadership(leadership);
    if !settings.namespaces.is_empty() {
        // A Role cannot grant Nodes: `device: auto` serves on the CPU and says so.
        context = context.without_nodes();
    }
    let ctx = Arc::new(context);

    // One pair of controllers per watched namespace, or one for the whole cluster.
    let scopes: Vec<Option<&str>> = if settings.namespaces.is_empty() {
        vec![None]
    } else {
        settings
            .namespaces
            .iter()
            .map(|ns| Some(ns.as_str()))
            .collect()
    };
    let mut stores = Vec::new();
    let mut controllers = Vec::new();
    for scope in scopes {
        let (pipelines, pipeline_store) =
            pipeline_controller(&client, scope, apis, &ctx, stop_rx.clone());
        let (models, model_store) = model_controller(&client, scope, apis, &ctx, stop_rx.clone());
        stores.push((model_store, pipeline_store));
        controllers.push(pipelines);
        controllers.push(models);
        controllers.push(job_controller(&client, scope, &ctx, stop_rx.clone()));
    }
    if let Ok(mut held) = probe.stores.lock() {
        *held = Some(stores);
    }

    futures::future::join_all(controllers).await;
    metrics.set_leader(false);
    renew.abort();
    if let Err(error) = lock.release().await {
        warn!(%error, "could not release the leader Lease");
    }
    if lost.load(Ordering::Relaxed) {
        let _ = finish(server).await;
        anyhow::bail!("lost the leader Lease");
    }
    finish(server).await
}

/// `K` in `scope` (one namespace), or in every namespace.
fn api<K>(client: &Client, scope: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match scope {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

type Running = futures::future::BoxFuture<'static, ()>;

/// Runs a controller's stream to its end, logging what it reports as failed.
fn logged<S, T, E>(stream: S, what: &'static str) -> Running
where
    S: futures::Stream<Item = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    Box::pin(stream.for_each(move |result| async move {
        if let Err(error) = result {
            warn!(%error, "{what}");
        }
    }))
}

/// The pipeline controller of `scope`, with its watches, and its cache.
fn pipeline_controller(
    client: &Client,
    scope: Option<&str>,
    apis: ClusterApis,
    ctx: &Arc<Context>,
    stop: watch::Receiver<bool>,
) -> (Running, Store<RecognitionPipeline>) {
    let controller = Controller::new(
        api::<RecognitionPipeline>(client, scope),
        watcher::Config::default(),
    );
    let store = controller.store();
    let mut controller = controller
        .owns(api::<ConfigMap>(client, scope), owned_children())
        .owns(
            api::<PersistentVolumeClaim>(client, scope),
            owned_children(),
        )
        .owns(api::<Service>(client, scope), owned_children())
        .owns(api::<Deployment>(client, scope), owned_children())
        .owns(api::<NetworkPolicy>(client, scope), owned_children())
        .owns(api::<Ingress>(client, scope), owned_children());
    if apis.gateway_api {
        controller = controller.owns(api::<HttpRoute>(client, scope), owned_children());
    }
    if apis.service_monitors {
        controller = controller.owns(api::<ServiceMonitor>(client, scope), owned_children());
    }
    let users = store.clone();
    let running = controller
        .watches(
            api::<ImageModel>(client, scope),
            watcher::Config::default(),
            move |m: ImageModel| {
                referring_to(&users, &m, |p: &RecognitionPipeline| {
                    Some(p.spec.model_ref.name.as_str())
                })
            },
        )
        .graceful_shutdown_on(stopped(stop))
        .run(pipeline::reconcile, error_policy, ctx.clone());
    (logged(running, "pipeline controller"), store)
}

/// The model controller of `scope`, with its watches, and its cache.
fn model_controller(
    client: &Client,
    scope: Option<&str>,
    apis: ClusterApis,
    ctx: &Arc<Context>,
    stop: watch::Receiver<bool>,
) -> (Running, Store<ImageModel>) {
    let controller = Controller::new(api::<ImageModel>(client, scope), watcher::Config::default());
    let store = controller.store();
    let mut controller = controller
        .owns(api::<Service>(client, scope), owned_children())
        .owns(api::<Deployment>(client, scope), owned_children())
        .owns(
            api::<HorizontalPodAutoscaler>(client, scope),
            owned_children(),
        )
        .owns(api::<PodDisruptionBudget>(client, scope), owned_children())
        .owns(api::<NetworkPolicy>(client, scope), owned_children())
        .owns(api::<ConfigMap>(client, scope), owned_children());
    if apis.service_monitors {
        controller = controller.owns(api::<ServiceMonitor>(client, scope), owned_children());
    }
    let running = controller.graceful_shutdown_on(stopped(stop)).run(
        model::reconcile,
        error_policy,
        ctx.clone(),
    );
    (logged(running, "model controller"), store)
}

/// The RecognitionJob controller of `scope`: its Jobs (their status moves it), the
/// ImageModels the jobs name and the RecognitionPipelines they write into (one created or
/// changed starts a job waiting for it at once; a job waiting for a key's Secret looks
/// again every 30 s).
fn job_controller(
    client: &Client,
    scope: Option<&str>,
    ctx: &Arc<Context>,
    stop: watch::Receiver<bool>,
) -> Running {
    let controller = Controller::new(
        api::<RecognitionJob>(client, scope),
        watcher::Config::default(),
    );
    let (users, writers) = (controller.store(), controller.store());
    let running = controller
        .owns(
            api::<k8s_openapi::api::batch::v1::Job>(client, scope),
            owned_children(),
        )
        .watches(
            api::<ImageModel>(client, scope),
            watcher::Config::default(),
            move |m: ImageModel| {
                referring_to(&users, &m, |j: &RecognitionJob| {
                    Some(j.spec.model_ref.name.as_str())
                })
            },
        )
        .watches(
            api::<RecognitionPipeline>(client, scope),
            watcher::Config::default(),
            move |p: RecognitionPipeline| {
                referring_to(&writers, &p, |j: &RecognitionJob| {
                    j.spec.output.pipeline.as_ref().map(|o| o.name.as_str())
                })
            },
        )
        .graceful_shutdown_on(stopped(stop))
        .run(recognition_job::reconcile, error_policy, ctx.clone());
    logged(running, "recognition job controller")
}

async fn finish(server: tokio::task::JoinHandle<std::io::Result<()>>) -> anyhow::Result<()> {
    server
        .await
        .context("the metrics server task")?
        .context("the metrics server")
}

/// Every API the controllers watch (list + watch), as `(group, plural)`; the RBAC test
/// checks the ClusterRole against it.
pub fn watched() -> Vec<(String, String)> {
    fn of<K: Resource<DynamicType = ()>>() -> (String, String) {
        (K::group(&()).into_owned(), K::plural(&()).into_owned())
    }
    let mut all = vec![
        of::<ImageModel>(),
        of::<RecognitionPipeline>(),
        of::<RecognitionJob>(),
        of::<k8s_openapi::api::batch::v1::Job>(),
        of::<ConfigMap>(),
        of::<PersistentVolumeClaim>(),
        of::<Service>(),
        of::<Deployment>(),
        of::<NetworkPolicy>(),
        of::<Ingress>(),
        of::<HttpRoute>(),
        of::<ServiceMonitor>(),
        of::<HorizontalPodAutoscaler>(),
        of::<PodDisruptionBudget>(),
    ];
    all.sort();
    all.dedup();
    all
}
