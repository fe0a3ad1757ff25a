//! Command line: roles, flags, `SIGHTLINE_*` environment variables and the config file.
//!
//! Precedence: a flag on the command line, then its `SIGHTLINE_*` environment variable,
//! then the config file (`--config`, TOML, keys are the flag names), then the default.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::engine::Device;
use crate::model_config::{Channels, Layout, ResizePolicy, parse_triple};

#[derive(Debug, Parser)]
#[command(
    name = "sightline-server",
    version,
    about = "Sightline image recognition services",
    long_about = "Sightline image recognition services. Every flag can also be set with a \
                  SIGHTLINE_<FLAG> environment variable (e.g. SIGHTLINE_LISTEN) or in the \
                  TOML file given by --config (keys are the flag names); flags win over the \
                  environment, which wins over the file."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Everything in one process, for one machine: upload, recognition (with the pretrained
    /// model) and result storage, plus the one-call pipeline, with local defaults (images
    /// and SQLite under --data-dir). Listens on 127.0.0.1:8080.
    All(ServeArgs),
    /// The recognition service: ONNX Runtime inference with dynamic batching, the seed's
    /// recognition endpoint, /api/v1/recognize and the Open Inference Protocol (v2).
    Recognize(ServeArgs),
    /// The upload service: checks images and stores them content-addressed; with
    /// --recognize-url and --store-url it also runs the pipeline across the services and is
    /// their front door: it checks keys and forwards recognition, /v2 and the results
    /// routes to them.
    Upload(ServeArgs),
    /// The storage service: recognition results in SQLite, PostgreSQL or MySQL.
    Store(ServeArgs),
    /// Evaluates a model on a labelled image set (one folder per class, or a CSV of
    /// path,label): top-1 and top-5 accuracy, per-class precision, recall and F1, macro and
    /// weighted averages, the confusion matrix; optionally against a baseline model. Takes
    /// the same model flags as `recognize` and runs through the same engine and batcher.
    Eval(EvalArgs),
    /// Downloads a model or labels file from `https://` or `s3://` into a file, verifying its
    /// SHA-256 first (the operator's init container). Writes atomically: the file appears
    /// only once complete and verified.
    Fetch(crate::fetch::FetchArgs),
}

/// `sightline-server eval`.
#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// The labelled set: a directory with one sub-directory per class (named by a label or
    /// a class index), or a CSV file of `path,label` rows (paths relative to the file).
    #[arg(long, env = "SIGHTLINE_EVAL_DATASET")]
    pub dataset: PathBuf,

    /// Also write the report as JSON to this file (`accuracy`, `top5_accuracy`, `macro`,
    /// `weighted`, `per_class`, `confusion`, …).
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Another ONNX model (same labels) to compare with on the same set: side-by-side
    /// figures and the images whose top-1 changed. Its sidecar is `<baseline>.json`.
    #[arg(long)]
    pub baseline: Option<PathBuf>,

    /// No progress bar (it is only drawn when stderr is a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,

    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Which services one process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    All,
    #[default]
    Recognize,
    Upload,
    Store,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Recognize => "recognize",
            Role::Upload => "upload",
            Role::Store => "store",
        }
    }

    /// Serves a model (and so needs one).
    pub fn recognizes(self) -> bool {
        matches!(self, Role::All | Role::Recognize)
    }

    /// Keeps images.
    pub fn uploads(self) -> bool {
        matches!(self, Role::All | Role::Upload)
    }

    /// Keeps results in a database.
    pub fn stores(self) -> bool {
        matches!(self, Role::All | Role::Store)
    }
}

