//! Loading the ONNX Runtime shared library (`libonnxruntime.so`) at run time.
//!
//! `ort` is built with `load-dynamic`: nothing is linked or downloaded at build time. The
//! library comes from the `onnxruntime` wheel on PyPI, which `make deps` unpacks into
//! `.ort/`. We load it with `ort::init_from(path)` — the environment-variable route panics
//! when the file is missing — and turn every failure into an error that names the path and
//! the fix.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;

/// Where `make deps` puts the library, relative to the repository root.
pub const DEFAULT_LIB: &str = ".ort/libonnxruntime.so";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library not found at {path}. Run `make deps` from the repository root \
         (it unpacks libonnxruntime.so from the onnxruntime wheel on PyPI into .ort/), or \
         point --ort-lib / SIGHTLINE_ORT_LIB at an existing libonnxruntime.so"
    )]
    Missing { path: PathBuf },
    #[error(
        "cannot load the ONNX Runtime library at {path}: {reason}. It must be \
         libonnxruntime.so version 1.{min}.x or newer (run `make deps`, or point --ort-lib at \
         a matching library)"
    )]
    Load {
        path: PathBuf,
        reason: String,
        min: u32,
    },
    #[error("ONNX Runtime was already loaded from {loaded}; cannot switch to {requested}")]
    AlreadyLoaded { loaded: PathBuf, requested: PathBuf },
    #[error("cannot create the ONNX Runtime environment: {0}")]
    Environment(String),
}

struct Loaded {
    path: PathBuf,
    env: Environment,
}

static RUNTIME: OnceLock<Loaded> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

/// Loads the library once per process and returns the shared environment. Later calls with
/// the same path return the same environment.
pub fn init(path: &Path) -> Result<&'static Environment, RuntimeError> {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let _guard = INIT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(loaded) = RUNTIME.get() {
        if loaded.path != absolute {
            return Err(RuntimeError::AlreadyLoaded {
                loaded: loaded.path.clone(),
                requested: absolute,
            });
        }
        return Ok(&loaded.env);
    }
    if !absolute.is_file() {
        return Err(RuntimeError::Missing { path: absolute });
    }
    let builder = ort::init_from(&absolute).map_err(|e| RuntimeError::Load {
        path: absolute.clone(),
        reason: e.to_string(),
        min: ort::MINOR_VERSION,
    })?;
    let env = builder
        .with_name("sightline")
        .build()
        .map_err(|e| RuntimeError::Environment(e.to_string()))?;
    let loaded = RUNTIME.get_or_init(|| Loaded {
        path: absolute,
        env,
    });
    Ok(&loaded.env)
}

/// The library a process should use: the flag/env value, else [`DEFAULT_LIB`].
pub fn resolve(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_LIB))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_names_the_path_and_the_fix() {
        let err = init(Path::new("/nonexistent/libonnxruntime.so")).expect_err("missing");
        let text = err.to_string();
        assert!(text.contains("/nonexistent/libonnxruntime.so"), "{text}");
        assert!(text.contains("make deps"), "{text}");
    }

    #[test]
    fn a_file_that_is_not_the_library_is_a_load_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = dir.path().join("libonnxruntime.so");
        std::fs::write(&fake, b"not a shared object").expect("write");
        let err = init(&fake).expect_err("not a library");
        assert!(matches!(err, RuntimeError::Load { .. }), "{err}");
        assert!(err.to_string().contains(&fake.display().to_string()));
    }
}
