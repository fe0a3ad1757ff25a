use anyhow::Context;
use sightline_server::cli::{self, Command, LogFormat};
use sightline_server::server::{Server, shutdown_signal};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

fn main() -> anyhow::Result<()> {
    // One TLS crypto provider for every client in the process (database, object store,
    // image fetches), whatever features other crates in a build unify on rustls.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = match cli::parse(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Command::Eval(eval) = cli.command {
        // The table goes to stdout.
        init_command_logging();
        async_runtime(0)?.block_on(sightline_server::eval::run_cli(eval))?;
        return Ok(());
    }
    if let Command::Batch(batch) = cli.command {
        // Results go to --out, the summary to stdout, progress to stderr.
        init_command_logging();
        if let Err(e) = async_runtime(0)?.block_on(sightline_server::batch::run_cli(batch)) {
            eprintln!("Error: {e}");
            // A pod failure policy fails the index on this status instead of retrying.
            let status = if e.is_permanent() {
                sightline_server::batch::EXIT_PERMANENT
            } else {
                1
            };
            std::process::exit(i32::from(status));
        }
        return Ok(());
    }
    let args = match cli.command {
        Command::Fetch(fetch) => {
            init_logging(LogFormat::Text);
            return async_runtime(0)?
                .block_on(sightline_server::fetch::run(fetch))
                .map_err(Into::into);
        }
        other => other.into_serve_args(),
    };
    let Some(args) = args else {
        anyhow::bail!("not a serving subcommand");
    };
    init_logging(args.log_format);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    async_runtime(args.http_runtime_threads(cores))?.block_on(async move {
        let server = Server::bind(&args).await?;
        if let Some(addr) = server.local_addr() {
            tracing::info!(%addr, role = args.role.as_str(), "listening (see /readyz)");
        }
        server.serve(shutdown_signal()).await?;
        anyhow::Ok(())
    })
}

/// The async runtime, with `threads` workers (0: one per core, tokio's default).
fn async_runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if threads > 0 {
        builder.worker_threads(threads);
    }
    builder.build().context("cannot start the async runtime")
}

/// A command's logs (warnings and up unless `RUST_LOG` says otherwise) to stderr, so that
/// its stdout holds only what the command answers.
fn init_command_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Logs to stdout, text or JSON (`--log-format`). `RUST_LOG` filters; with
/// `SIGHTLINE_LOG_SPANS=1` each span (request, preprocess, decode, queue wait, inference,
/// store) also logs one line with its timing when it closes — the inner spans are at `debug`,
/// so `RUST_LOG=info,sightline_server=debug` shows them.
fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,ort=warn"));
    let spans = std::env::var("SIGHTLINE_LOG_SPANS").is_ok_and(|v| v == "1" || v == "true");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(if spans { FmtSpan::CLOSE } else { FmtSpan::NONE });
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
