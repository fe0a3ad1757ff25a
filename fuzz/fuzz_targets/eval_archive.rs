//! An uploaded evaluation set, as `POST /api/v1/evaluations` reads it: the zip unpacked
//! within its limits into a folder of its own, the set found in it (class folders or a
//! CSV), the CSV's rows parsed and confined to the archive (`eval::archive::open`). The
//! first byte picks the input's kind: the bytes as a zip, or as the text of a CSV packed
//! with a few images into a zip. Whatever the bytes: no panic; every sample it reads lies
//! inside its folder; and nothing is left behind once the set is dropped (an error or a
//! success alike).
#![no_main]

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sightline_server::eval::archive::{Cancel, open};

fn work() -> &'static PathBuf {
    static WORK: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &WORK
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().to_path_buf();
            (dir, path)
        })
        .1
}

fn labels() -> Vec<String> {
    ["red", "green", "blue", "tabby cat"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// `csv` as `labels.csv` beside two small files, in a zip.
fn with_csv(csv: &[u8]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    for (name, bytes) in [
        ("set/labels.csv", csv),
        ("set/a.png", b"\x89PNG not really".as_slice()),
        ("set/img/b.jpg", b"\xff\xd8 not really".as_slice()),
    ] {
        w.start_file(name, options).expect("start");
        w.write_all(bytes).expect("write");
    }
    w.finish().expect("finish").into_inner()
}

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, rest)) = data.split_first() else {
        return;
    };
    let zip = if knobs & 1 == 0 {
        rest.to_vec()
    } else {
        with_csv(rest)
    };
    let work = work();
    match open(&zip, &labels(), work, &Cancel::default()) {
        Ok(set) => {
            let dir = set.dir().to_path_buf();
            assert!(dir.starts_with(work));
            for sample in &set.samples {
                assert!(
                    sample.path.starts_with(&dir),
                    "{} is outside {}",
                    sample.path.display(),
                    dir.display()
                );
                assert!(
                    !sample
                        .path
                        .components()
                        .any(|c| matches!(c, std::path::Component::ParentDir)),
                    "{} steps out",
                    sample.path.display()
                );
                assert!(sample.class < labels().len());
            }
            drop(set);
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
        }
    }
    let left = std::fs::read_dir(work).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "an unpack folder was left behind");
});
