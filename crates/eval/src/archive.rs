//! An uploaded evaluation set: a zip unpacked into a folder of its own and read as a
//! labelled set, every path confined to it.
//!
//! - **Bounded:** at most [`MAX_ENTRIES`] files and [`MAX_UNPACKED_BYTES`] unpacked,
//!   counted while unpacking (never trusted from the zip's headers).
//! - **Confined:** entries are written only under the folder (an entry naming `../x` or
//!   `/x` is refused), as regular files (a symlink entry becomes a file holding its target's
//!   name, never a link), and a CSV row must name a relative path inside the archive: an
//!   absolute path, a `..` step or a device (`/dev/zero`) is a [`ArchiveError::Outside`]
//!   naming the CSV file and its line, and nothing is read.
//! - **Cleaned up on every path:** the folder is a [`tempfile::TempDir`], removed when the
//!   [`Unpacked`] set is dropped — after the evaluation, on an error, or when the request
//!   that is unpacking it goes away (the unpacking checks [`Cancel`] between entries and
//!   chunks, stops, and drops the folder on its own thread).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::EvalError;
use crate::dataset::{self, Resolver, Sample};

pub const MAX_ENTRIES: usize = 100_000;
pub const MAX_UNPACKED_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// The name every unpack folder starts with.
pub const FOLDER_PREFIX: &str = "sightline-eval-";

/// Why an archive is not a labelled set that can be evaluated.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("send the labelled set as a zip file (one folder per class, or a CSV of path,label)")]
    NotZip,
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Invalid(String),
    /// A CSV row names a file outside the archive: its CSV (inside the archive) and line.
    #[error("{csv}, line {line}: the path {path:?} is outside the archive: {why}")]
    Outside {
        csv: String,
        line: usize,
        path: String,
        why: &'static str,
    },
    #[error("the upload went away while it was being unpacked")]
    Cancelled,
    #[error("cannot unpack: {0}")]
    Io(String),
}

/// Set when the request that started an unpacking goes away: it then stops.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// A guard that sets this when dropped, unless [`CancelOnDrop::disarm`]ed.
    pub fn on_drop(&self) -> CancelOnDrop {
        CancelOnDrop(Some(self.clone()))
    }
}

/// See [`Cancel::on_drop`].
pub struct CancelOnDrop(Option<Cancel>);

impl CancelOnDrop {
    pub fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(cancel) = &self.0 {
            cancel.set();
        }
    }
}

/// An unpacked labelled set; its folder goes with it.
pub struct Unpacked {
    dir: tempfile::TempDir,
    pub samples: Vec<Sample>,
}

impl Unpacked {
    /// The folder the set was unpacked into.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Unpacks `zip` into a new folder under `work`, finds the set in it and reads it against
/// `labels` with every path confined to the folder. Blocking: call from a blocking thread.
pub fn open(
    zip: &[u8],
    labels: &[String],
    work: &Path,
    cancel: &Cancel,
) -> Result<Unpacked, ArchiveError> {
    if !zip.starts_with(b"PK\x03\x04") && !zip.starts_with(b"PK\x05\x06") {
        return Err(ArchiveError::NotZip);
    }
    std::fs::create_dir_all(work)
        .map_err(|e| ArchiveError::Io(format!("{}: {e}", work.display())))?;
    let dir = tempfile::Builder::new()
        .prefix(FOLDER_PREFIX)
        .tempdir_in(work)
        .map_err(|e| ArchiveError::Io(format!("a folder in {}: {e}", work.display())))?;
    unpack(zip, dir.path(), cancel)?;
    let resolver = Resolver::new(labels);
    let root = dataset_root(dir.path(), &resolver);
    let samples = dataset::load_within(&root, dir.path(), labels).map_err(|e| {
        let inside = |p: &str| {
            Path::new(p)
                .strip_prefix(dir.path())
                .map_or_else(|_| p.to_string(), |r| r.display().to_string())
        };
        match e {
            EvalError::Outside {
                path,
                line,
                row,
                why,
            } => ArchiveError::Outside {
                csv: inside(&path),
                line,
                path: row,
                why,
            },
            other => ArchiveError::Invalid(
                other
                    .to_string()
                    .replace(&format!("{}/", dir.path().display()), ""),
            ),
        }
    })?;
    Ok(Unpacked { dir, samples })
}

/// Unpacks `zip` into `dir` within the limits, checking `cancel` as it goes.
fn unpack(zip: &[u8], dir: &Path, cancel: &Cancel) -> Result<(), ArchiveError> {
    let bad = ArchiveError::Invalid;
    let io = |e: std::io::Error| ArchiveError::Io(e.to_string());
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip))
        .map_err(|e| bad(format!("not a readable zip file: {e}")))?;
    if archive.len() > MAX_ENTRIES {
        return Err(bad(format!("more than {MAX_ENTRIES} files in the zip")));
    }
    let mut budget = MAX_UNPACKED_BYTES;
    let mut chunk = vec![0u8; 1024 * 1024];
    for i in 0..archive.len() {
        if cancel.is_set() {
            return Err(ArchiveError::Cancelled);
        }
        let mut entry = archive
            .by_index(i)
            .map_err(|e| bad(format!("zip entry {i}: {e}")))?;
        let Some(relative) = entry.enclosed_name() else {
            return Err(bad(format!(
                "zip entry {:?} points outside the archive",
                entry.name()
            )));
        };
        let hidden = relative.components().any(|c| {
            c.as_os_str()
                .to_str()
                .is_some_and(|s| s.starts_with('.') || s == "__MACOSX")
        });
        if entry.is_dir() || hidden {
            continue;
        }
        let target = dir.join(&relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        // A new regular file whatever the entry says it is (a symlink entry's bytes are
        // its target's name); `create_new` never follows or replaces anything there.
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
            .map_err(|e| bad(format!("zip entry {:?}: {e}", relative.display())))?;
        loop {
            if cancel.is_set() {
                return Err(ArchiveError::Cancelled);
            }
            let n = entry
                .read(&mut chunk)
                .map_err(|e| bad(format!("zip entry {:?}: {e}", relative.display())))?;
            if n == 0 {
                break;
            }
            if n as u64 > budget {
                return Err(ArchiveError::TooLarge(format!(
                    "the zip unpacks to more than {MAX_UNPACKED_BYTES} bytes"
                )));
            }
            budget -= n as u64;
            out.write_all(&chunk[..n]).map_err(io)?;
        }
    }
    Ok(())
}

