//! `--summary FILE`: what a run did, as one JSON object written when it ends — also when it
//! fails. On a cluster the file is `/dev/termination-log`: the kubelet copies it into the
//! pod's `status.containerStatuses[].state.terminated.message` (at most 4096 bytes), where
//! the operator reads each shard's counts once its pod has ended.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The kubelet keeps at most this many bytes of a termination message.
pub const MAX_BYTES: usize = 4096;
/// Bad images named in `errors` (the rest are counted in `failed`).
pub const MAX_ERRORS: usize = 5;
/// Longest error text kept per image.
const MAX_ERROR_CHARS: usize = 200;

/// One shard's account. `recognized`, `skipped` and `failed` cover the whole shard:
/// `skipped` counts images already in `--out` with a result when the run started (a
/// resumed run), `failed` every image whose line is an error, by this run or an earlier.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardSummary {
    pub shard: usize,
    pub shards: usize,
    /// Images in this shard.
    pub total: u64,
    /// Images recognized by this run.
    pub recognized: u64,
    /// Images not recognized by this run because they were done already: in `--out` with
    /// a result when it started, or in the results store (`known`).
    pub skipped: u64,
    /// Of `skipped`, the images the results store (`--store-url`) had a result for.
    #[serde(default)]
    pub known: u64,
    /// Images recorded as errors (not an image, too large, unreadable): by this run, or
    /// by an earlier attempt whose lines a resumed run found in `--out`.
    pub failed: u64,
    /// The first bad images, with why (an earlier attempt's first).
    pub errors: Vec<ImageError>,
    pub seconds: f64,
    pub images_per_second: f64,
    /// Empty when the model never loaded.
    pub model_sha256: String,
    /// True when every image of the shard has a line in `--out`.
    pub complete: bool,
    /// Why the run stopped early (absent when it did not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// With `--truth`: the evaluation's counts over this shard's images of the CSV.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<sightline_api::EvalCounts>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageError {
    pub image: String,
    pub error: String,
}

impl ShardSummary {
    /// Notes a bad image (the first [`MAX_ERRORS`] are kept, shortened).
    pub fn bad_image(&mut self, image: &str, error: &str) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(ImageError {
                image: shorten(image),
                error: shorten(error),
            });
        }
    }

    /// The JSON text, cut down to fit [`MAX_BYTES`]: errors are dropped first, then the
    /// stop reason is shortened (the counts always fit).
    pub fn to_json(&self) -> String {
        let mut summary = self.clone();
        loop {
            let text = serde_json::to_string(&summary).unwrap_or_default();
            if text.len() <= MAX_BYTES {
                return text;
            }
            if summary.errors.pop().is_none() {
                summary.error = summary.error.map(|e| e.chars().take(500).collect());
                let text = serde_json::to_string(&summary).unwrap_or_default();
                return text.chars().take(MAX_BYTES).collect();
            }
        }
    }

    /// Writes the summary to `path`.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.to_json())
    }
}

fn shorten(text: &str) -> String {
    if text.chars().count() <= MAX_ERROR_CHARS {
        text.to_string()
    } else {
        let mut short: String = text.chars().take(MAX_ERROR_CHARS - 1).collect();
        short.push('…');
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_first_errors_shortened_and_fits_a_termination_message() {
        let mut s = ShardSummary {
            shard: 3,
            shards: 8,
            total: 1000,
            ..ShardSummary::default()
        };
        for i in 0..20 {
            s.bad_image(
                &format!("{}/{i}.jpg", "deep/".repeat(200)),
                &"x".repeat(5000),
            );
        }
        assert_eq!(s.errors.len(), MAX_ERRORS);
        assert!(s.errors[0].error.chars().count() <= MAX_ERROR_CHARS);
        s.error = Some("y".repeat(10_000));
        let text = s.to_json();
        assert!(text.len() <= MAX_BYTES, "{}", text.len());
        let back: ShardSummary = serde_json::from_str(&text).expect("still JSON");
        assert_eq!((back.shard, back.shards, back.total), (3, 8, 1000));
    }

    #[test]
    fn round_trips() {
        let mut s = ShardSummary {
            shard: 1,
            shards: 2,
            total: 10,
            recognized: 7,
            skipped: 2,
            failed: 1,
            complete: true,
            model_sha256: "ab".into(),
            ..ShardSummary::default()
        };
        s.bad_image("a.jpg", "not an image");
        let back: ShardSummary = serde_json::from_str(&s.to_json()).expect("JSON");
        assert_eq!(back, s);
    }
}
