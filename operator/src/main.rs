use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sightline_operator::build::pod::Images;
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
        /// The sightline-server image.
        #[arg(
            long,
            env = "SIGHTLINE_SERVER_IMAGE",
            default_value = "ghcr.io/sightline/sightline-server:0.1.0"
        )]
        server_image: String,
    },
    /// Run the controllers (in a cluster, or against KUBECONFIG).
    Run {
        /// Address of `/metrics`, `/healthz` and `/readyz`.
        #[arg(long, env = "SIGHTLINE_METRICS_LISTEN", default_value = "0.0.0.0:8081")]
        metrics_listen: std::net::SocketAddr,
        /// The sightline-server image the children run.
        #[arg(
            long,
            env = "SIGHTLINE_SERVER_IMAGE",
            default_value = "ghcr.io/sightline/sightline-server:0.1.0"
        )]
        server_image: String,
        /// Pull policy of that image (`Always`, `IfNotPresent`, `Never`).
        #[arg(long, env = "SIGHTLINE_IMAGE_PULL_POLICY")]
        image_pull_policy: Option<String>,
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
    },
}

fn main() -> anyhow::Result<()> {
    // kube's TLS (rustls) needs a process-wide crypto provider before any client.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            metrics_listen,
            server_image,
            image_pull_policy,
            lease_namespace,
            lease_name,
            identity,
            lease_seconds,
            log_json,
        } => {
            init_logging(log_json);
            let identity = identity
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| format!("sightline-operator-{}", std::process::id()));
            let settings = run::Settings {
                images: Images {
                    server: server_image,
                    pull_policy: image_pull_policy,
                },
                metrics_listen,
                lease_namespace,
                lease_name,
                identity,
                lease_duration: std::time::Duration::from_secs(lease_seconds.max(3)),
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
        Command::Render {
            files,
            server_image,
        } => {
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
            let images = Images {
                server: server_image,
                pull_policy: None,
            };
            print!("{}", render::to_yaml(&render::children(&inputs, &images)?)?);
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