/// Where the set starts inside the unpacked zip: a lone `.csv` file at a level, or the
/// level whose folders are classes (a single wrapping folder that is not a class is
/// stepped into, as zipping a folder makes one).
fn dataset_root(dir: &Path, resolver: &Resolver) -> PathBuf {
    let mut root = dir.to_path_buf();
    for _ in 0..4 {
        let Ok(entries) = std::fs::read_dir(&root) else {
            break;
        };
        let entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        let csvs: Vec<&PathBuf> = entries
            .iter()
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "csv"))
            .collect();
        if let [csv] = csvs.as_slice() {
            return csv.to_path_buf();
        }
        match entries.as_slice() {
            [only]
                if only.is_dir()
                    && only
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_none_or(|n| resolver.resolve(n).is_none()) =>
            {
                root = only.clone();
            }
            _ => break,
        }
    }
    root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, bytes) in files {
            w.start_file(*name, zip::write::SimpleFileOptions::default())
                .expect("start");
            w.write_all(bytes).expect("write");
        }
        w.finish().expect("finish").into_inner()
    }

    fn labels() -> Vec<String> {
        vec!["red".into(), "green".into()]
    }

    #[test]
    fn a_csv_row_outside_the_archive_names_its_line_and_the_folder_goes() {
        let work = tempfile::tempdir().expect("tempdir");
        let zip = zip_of(&[
            ("set/labels.csv", b"path,label\na.png,red\n../x.png,green\n"),
            ("set/a.png", b"x"),
        ]);
        let err = open(&zip, &labels(), work.path(), &Cancel::default()).err();
        match err {
            Some(ArchiveError::Outside {
                csv, line, path, ..
            }) => {
                assert_eq!(
                    (csv.as_str(), line, path.as_str()),
                    ("set/labels.csv", 3, "../x.png")
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read_dir(work.path()).expect("work").count(), 0);
        let ok = open(
            &zip_of(&[("labels.csv", b"a.png,red\n"), ("a.png", b"x")]),
            &labels(),
            work.path(),
            &Cancel::default(),
        )
        .expect("a set");
        assert_eq!(ok.samples.len(), 1);
        assert!(ok.samples[0].path.starts_with(ok.dir()));
        let dir = ok.dir().to_path_buf();
        drop(ok);
        assert!(!dir.exists(), "dropped with its set");
    }

    #[test]
    fn a_cancelled_unpacking_stops_and_leaves_nothing() {
        let work = tempfile::tempdir().expect("tempdir");
        let cancel = Cancel::default();
        drop(cancel.on_drop());
        let zip = zip_of(&[("red/a.png", b"x")]);
        assert!(matches!(
            open(&zip, &labels(), work.path(), &cancel),
            Err(ArchiveError::Cancelled)
        ));
        assert_eq!(std::fs::read_dir(work.path()).expect("work").count(), 0);
        let kept = Cancel::default();
        kept.on_drop().disarm();
        assert!(!kept.is_set());
    }
}