impl Command {
    /// The flags, with [`ServeArgs::role`] set from the subcommand; `None` for `fetch`,
    /// which serves nothing.
    pub fn into_serve_args(self) -> Option<ServeArgs> {
        let (role, mut args) = match self {
            Command::All(a) => (Role::All, a),
            Command::Recognize(a) => (Role::Recognize, a),
            Command::Upload(a) => (Role::Upload, a),
            Command::Store(a) => (Role::Store, a),
            // Evaluation loads its model with the recognize role's flags.
            Command::Eval(a) => (Role::Recognize, a.serve),
            Command::Fetch(_) => return None,
        };
        args.role = role;
        Some(args)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
#[command(args_override_self = true)]
pub struct ServeArgs {
    /// The role these flags are for (set from the subcommand by
    /// [`Command::into_serve_args`]).
    #[arg(skip)]
    pub role: Role,

    /// TOML file with defaults for any of these flags (keys are flag names, e.g.
    /// `listen = "0.0.0.0:8080"`, `max-batch-size = 16`).
    #[arg(long, env = "SIGHTLINE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address and port to listen on.
    #[arg(long, env = "SIGHTLINE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub model: ModelArgs,

    /// Directory for local state (image store, SQLite database).
    #[arg(long, env = "SIGHTLINE_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// Results database URL (sqlite://, postgres://, mysql://); SQLite in --data-dir by
    /// default.
    #[arg(long, env = "SIGHTLINE_DATABASE_URL")]
    pub database_url: Option<String>,

    /// Recognize role called directly: base URL of the upload service whose images
    /// recognition may fetch by URL (for example http://upload:8080/api/v1/images). Nothing
    /// else is fetched unless listed in --fetch-allowlist. Not needed behind the upload
    /// role's front door, which sends the image bytes.
    #[arg(long, env = "SIGHTLINE_UPLOAD_URL")]
    pub upload_url: Option<String>,

    /// Upload role: the recognize service the pipeline calls and the front door forwards
    /// recognition and /v2 to (for example http://recognize:8080).
    #[arg(long, env = "SIGHTLINE_RECOGNIZE_URL")]
    pub recognize_url: Option<String>,

    /// Upload role: the store service the pipeline saves results to and the front door
    /// forwards the results routes to (for example http://store:8080).
    #[arg(long, env = "SIGHTLINE_STORE_URL")]
    pub store_url: Option<String>,

    /// Upload role: a canary's traffic file (JSON, written by the operator: `model`,
    /// `stable`, `candidate`, `candidateWeight` and `mirrorPercent` in percent, `revision`).
    /// Recognitions go to the candidate for `candidateWeight` percent of requests, and
    /// `mirrorPercent` percent of the others are also sent to it and its top-1 compared. Re-read
    /// when it changes, by path, every second; while it is absent everything goes to
    /// --recognize-url, and a malformed one keeps the last good one.
    #[arg(long, env = "SIGHTLINE_TRAFFIC_FILE")]
    pub traffic_file: Option<PathBuf>,

    /// Upload role: the hosts the traffic file may name, comma-separated, each exact or
    /// `*.domain` [default: the namespace of --recognize-url when it is a cluster Service
    /// name (`*.<namespace>.svc`), else --recognize-url's host]. A file naming another host
    /// is refused (the last good one stays).
    #[arg(long, env = "SIGHTLINE_TRAFFIC_HOSTS", value_delimiter = ',')]
    pub traffic_hosts: Vec<String>,

    /// Upload role: the base of the image URLs it hands out and stores with results (for
    /// example https://sightline.example.com) [default: http://<the address it listens on>,
    /// loopback for 0.0.0.0; never a request's Host header].
    #[arg(long, env = "SIGHTLINE_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Where the upload role keeps images: a directory, or an S3-compatible bucket
    /// `s3://bucket[/prefix]` [default: <data-dir>/images].
    #[arg(long, env = "SIGHTLINE_IMAGE_STORE")]
    pub image_store: Option<String>,

    /// S3-compatible endpoint for an s3:// image store (MinIO, Ceph, …) [default: AWS, or
    /// AWS_ENDPOINT].
    #[arg(long, env = "SIGHTLINE_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// Region of the s3:// image store [default: AWS_REGION, else us-east-1].
    #[arg(long, env = "SIGHTLINE_S3_REGION")]
    pub s3_region: Option<String>,

    /// Access key id for the s3:// image store [default: AWS_ACCESS_KEY_ID].
    #[arg(long, env = "SIGHTLINE_S3_ACCESS_KEY_ID", hide_env_values = true)]
    pub s3_access_key_id: Option<String>,

    /// Secret access key for the s3:// image store [default: AWS_SECRET_ACCESS_KEY]. Prefer
    /// the environment variable to the flag.
    #[arg(long, env = "SIGHTLINE_S3_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<String>,

    /// Seconds a call to another service may take, retries included.
    #[arg(long, env = "SIGHTLINE_DOWNSTREAM_TIMEOUT_SECS", default_value_t = 10)]
    pub downstream_timeout_secs: u64,

    /// Retries of a failed call to another service (with exponential backoff and jitter).
    #[arg(long, env = "SIGHTLINE_DOWNSTREAM_RETRIES", default_value_t = 3)]
    pub downstream_retries: u32,

    /// File of API keys, one a line (`key` or `name:key`, at least 8 characters; `#`
    /// comments). When any key is configured, every API call needs one (health, metrics and
    /// image downloads stay open). Re-read when it changes, by path, every second; a
    /// malformed or empty new file keeps the last good keys.
    #[arg(long, env = "SIGHTLINE_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// API keys, comma-separated (`key` or `name:key`, at least 8 characters), in addition
    /// to --api-keys-file.
    #[arg(
        long,
        env = "SIGHTLINE_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,

    /// Requests a second per API key (one shared bucket without keys); 0 = no limit.
    #[arg(long, env = "SIGHTLINE_RATE_LIMIT_RPS", default_value_t = 0.0)]
    pub rate_limit_rps: f64,

    /// Largest burst per API key [default: the rate, at least 1].
    #[arg(long, env = "SIGHTLINE_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<u32>,

    /// More URL prefixes recognition may fetch images from, comma-separated.
    #[arg(long, env = "SIGHTLINE_FETCH_ALLOWLIST", value_delimiter = ',')]
    pub fetch_allowlist: Vec<String>,

    /// Largest request body (an image or an inference request) in bytes.
    #[arg(long, env = "SIGHTLINE_MAX_UPLOAD_BYTES", default_value_t = 20 * 1024 * 1024)]
    pub max_upload_bytes: usize,

    /// Largest decoded image, in pixels (width × height); bigger images are refused from
    /// their header, before decoding.
    #[arg(long, env = "SIGHTLINE_MAX_IMAGE_PIXELS", default_value_t = 40_000_000)]
    pub max_image_pixels: u64,

    /// Requests handled at once; more get 503 with Retry-After at once.
    #[arg(long, env = "SIGHTLINE_MAX_IN_FLIGHT", default_value_t = 256)]
    pub max_in_flight: usize,

    /// Seconds a request may take before it is answered 503.
    #[arg(long, env = "SIGHTLINE_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,

    /// Seconds a client may take to send a request's headers (and an idle keep-alive
    /// connection may stay open); slower connections are closed (slowloris).
    #[arg(long, env = "SIGHTLINE_HEADER_READ_TIMEOUT_SECS", default_value_t = 10)]
    pub header_read_timeout_secs: u64,

    /// Seconds to let in-flight requests finish after SIGTERM / Ctrl-C.
    #[arg(long, env = "SIGHTLINE_SHUTDOWN_GRACE_SECS", default_value_t = 25)]
    pub shutdown_grace_secs: u64,

    /// Seconds to keep serving after SIGTERM with /readyz failing (so load balancers stop
    /// sending new connections) before the listener closes; Ctrl-C skips it.
    #[arg(long, env = "SIGHTLINE_SHUTDOWN_DRAIN_SECS", default_value_t = 5)]
    pub shutdown_drain_secs: u64,

    /// Recognize and all roles: a zip of a labelled set (one folder per class, or a CSV of
    /// `path,label` beside the images) evaluated once the model is ready, as by
    /// `POST /api/v1/evaluations` and within its limits (--max-upload-bytes). A local path,
    /// or an `https://`, `http://` or `s3://` URI that the server downloads itself once the
    /// model serves (3 attempts of at most 15 s; S3 settings from the `AWS_*` environment).
    /// The progress and the report are at `GET /api/v1/evaluations/startup`: `running`
    /// while fetched, `failed` with the error if it cannot be fetched or read, has the wrong
    /// digest or is not such a zip; the model serves either way. Not started if the model
    /// fails to load.
    #[arg(long, env = "SIGHTLINE_EVALUATE_ON_START", value_name = "PATH|URI",
          value_parser = crate::eval::api::DatasetSource::parse)]
    pub evaluate_on_start: Option<crate::eval::api::DatasetSource>,

