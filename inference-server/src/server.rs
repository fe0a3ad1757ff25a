//! Wiring: flags → model setup, state, router; bind, serve, shut down gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::cli::{Role, ServeArgs};
use crate::drain::{Draining, Shutdown};
use crate::eval::startup::StartupEvaluation;
use crate::http::{AppState, HttpSettings, app};
use crate::image_source::ImageSource;
use crate::metrics::Metrics;
use crate::preprocess::DecodeLimits;
use crate::serving::{ModelSetup, ModelSlot, ModelStatus, load_into};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Setup(#[from] crate::serving::SetupError),
    #[error("invalid --upload-url or --fetch-allowlist: {0}")]
    Source(#[from] crate::image_source::SourceError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Upload(#[from] crate::upload::UploadError),
    #[error(
        "--traffic-file needs --recognize-url: the revision that answers while the file is \
         absent"
    )]
    TrafficWithoutRecognize,
    #[error("invalid --traffic-hosts: {0}")]
    TrafficHosts(String),
    #[error("invalid --{flag} {value:?}: {source}")]
    DownstreamUrl {
        flag: &'static str,
        value: String,
        source: crate::pipeline::DownstreamConfigError,
    },
}

/// The model setup the flags describe (see [`crate::model_flags::model_setup`]).
pub fn model_setup(args: &ServeArgs) -> Result<ModelSetup, ServerError> {
    Ok(crate::model_flags::model_setup(args)?)
}

/// State for the recognize role's router, with the model slot still loading.
pub fn state(args: &ServeArgs, model_name: &str) -> Result<AppState, ServerError> {
    state_with_sources(args, model_name, &[])
}

fn state_with_sources(
    args: &ServeArgs,
    model_name: &str,
    own_images: &[String],
) -> Result<AppState, ServerError> {
    let mut allowed: Vec<String> = args.upload_url.iter().cloned().collect();
    allowed.extend(own_images.iter().cloned());
    allowed.extend(
        args.fetch_allowlist
            .iter()
            .filter(|s| !s.is_empty())
            .cloned(),
    );
    let images = ImageSource::new(&allowed, args.max_upload_bytes, Duration::from_secs(10))?;
    Ok(AppState {
        model: ModelSlot::new(ModelStatus::Loading),
        metrics: Metrics::new(model_name),
        images,
        settings: Arc::new(HttpSettings {
            model_name: model_name.to_string(),
            max_body_bytes: args.max_upload_bytes,
            max_in_flight: args.max_in_flight.max(1),
            request_timeout: Duration::from_secs(args.request_timeout_secs.max(1)),
            header_read_timeout: Duration::from_secs(args.header_read_timeout_secs.max(1)),
            public_origin: crate::http::cross_site::PublicOrigin::from_url(
                args.public_url.as_deref(),
            ),
        }),
        in_flight: Default::default(),
        recognizes: true,
        uploads: None,
        results: None,
        downstream: Default::default(),
        auth: Arc::new(crate::auth::Auth::new(
            args.api_keys_file.as_deref(),
            &args.api_keys,
            args.rate_limit_rps,
            args.rate_limit_burst,
        )?),
        evaluations: Default::default(),
    })
}

