//! The config file (`--config`, TOML): its settings become flags placed right after the
//! subcommand, so the command line and the `SIGHTLINE_*` environment override it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::Parser;

use super::Cli;

/// Subcommands that take the serving flags (and so a config file).
const SERVE_COMMANDS: &[&str] = &["all", "recognize", "upload", "store", "eval", "batch"];

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
