use anyhow::Context;
use sightline_server::cli::{self, Command, LogFormat};
use sightline_server::server::{Server, shutdown_signal};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let cli = match cli::parse(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let (Command::All(args) | Command::Recognize(args)) = cli.command;
    init_logging(args.log_format);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let server = Server::bind(&args).await?;
        if let Some(addr) = server.local_addr() {
            tracing::info!(%addr, model = %server.state.model_name(), "listening; the model is loading (see /readyz)");
        }
        server.serve(shutdown_signal()).await?;
        anyhow::Ok(())
    })
}

fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,ort=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
