//! The output file: one JSON line per image, each written whole and flushed before the
//! next, so a run killed at any moment leaves every finished image on disk and at most one
//! line cut short. On resume that line is dropped (its image is done again) and the images
//! of the complete lines are skipped.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sightline_api::Prediction;

use crate::BatchError;

/// One image's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    /// The image's path relative to the input folder.
    pub image: String,
    /// SHA-256 of the image bytes (absent when the file could not be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub model: String,
    pub model_sha256: String,
    /// SHA-256 of the preprocessing settings it was recognized with
    /// (`sightline_model::model_config::Preprocess::digest`); empty in an older release's
    /// lines.
    #[serde(default)]
    pub preprocess_sha256: String,
    /// Best first; empty when the image failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub predictions: Vec<Prediction>,
    /// The predictions came from the results database, which had them already.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub known: bool,
    /// Why the image has no predictions (not an image, too large, unreadable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The output file, open for appending.
pub struct Journal {
    path: PathBuf,
    file: File,
}

impl Journal {
    /// Opens `path` for a run. Without `resume` it must not exist; with it, the lines it
    /// holds are returned (a last line cut short is removed from the file).
    pub fn open(path: &Path, resume: bool) -> Result<(Journal, Vec<Line>), BatchError> {
        let write_error = |source| BatchError::Write {
            path: path.to_path_buf(),
            source,
        };
        let exists = path.exists();
        if exists && !resume {
            return Err(BatchError::OutputExists(path.to_path_buf()));
        }
        let mut done = Vec::new();
        if exists {
            let text = std::fs::read(path).map_err(|source| BatchError::ReadOutput {
                path: path.to_path_buf(),
                source,
            })?;
            let complete = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            for (i, raw) in text[..complete].split(|b| *b == b'\n').enumerate() {
                if raw.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let line =
                    serde_json::from_slice::<Line>(raw).map_err(|e| BatchError::BadLine {
                        path: path.to_path_buf(),
                        line: i + 1,
                        message: e.to_string(),
                    })?;
                done.push(line);
            }
            if complete < text.len() {
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(write_error)?;
                file.set_len(complete as u64).map_err(write_error)?;
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(write_error)?;
        let journal = Journal {
            path: path.to_path_buf(),
            file,
        };
        Ok((journal, done))
    }

    /// Appends one line, whole, and flushes it.
    pub fn write(&mut self, line: &Line) -> Result<(), BatchError> {
        let mut text = serde_json::to_vec(line).unwrap_or_default();
        text.push(b'\n');
        self.file
            .write_all(&text)
            .and_then(|()| self.file.flush())
            .map_err(|source| BatchError::Write {
                path: self.path.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(image: &str) -> Line {
        Line {
            image: image.into(),
            sha256: Some("ab".into()),
            model: "m".into(),
            model_sha256: "cd".into(),
            preprocess_sha256: "ef".into(),
            predictions: vec![Prediction {
                label: "cat".into(),
                probability: 0.5,
            }],
            known: false,
            error: None,
        }
    }

    #[test]
    fn a_resumed_journal_keeps_whole_lines_and_drops_a_cut_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.jsonl");
        let (mut journal, done) = Journal::open(&path, false).expect("open");
        assert!(done.is_empty());
        journal.write(&line("a.png")).expect("write");
        journal.write(&line("b.png")).expect("write");
        drop(journal);
        assert!(matches!(
            Journal::open(&path, false),
            Err(BatchError::OutputExists(_))
        ));
        // A kill in the middle of the third line.
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(br#"{"image":"c.png","sha"#).expect("write");
        drop(file);
        let (mut journal, done) = Journal::open(&path, true).expect("resume");
        assert_eq!(done, vec![line("a.png"), line("b.png")]);
        journal.write(&line("c.png")).expect("write");
        let (_, done) = Journal::open(&path, true).expect("resume");
        assert_eq!(done.len(), 3);
        std::fs::write(&path, "not json\n").expect("write");
        assert!(matches!(
            Journal::open(&path, true),
            Err(BatchError::BadLine { line: 1, .. })
        ));
    }
}
