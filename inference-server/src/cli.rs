//! Command line: roles, flags, `SIGHTLINE_*` environment variables and the config file.
//!
//! Precedence: a flag on the command line, then its `SIGHTLINE_*` environment variable,
//! then the config file (`--config`, TOML, keys are the flag names), then the default.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    /// Recognizes every image of a folder with the model, in this process, and writes one
    /// JSON line per image to --out; --resume goes on from an interrupted run, skipping the
    /// images already written. With --truth (a CSV of path,label) it ends with the
    /// evaluation report. Takes the same model flags as `recognize`.
    Batch(BatchArgs),
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

/// `sightline-server batch`.
#[derive(Debug, Clone, Args)]
pub struct BatchArgs {
    /// The folder of images (sub-folders included; files named .jpg, .jpeg, .png, .webp,
    /// .gif, .bmp or .jfif), or an S3-compatible bucket `s3://bucket[/prefix]` (the image
    /// store's --s3-* flags and AWS_* variables say where and how to sign in).
    #[arg(long, env = "SIGHTLINE_BATCH_INPUT")]
    pub input: PathBuf,

    /// The results: JSON lines, one per image (`image`, `sha256`, `model`, `model_sha256`,
    /// `predictions` or `error`).
    #[arg(long, env = "SIGHTLINE_BATCH_OUT")]
    pub out: PathBuf,

    /// Also write the results as CSV here when the run ends (`image, sha256, label,
    /// probability, known, error`; the top class only).
    #[arg(long)]
    pub csv: Option<PathBuf>,

    /// Go on from an existing --out: the images it holds are not done again.
    #[arg(long)]
    pub resume: bool,

    /// Only this shard of the sorted listing, `INDEX/COUNT` (every COUNT-th image from
    /// position INDEX), so several processes can share one folder.
    #[arg(long, env = "SIGHTLINE_BATCH_SHARD", default_value = "0/1", value_parser = parse_shard)]
    pub shard: (usize, usize),

    /// The listing is cut into this many shards and this process takes the one numbered by
    /// `$JOB_COMPLETION_INDEX` (what Kubernetes gives each pod of an Indexed Job); instead
    /// of --shard.
    #[arg(long, conflicts_with = "shard",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub shards: Option<usize>,

    /// Write what the run did as one JSON object to this file when it ends, also when it
    /// fails (on a cluster `/dev/termination-log`, which the operator reads).
    #[arg(long)]
    pub summary: Option<PathBuf>,

    /// Serve `GET /metrics` (sightline_batch_images_total, …) on this address while running.
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// With --metrics-listen: keep serving the final figures this long after the run ends,
    /// so that a scrape interval's worth of last counts is not lost (a Prometheus scraping
    /// every 30 s wants 30).
    #[arg(long, default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub metrics_linger_seconds: u64,

    /// The name the metrics carry in their `job` label (a RecognitionJob's name), and the
    /// stored results with --store-url.
    #[arg(long, env = "SIGHTLINE_BATCH_JOB", default_value = "local")]
    pub job: String,

    /// With --store-url (the store role's URL): the API key it wants (prefer the
    /// environment variable).
    #[arg(long, env = "SIGHTLINE_BATCH_STORE_API_KEY", hide_env_values = true)]
    pub store_api_key: Option<String>,

    /// The true labels, a CSV of `path,label` (paths relative to the CSV file): the
    /// evaluation report over the images it names (with a shard: its own of them) is
    /// printed at the end, and its counts go into --summary.
    #[arg(long)]
    pub truth: Option<PathBuf>,

    /// No progress (a bar on a terminal, else a line every few seconds).
    #[arg(long)]
    pub no_progress: bool,

    #[command(flatten)]
    pub serve: ServeArgs,
}

fn parse_shard(text: &str) -> Result<(usize, usize), String> {
    let bad = || format!("{text:?} is not INDEX/COUNT with INDEX below COUNT (e.g. 0/4)");
    let (index, count) = text.split_once('/').ok_or_else(bad)?;
    let index: usize = index.trim().parse().map_err(|_| bad())?;
    let count: usize = count.trim().parse().map_err(|_| bad())?;
    if index >= count {
        return Err(bad());
    }
    Ok((index, count))
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
            Command::Batch(a) => (Role::Recognize, a.serve),
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

    #[command(flatten)]
    pub feedback: FeedbackArgs,

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
    /// forwards the results routes to (for example http://store:8080). `batch`: keep the
    /// results there too, named by --job; an image it has a result for (same bytes, same
    /// model digest) is not recognized again.
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
          value_parser = crate::eval::startup::DatasetSource::parse)]
    pub evaluate_on_start: Option<crate::eval::startup::DatasetSource>,

    /// Expected lower-case hex SHA-256 of the --evaluate-on-start zip; a different file is
    /// not evaluated (the start-up evaluation fails, naming both digests).
    #[arg(long, env = "SIGHTLINE_EVALUATE_SHA256", value_name = "HEX")]
    pub evaluate_sha256: Option<String>,

    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, env = "SIGHTLINE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Threads of the async runtime that answers HTTP (Triton's `--http-thread-count`);
    /// 0 = by role: a quarter of the cores (at least one) where a model runs on the CPU,
    /// one per core otherwise ([`ServeArgs::http_runtime_threads`]). Decoding and inference
    /// run on threads of their own.
    #[arg(long, env = "SIGHTLINE_HTTP_THREADS", default_value_t = 0)]
    pub http_threads: usize,
}

impl ServeArgs {
    /// The HTTP runtime's threads on a machine of `cores`: `--http-threads` when given.
    /// Otherwise a role that runs a model on the CPU (`all`, `recognize`) takes a quarter
    /// of the cores, at least one: its inference sessions and decoders keep the cores
    /// busy, and more HTTP threads only take turns with them (on two 2-core CPUs, one HTTP
    /// thread served 1-5 % more at concurrency 4 and 16 with less CPU a request:
    /// BENCHMARKS.md, "Speed on every CPU"). A role without a model, or with its model on
    /// a GPU, has one per core, where its HTTP work is most of its work.
    pub fn http_runtime_threads(&self, cores: usize) -> usize {
        match self.http_threads {
            0 if self.role.recognizes() && self.model.device == crate::engine::Device::Cpu => {
                (cores / 4).max(1)
            }
            0 => cores.max(1),
            fixed => fixed,
        }
    }
}

mod config_file;
mod feedback_args;
mod model_args;

pub use config_file::{CliError, parse, with_config_file};
pub use feedback_args::{FeedbackArgs, Retention};
pub use model_args::ModelArgs;

#[cfg(test)]
mod tests;
