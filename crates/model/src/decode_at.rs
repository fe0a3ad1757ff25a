//! Where a request's image is decoded: the choice decode_trial.rs makes and the batcher's
//! callers follow (serving.rs, load_shape.rs).

use serde::Serialize;

/// Where a request's image is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DecodeAt {
    /// On the blocking pool (at most `--decode-threads` at once), then queued as rows.
    Pool,
    /// Queued undecoded; the instance's worker decodes it just before the run.
    Worker,
}

impl DecodeAt {
    pub fn as_str(self) -> &'static str {
        match self {
            DecodeAt::Pool => "pool",
            DecodeAt::Worker => "worker",
        }
    }
}

impl std::str::FromStr for DecodeAt {
    type Err = String;

    fn from_str(text: &str) -> Result<DecodeAt, String> {
        match text {
            "pool" => Ok(DecodeAt::Pool),
            "worker" => Ok(DecodeAt::Worker),
            other => Err(format!("{other:?}: expected pool or worker")),
        }
    }
}
