use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sightline_operator::build::pod::Images;
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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
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