    /// Expected lower-case hex SHA-256 of the --evaluate-on-start zip; a different file is
    /// not evaluated (the start-up evaluation fails, naming both digests).
    #[arg(long, env = "SIGHTLINE_EVALUATE_SHA256", value_name = "HEX")]
    pub evaluate_sha256: Option<String>,

    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, env = "SIGHTLINE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// The ONNX classifier to serve.
    #[arg(
        long,
        env = "SIGHTLINE_MODEL",
        default_value = "models/build/efficientnet-lite0.onnx"
    )]
    pub model: PathBuf,

    /// Labels file, one class per line in output order [default: <model>.labels.txt].
    #[arg(long, env = "SIGHTLINE_LABELS")]
    pub labels: Option<PathBuf>,

    /// Preprocessing sidecar (JSON) [default: <model>.json when it exists, else ImageNet
    /// defaults].
    #[arg(long, env = "SIGHTLINE_MODEL_CONFIG")]
    pub model_config: Option<PathBuf>,

    /// Name of the model in URLs and metrics [default: the sidecar's name, else the file
    /// name without extension].
    #[arg(long, env = "SIGHTLINE_MODEL_NAME")]
    pub model_name: Option<String>,

    /// Expected SHA-256 of the model file; the server stays not-ready on a mismatch.
    #[arg(long, env = "SIGHTLINE_MODEL_SHA256")]
    pub model_sha256: Option<String>,

    /// Input side in pixels (overrides the sidecar).
    #[arg(long, env = "SIGHTLINE_INPUT_SIZE")]
    pub input_size: Option<u32>,

    /// Input tensor layout (overrides the sidecar).
    #[arg(long, env = "SIGHTLINE_LAYOUT", value_enum)]
    pub layout: Option<Layout>,

    /// Resize policy (overrides the sidecar).
    #[arg(long, env = "SIGHTLINE_RESIZE", value_enum)]
    pub resize: Option<ResizePolicy>,

    /// Share of the shorter side kept by the centre crop (overrides the sidecar).
    #[arg(long, env = "SIGHTLINE_CROP_FRACTION")]
    pub crop_fraction: Option<f32>,

    /// Channel order (overrides the sidecar).
    #[arg(long, env = "SIGHTLINE_CHANNELS", value_enum)]
    pub channels: Option<Channels>,

    /// Factor applied to 8-bit samples before normalisation (overrides the sidecar).
    #[arg(long, env = "SIGHTLINE_SCALE")]
    pub scale: Option<f32>,

    /// Per-channel mean, `r,g,b` (overrides the sidecar).
    #[arg(long, env = "SIGHTLINE_MEAN", value_parser = parse_triple)]
    pub mean: Option<[f32; 3]>,

    /// Per-channel standard deviation, `r,g,b` (overrides the sidecar).
    #[arg(long, env = "SIGHTLINE_STD", value_parser = parse_triple)]
    pub std: Option<[f32; 3]>,

    /// Where inference runs. `gpu` registers the ONNX Runtime CUDA execution provider.
    #[arg(long, env = "SIGHTLINE_DEVICE", value_enum, default_value = "cpu")]
    pub device: Device,

    /// With --device gpu: serve on the CPU if CUDA cannot be registered, instead of
    /// staying not-ready.
    #[arg(long, env = "SIGHTLINE_ALLOW_CPU_FALLBACK")]
    pub allow_cpu_fallback: bool,

    /// Threads ONNX Runtime uses inside one operator (0 = one per CPU core).
    #[arg(long, env = "SIGHTLINE_INTRA_THREADS", default_value_t = 0)]
    pub intra_threads: usize,

    /// Let ONNX Runtime's intra-op threads spin (busy-wait) for work between operators
    /// instead of sleeping (ONNX Runtime's own default). Off by default: spinning burned
    /// the CPU that image decoding and HTTP need (BENCHMARKS.md, "CPU per request").
    #[arg(long, env = "SIGHTLINE_INTRA_OP_SPINNING", default_value_t = false, action = clap::ArgAction::Set)]
    pub intra_op_spinning: bool,

    /// Copies of the model, each its own ONNX Runtime session and inference thread, taking
    /// batches from one queue side by side (Triton's instance count). On a CPU, give each
    /// `--intra-threads` cores ÷ instances.
    #[arg(long, env = "SIGHTLINE_INSTANCES", default_value_t = 1)]
    pub instances: usize,

    /// Images decoded and preprocessed at once (0 = one per CPU core).
    #[arg(long, env = "SIGHTLINE_DECODE_THREADS", default_value_t = 0)]
    pub decode_threads: usize,

    /// Most images in one model run: `auto` measures batch sizes 1, 2, 4, 8 with the
    /// model at warm-up and keeps the largest within 2 % of the fastest, never one slower
    /// than batch 1 (`auto:32` tries up to 32); a number fixes it.
    #[arg(long, env = "SIGHTLINE_MAX_BATCH_SIZE", default_value = "auto")]
    pub max_batch_size: crate::batch_tuning::BatchSize,

    /// Most milliseconds a request waits for others to share its batch (only while more
    /// requests are being decoded; a lone request never waits).
    #[arg(long, env = "SIGHTLINE_MAX_DELAY_MS", default_value_t = 2)]
    pub max_delay_ms: u64,

    /// Requests waiting for the model; when full, new ones get 503 with Retry-After.
    #[arg(long, env = "SIGHTLINE_QUEUE_CAPACITY", default_value_t = 64)]
    pub queue_capacity: usize,

    /// Bytes of recognition results kept in memory, keyed by the image bytes, the model's
    /// digest and its preprocessing (least recently used evicted first; identical requests
    /// in flight share one inference). 0 turns the cache off.
    #[arg(long, env = "SIGHTLINE_CACHE_BYTES", default_value_t = crate::cache::DEFAULT_BYTES)]
    pub cache_bytes: usize,

    /// The ONNX Runtime shared library (from the onnxruntime wheel; `make deps` puts it in
    /// .ort/).
    #[arg(long, env = "SIGHTLINE_ORT_LIB", default_value = crate::ort_runtime::DEFAULT_LIB)]
    pub ort_lib: PathBuf,
}

