use super::*;
use std::ffi::OsString;

use crate::engine::Device;

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
    let merged = with_config_file(args(&["s", "recognize", "--config", &cfg]), env).expect("merge");
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
    use crate::eval::startup::DatasetSource;
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

/// Every subcommand's flags are well formed (unique names, valid defaults and conflicts):
/// clap checks it only when the subcommand runs, which a unit test of another one misses.
#[test]
fn every_subcommand_is_well_formed() {
    use clap::CommandFactory;
    super::Cli::command().debug_assert();
}

#[test]
fn http_threads_default_by_role_and_take_a_number() {
    let default = serve(Cli::try_parse_from(args(&["s", "recognize"])).expect("parses"));
    assert_eq!(default.http_threads, 0, "0: by role");
    // A model on the CPU: a quarter of the cores, at least one.
    for (cores, threads) in [(1, 1), (2, 1), (4, 1), (8, 2), (16, 4)] {
        assert_eq!(
            default.http_runtime_threads(cores),
            threads,
            "{cores} cores"
        );
    }
    let all = serve(Cli::try_parse_from(args(&["s", "all"])).expect("parses"));
    assert_eq!(all.http_runtime_threads(8), 2);
    // No model, or the model on a GPU: one per core.
    for role in ["upload", "store"] {
        let no_model = serve(Cli::try_parse_from(args(&["s", role])).expect("parses"));
        assert_eq!(no_model.http_runtime_threads(8), 8, "{role}");
    }
    let gpu =
        serve(Cli::try_parse_from(args(&["s", "recognize", "--device", "gpu"])).expect("parses"));
    assert_eq!(gpu.http_runtime_threads(8), 8);
    let fixed = serve(
        Cli::try_parse_from(args(&["s", "recognize", "--http-threads", "3"])).expect("parses"),
    );
    assert_eq!(fixed.http_runtime_threads(16), 3);
    let one = serve(
        Cli::try_parse_from(args(&["s", "recognize", "--http-threads", "1"])).expect("parses"),
    );
    assert_eq!(one.http_threads, 1);
    assert!(Cli::try_parse_from(args(&["s", "recognize", "--http-threads", "-1"])).is_err());
    assert!(Cli::try_parse_from(args(&["s", "recognize", "--http-threads", "many"])).is_err());
}