/// State for `args.role`: the image store, the results database (connected and migrated),
/// the downstream services. `local` is the bound address: in `all`, recognition may fetch
/// this process's own images by URL.
pub async fn role_state(
    args: &ServeArgs,
    model_name: &str,
    local: Option<SocketAddr>,
) -> Result<AppState, ServerError> {
    let role = args.role;
    let mut own_images = Vec::new();
    if role == Role::All {
        if let Some(addr) = local {
            let port = addr.port();
            own_images.push(format!("http://127.0.0.1:{port}/api/v1/images"));
            own_images.push(format!("http://localhost:{port}/api/v1/images"));
            if !addr.ip().is_unspecified() {
                own_images.push(format!("http://{addr}/api/v1/images"));
            }
        }
        if let Some(public) = &args.public_url {
            own_images.push(format!("{}/api/v1/images", public.trim_end_matches('/')));
        }
    }
    let mut state = state_with_sources(args, model_name, &own_images)?;
    // A rotated keys file applies without a restart.
    state.auth.watch();
    if role.recognizes() {
        // Each allowed host name's network, fixed now (no DNS rebinding later).
        state.images.learn().await;
    }
    state.metrics.set_role(role.as_str());
    state.recognizes = role.recognizes();
    if !role.recognizes() {
        state.model = ModelSlot::new(ModelStatus::None);
    }
    if role.uploads() {
        let limits = DecodeLimits {
            max_pixels: args.max_image_pixels,
            ..DecodeLimits::default()
        };
        let store = match args.image_store.as_deref().filter(|s| !s.is_empty()) {
            Some(url) if url.starts_with("s3://") => crate::upload::ImageStore::s3(
                &crate::upload::S3Config {
                    url: url.to_string(),
                    endpoint: args.s3_endpoint.clone(),
                    region: args.s3_region.clone(),
                    access_key_id: args.s3_access_key_id.clone(),
                    secret_access_key: args.s3_secret_access_key.clone(),
                },
                limits,
            )?,
            Some(dir) => crate::upload::ImageStore::open(std::path::Path::new(dir), limits)?,
            None => crate::upload::ImageStore::open(&args.data_dir.join("images"), limits)?,
        };
        store.sweep_temporary();
        state.uploads = Some(crate::upload::http::UploadState {
            store,
            public_url: public_url(args, local),
            metrics: state.metrics.pipeline.clone(),
        });
    }
    if role.stores() {
        let url = match &args.database_url {
            Some(url) => url.clone(),
            None => crate::store::ResultStore::default_url(&args.data_dir)?,
        };
        let store = crate::store::ResultStore::connect(&url)
            .await?
            .with_metrics(state.metrics.store.clone());
        tracing::info!(database = %crate::store::redact(&url), "results database ready");
        crate::store::background::start(&store, &state.metrics.quality, &args.feedback);
        state.results = Some(store);
    }
    if role == Role::Upload {
        let policy = crate::pipeline::CallPolicy {
            timeout: Duration::from_secs(args.downstream_timeout_secs.max(1)),
            retries: args.downstream_retries,
            ..Default::default()
        };
        let downstream = |component: &'static str, flag: &'static str, url: &Option<String>| {
            url.as_deref()
                .filter(|u| !u.is_empty())
                .map(|u| {
                    crate::pipeline::Downstream::new(
                        component,
                        u,
                        policy,
                        state.metrics.pipeline.clone(),
                    )
                    .map(Arc::new)
                    .map_err(|source| ServerError::DownstreamUrl {
                        flag,
                        value: u.to_string(),
                        source,
                    })
                })
                .transpose()
        };
        let traffic_file = args
            .traffic_file
            .clone()
            .filter(|p| !p.as_os_str().is_empty());
        let hosts = if args.traffic_hosts.iter().any(|h| !h.trim().is_empty()) {
            Some(
                crate::pipeline::traffic::hosts::AllowedHosts::parse(&args.traffic_hosts)
                    .map_err(ServerError::TrafficHosts)?,
            )
        } else {
            None
        };
        let recognize = match downstream("recognize", "recognize-url", &args.recognize_url)? {
            Some(fallback) => Some(
                crate::pipeline::traffic::Traffic::start(
                    fallback,
                    traffic_file,
                    state.metrics.front_door.clone(),
                    hosts,
                )
                .await,
            ),
            None if traffic_file.is_some() => return Err(ServerError::TrafficWithoutRecognize),
            None => None,
        };
        state.downstream = crate::pipeline::Downstreams {
            recognize,
            store: downstream("store", "store-url", &args.store_url)?,
        };
    } else if args.traffic_file.is_some() {
        tracing::warn!(
            role = role.as_str(),
            "--traffic-file is read by the upload role (the front door) only; ignored"
        );
    }
    Ok(state)
}

/// The base of the image URLs the upload role hands out: `--public-url`, else the address it
/// listens on (an unspecified one as loopback), never a request's `Host` header — a caller
/// could write anything there, and the URL is stored with every result. Listening on an
/// unspecified address (`0.0.0.0`) without `--public-url` is logged: the URLs then name
/// loopback and work on this machine only.
fn public_url(args: &ServeArgs, local: Option<SocketAddr>) -> Option<String> {
    if let Some(url) = args.public_url.as_deref().filter(|u| !u.is_empty()) {
        return Some(url.trim_end_matches('/').to_string());
    }
    let mut addr = local?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
        tracing::warn!(
            listen = %args.listen,
            "no --public-url: image URLs name {addr}, reachable from this machine only; \
             set --public-url to the address clients use"
        );
    }
    Some(format!("http://{addr}"))
}