impl ModelArgs {
    /// `<model>.<suffix>` beside the model file (`models/x.onnx` → `models/x.labels.txt`).
    pub fn beside_model(&self, suffix: &str) -> PathBuf {
        self.model.with_extension(suffix)
    }
}

/// Subcommands that take the serving flags (and so a config file).
const SERVE_COMMANDS: &[&str] = &["all", "recognize", "upload", "store", "eval"];

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot read config file {path}: {source}")]
    ReadConfig {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {source}")]
    ParseConfig {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("config file {path}: key {key:?} must be a string, number, boolean or list")]
    ConfigValue { path: String, key: String },
}

/// Parses the command line after merging the config file into it.
pub fn parse(args: Vec<OsString>) -> Result<Cli, clap::Error> {
    match with_config_file(args, |name| std::env::var_os(name)) {
        Ok(args) => Cli::try_parse_from(args),
        Err(e) => Err(clap::Error::raw(
            clap::error::ErrorKind::ValueValidation,
            format!("{e}\n"),
        )),
    }
}

/// Inserts the config file's settings as flags right after the subcommand, so that the
/// flags given on the command line (which come later) override them. Settings whose
/// `SIGHTLINE_*` variable is set are skipped, so the environment also wins over the file.
pub fn with_config_file(
    mut args: Vec<OsString>,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<Vec<OsString>, CliError> {
    let is_serve = args
        .get(1)
        .and_then(|a| a.to_str())
        .is_some_and(|a| SERVE_COMMANDS.contains(&a));
    if !is_serve {
        return Ok(args);
    }
    let path = config_path(&args[2..]).or_else(|| env("SIGHTLINE_CONFIG").map(PathBuf::from));
    let Some(path) = path else {
        return Ok(args);
    };
    let injected = config_flags(&path, &env)?;
    args.splice(2..2, injected);
    Ok(args)
}

fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        if text == "--config" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(value) = text.strip_prefix("--config=") {
            return Some(PathBuf::from(value));
        }
    }
    None
}

