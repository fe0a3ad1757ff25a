use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sightline_operator::build::pod::{self, Platform};
use sightline_operator::controller::run;
use sightline_operator::{crdgen, render};

#[derive(Debug, Parser)]
#[command(
    name = "sightline-operator",
    version,
    about = "Sightline's Kubernetes operator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions (YAML).
    Crd {
        /// Write one file per CRD into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Print every child object the operator would create for the given custom
    /// resources, with no cluster (`-` reads standard input).
    Render {
        /// YAML files with ImageModel and RecognitionPipeline objects.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        platform: PlatformArgs,
    },
    /// Run the controllers (in a cluster, or against KUBECONFIG).
    Run {
        /// Address of `/metrics`, `/healthz` and `/readyz`.
        #[arg(long, env = "SIGHTLINE_METRICS_LISTEN", default_value = "0.0.0.0:8081")]
        metrics_listen: std::net::SocketAddr,
        #[command(flatten)]
        platform: PlatformArgs,
        /// Namespace of the leader-election Lease (the operator's own).
        #[arg(long, env = "POD_NAMESPACE", default_value = "sightline-system")]
        lease_namespace: String,
        /// Name of the leader-election Lease.
        #[arg(long, default_value = "sightline-operator")]
        lease_name: String,
        /// This replica's identity in the Lease and in events.
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// Seconds a leader holds the Lease without renewing it.
        #[arg(long, default_value_t = 15)]
        lease_seconds: u64,
        /// Log as JSON lines.
        #[arg(long, env = "SIGHTLINE_LOG_JSON")]
        log_json: bool,
        /// Watch only these namespaces (comma-separated): the operator then needs Roles
        /// in them only (manifests/install/namespaced) and reads no Node, so `device:
        /// auto` serves on the CPU. Empty: every namespace (a ClusterRole).
        #[arg(long, env = "SIGHTLINE_NAMESPACES", value_delimiter = ',')]
        namespaces: Vec<String>,
    },
}

/// The cluster the children are built for (shared by `run` and `render`).
#[derive(Debug, clap::Args)]
struct PlatformArgs {
    /// The sightline-server image the children run.
    #[arg(long, env = "SIGHTLINE_SERVER_IMAGE", default_value = pod::DEFAULT_SERVER_IMAGE)]
    server_image: String,
    /// The GPU server image (ONNX Runtime with CUDA), for models on a GPU.
    #[arg(
        long,
        env = "SIGHTLINE_GPU_SERVER_IMAGE",
        default_value = pod::DEFAULT_GPU_SERVER_IMAGE
    )]
    gpu_server_image: String,
    /// Pull policy of the images (`Always`, `IfNotPresent`, `Never`).
    #[arg(long, env = "SIGHTLINE_IMAGE_PULL_POLICY")]
    image_pull_policy: Option<String>,
    /// Namespace of the Prometheus that scrapes the pods (admitted to port 8080 of the
    /// model and store pods); empty admits none.
    #[arg(
        long,
        env = "SIGHTLINE_METRICS_NAMESPACE",
        default_value = "monitoring"
    )]
    metrics_namespace: String,
    /// A label `key=value` on every ServiceMonitor (repeat for more), so that the cluster's
    /// Prometheus selects it.
    #[arg(
        long = "service-monitor-label",
        env = "SIGHTLINE_SERVICE_MONITOR_LABELS",
        value_delimiter = ',',
        default_value = "release=kube-prometheus-stack"
    )]
    service_monitor_labels: Vec<String>,
    /// Run pods as user 65532; `false` leaves the user to the platform (OpenShift).
    #[arg(long, env = "SIGHTLINE_RUN_AS_USER", default_value_t = true, action = clap::ArgAction::Set)]
    run_as_user: bool,
    /// Where the API server's `pods/proxy` connections come from, admitted to the model
    /// pods by their NetworkPolicy: CIDRs (`172.18.0.0/16`) and/or Konnectivity agent pods
    /// (`kube-system/k8s-app=konnectivity-agent`), comma-separated. Empty: none are
    /// admitted, and on a network plugin that enforces policies the operator cannot read
    /// the pods' own answers (docs/install.md).
    #[arg(long, env = "SIGHTLINE_API_SERVER_SOURCES", value_delimiter = ',')]
    api_server_sources: Vec<String>,
}

impl PlatformArgs {
    fn platform(self) -> anyhow::Result<Platform> {
        let mut monitor_labels = std::collections::BTreeMap::new();
        for label in self.service_monitor_labels.iter().filter(|l| !l.is_empty()) {
            let (key, value) = label
                .split_once('=')
                .with_context(|| format!("--service-monitor-label {label:?} is not key=value"))?;
            monitor_labels.insert(key.trim().to_string(), value.trim().to_string());
        }
        let api_server_sources = self
            .api_server_sources
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                s.parse::<pod::ApiServerSource>()
                    .map_err(|e| anyhow::anyhow!("--api-server-sources: {e}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Platform {
            api_server_sources,
            server: self.server_image,
            gpu_server: self.gpu_server_image,
            pull_policy: self.image_pull_policy,
            scrape_namespace: Some(self.metrics_namespace).filter(|ns| !ns.is_empty()),
            monitor_labels,
            fixed_user: self.run_as_user,
        })
    }
}

fn main() -> anyhow::Result<()> {
    // kube's TLS (rustls) needs a process-wide crypto provider before any client.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            metrics_listen,
            platform,
            lease_namespace,
            lease_name,
            identity,
            lease_seconds,
            log_json,
            namespaces,
        } => {
            init_logging(log_json);
            let identity = identity
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| format!("sightline-operator-{}", std::process::id()));
            let settings = run::Settings {
                platform: platform.platform()?,
                metrics_listen,
                lease_namespace,
                lease_name,
                identity,
                lease_duration: std::time::Duration::from_secs(lease_seconds.max(3)),
                namespaces: namespaces
                    .iter()
                    .map(|ns| ns.trim().to_string())
                    .filter(|ns| !ns.is_empty())
                    .collect(),
            };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(run::run(settings))?;
        }
        Command::Crd { out_dir: None } => print!("{}", crdgen::all_yaml()?),
        Command::Crd { out_dir: Some(dir) } => {
            for (name, yaml) in crdgen::crds()? {
                let path = dir.join(name);
                std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        Command::Render { files, platform } => {
            let platform = platform.platform()?;
            let mut text = String::new();
            for file in &files {
                if file.as_os_str() == "-" {
                    std::io::stdin()
                        .read_to_string(&mut text)
                        .context("reading standard input")?;
                } else {
                    text.push_str(
                        &std::fs::read_to_string(file)
                            .with_context(|| format!("reading {}", file.display()))?,
                    );
                }
                text.push_str("\n---\n");
            }
            let inputs = render::parse(&text)?;
            print!(
                "{}",
                render::to_yaml(&render::children(&inputs, &platform)?)?
            );
        }
    }
    Ok(())
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