/// A bound, not yet serving, server for one role.
pub struct Server {
    pub listener: TcpListener,
    pub state: AppState,
    setup: Option<ModelSetup>,
    /// `--evaluate-on-start` and `--evaluate-sha256` (roles that recognize).
    evaluate_on_start: Option<StartupEvaluation>,
    grace: Duration,
    drain: Duration,
}

impl Server {
    /// Reads the model configuration (for roles that recognize), binds the port, opens the
    /// image store and the database (for roles that keep them); the model loads once
    /// serving.
    pub async fn bind(args: &ServeArgs) -> Result<Server, ServerError> {
        let setup = if args.role.recognizes() {
            Some(model_setup(args)?)
        } else {
            None
        };
        let listener =
            TcpListener::bind(args.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: args.listen,
                    source,
                })?;
        let name = setup.as_ref().map(|s| s.name.clone()).unwrap_or_default();
        let state = role_state(args, &name, listener.local_addr().ok()).await?;
        Ok(Server {
            listener,
            state,
            setup,
            evaluate_on_start: args
                .evaluate_on_start
                .clone()
                .filter(|_| args.role.recognizes())
                .map(|source| StartupEvaluation {
                    source,
                    sha256: args.evaluate_sha256.clone(),
                }),
            grace: Duration::from_secs(args.shutdown_grace_secs),
            drain: Duration::from_secs(args.shutdown_drain_secs),
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Loads the model in the background and serves until `shutdown` resolves — after the
    /// drain period when it resolves to [`Shutdown::Drain`] (see [`crate::drain`]) — then
    /// lets in-flight requests finish (up to the grace period).
    pub async fn serve<S: Into<Shutdown>>(
        self,
        shutdown: impl Future<Output = S> + Send + 'static,
    ) -> Result<(), ServerError> {
        let Server {
            listener,
            state,
            setup,
            evaluate_on_start,
            grace,
            drain,
        } = self;
        if let Some(setup) = setup {
            let slot = state.model.clone();
            let metrics = state.metrics.inference.clone();
            let jobs = state.evaluations.clone();
            let max_bytes = state.settings.max_body_bytes;
            tokio::spawn(async move {
                load_into(slot.clone(), setup, metrics).await;
                let Some(evaluation) = evaluate_on_start else {
                    return;
                };
                // Fetched (for a URI) only now, while the model serves: whatever happens to
                // the dataset, the model is not held back.
                match slot.ready() {
                    Ok(model) => {
                        crate::eval::startup::evaluate_on_start(
                            &jobs,
                            model,
                            &evaluation,
                            max_bytes,
                        )
                        .await;
                    }
                    Err(why) => {
                        tracing::warn!(why, "no start-up evaluation: the model is not ready")
                    }
                }
            });
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let header_read_timeout = state.settings.header_read_timeout;
        let draining = Draining::default();
        let router = app(state).layer(axum::middleware::from_fn_with_state(
            draining.clone(),
            crate::drain::layer,
        ));
        let listener =
            crate::http::slow_clients::HeaderDeadline::new(listener, header_read_timeout);
        let server = axum::serve(listener, router).with_graceful_shutdown(async move {
            if shutdown.await.into() == Shutdown::Drain && !drain.is_zero() {
                tracing::info!(
                    ?drain,
                    "SIGTERM: not ready any more, serving through the drain period"
                );
                draining.begin();
                tokio::time::sleep(drain).await;
            }
            tracing::info!("shutting down: finishing in-flight requests");
            let _ = stop_tx.send(true);
        });
        let mut stop_rx = stop_rx;
        let guard = async move {
            let _ = stop_rx.wait_for(|stopped| *stopped).await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            result = server => result.map_err(ServerError::Serve),
            () = guard => {
                tracing::warn!(?grace, "grace period over; dropping the requests still running");
                Ok(())
            }
        }
    }
}

/// Resolves on SIGTERM (drain first) or Ctrl-C (stop now).
pub async fn shutdown_signal() -> Shutdown {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => Shutdown::Now,
        () = terminate => Shutdown::Drain,
    }
}