fn config_flags(
    path: &Path,
    env: &impl Fn(&str) -> Option<OsString>,
) -> Result<Vec<OsString>, CliError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| CliError::ReadConfig {
        path: shown.clone(),
        source,
    })?;
    let table: toml::Table = text.parse().map_err(|source| CliError::ParseConfig {
        path: shown.clone(),
        source: Box::new(source),
    })?;
    let mut flags = Vec::new();
    for (key, value) in table {
        let flag = key.replace('_', "-");
        if flag == "config" {
            continue;
        }
        let env_name = format!("SIGHTLINE_{}", flag.replace('-', "_").to_ascii_uppercase());
        if env(&env_name).is_some() {
            continue;
        }
        let rendered = match value {
            toml::Value::String(s) => Some(s),
            toml::Value::Integer(i) => Some(i.to_string()),
            toml::Value::Float(f) => Some(f.to_string()),
            toml::Value::Boolean(true) => None,
            toml::Value::Boolean(false) => continue,
            toml::Value::Array(items) => Some(
                items
                    .iter()
                    .map(|item| match item {
                        toml::Value::String(s) => Ok(s.clone()),
                        toml::Value::Integer(i) => Ok(i.to_string()),
                        toml::Value::Float(f) => Ok(f.to_string()),
                        _ => Err(CliError::ConfigValue {
                            path: shown.clone(),
                            key: key.clone(),
                        }),
                    })
                    .collect::<Result<Vec<_>, _>>()?
                    .join(","),
            ),
            _ => return Err(CliError::ConfigValue { path: shown, key }),
        };
        flags.push(OsString::from(format!("--{flag}")));
        if let Some(value) = rendered {
            flags.push(OsString::from(value));
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn serve(cli: Cli) -> ServeArgs {
        cli.command.into_serve_args().expect("a serving subcommand")
    }

    #[test]
    fn every_role_parses_and_knows_its_parts() {
        for (name, role) in [
            ("all", Role::All),
            ("recognize", Role::Recognize),
            ("upload", Role::Upload),
            ("store", Role::Store),
        ] {
            let a = serve(
                Cli::try_parse_from(args(&[
                    "s",
                    name,
                    "--database-url",
                    "postgres://u@h/d",
                    "--recognize-url",
                    "http://r:8080",
                    "--rate-limit-rps",
                    "5",
                ]))
                .expect("parses"),
            );
            assert_eq!(a.role, role);
            assert_eq!(a.role.as_str(), name);
            assert_eq!(a.rate_limit_rps, 5.0);
        }
        assert!(Role::All.recognizes() && Role::All.uploads() && Role::All.stores());
        assert!(!Role::Store.recognizes() && !Role::Upload.stores());
    }

    #[test]
    fn defaults_serve_the_pretrained_model_on_loopback() {
        let a = serve(Cli::try_parse_from(args(&["sightline-server", "all"])).expect("parses"));
        assert_eq!(a.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            a.model.model,
            PathBuf::from("models/build/efficientnet-lite0.onnx")
        );
        assert_eq!(
            a.model.beside_model("labels.txt"),
            PathBuf::from("models/build/efficientnet-lite0.labels.txt")
        );
        assert_eq!(a.model.device, Device::Cpu);
    }

    #[test]
    fn config_file_fills_in_and_flags_and_env_win() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("s.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:9000\"\nmax_batch_size = 16\nfetch-allowlist = [\"http://a/\", \"http://b/\"]\nallow-cpu-fallback = true\nmax-delay-ms = 7\n",
        )
        .expect("write");
        let cfg = file.to_string_lossy().to_string();
        let no_env = |_: &str| None;
        let merged = with_config_file(
            args(&["s", "recognize", "--config", &cfg, "--max-batch-size", "4"]),
            no_env,
        )
        .expect("merge");
        let a = serve(Cli::try_parse_from(merged).expect("parses"));
        assert_eq!(a.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(
            a.model.max_batch_size,
            crate::batch_tuning::BatchSize::Fixed(4),
            "the flag wins over the file"
        );
        assert_eq!(a.fetch_allowlist, vec!["http://a/", "http://b/"]);
        assert!(a.model.allow_cpu_fallback);
        let env = |name: &str| (name == "SIGHTLINE_MAX_DELAY_MS").then(|| OsString::from("1"));
        let merged =
            with_config_file(args(&["s", "recognize", "--config", &cfg]), env).expect("merge");
        assert!(
            !merged.iter().any(|a| a == "--max-delay-ms"),
            "the environment wins over the file"
        );
    }

    #[test]
    fn bad_config_files_are_clear_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "listen = [").expect("write");
        let err = with_config_file(
            args(&["s", "all", "--config", &file.to_string_lossy()]),
            |_| None,
        )
        .expect_err("bad toml");
        assert!(err.to_string().contains("not valid TOML"), "{err}");
        let err = with_config_file(args(&["s", "all", "--config=/nonexistent.toml"]), |_| None)
            .expect_err("missing");
        assert!(err.to_string().contains("/nonexistent.toml"), "{err}");
    }

    #[test]
    fn evaluate_on_start_takes_a_path_or_a_uri_and_a_digest() {
        use crate::eval::api::DatasetSource;
        let parse = |extra: &[&str]| {
            let mut list = vec!["s", "recognize"];
            list.extend_from_slice(extra);
            serve(Cli::try_parse_from(args(&list)).expect("parses"))
        };
        let a = parse(&["--evaluate-on-start", "sets/labelled.zip"]);
        assert_eq!(
            a.evaluate_on_start,
            Some(DatasetSource::File(PathBuf::from("sets/labelled.zip")))
        );
        assert_eq!(a.evaluate_sha256, None);
        let digest = "ab".repeat(32);
        for uri in [
            "https://example.com/sets/labelled.zip?X-Amz-Signature=s",
            "http://data.local:8080/labelled.zip",
            "s3://bucket/sets/labelled.zip",
            // Refused when fetched (a failed evaluation), never at start-up.
            "ftp://example.com/labelled.zip",
        ] {
            let a = parse(&["--evaluate-on-start", uri, "--evaluate-sha256", &digest]);
            assert_eq!(
                a.evaluate_on_start,
                Some(DatasetSource::Remote(uri.to_string()))
            );
            assert_eq!(a.evaluate_sha256.as_deref(), Some(digest.as_str()));
        }
        assert_eq!(parse(&[]).evaluate_on_start, None);
    }

    #[test]
    fn unknown_keys_are_rejected_by_clap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("typo.toml");
        std::fs::write(&file, "lissen = \"x\"").expect("write");
        let merged = with_config_file(
            args(&["s", "all", "--config", &file.to_string_lossy()]),
            |_| None,
        )
        .expect("merge");
        assert!(Cli::try_parse_from(merged).is_err());
    }
}
