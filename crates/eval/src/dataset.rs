//! Labelled image sets: a directory with one sub-directory per class (the ImageFolder
//! convention) or a CSV file of `path,label` rows (paths relative to the CSV file).
//!
//! A class is named by a label of the model's labels file (exactly, or ignoring case and
//! treating `_` as a space, so folder names can avoid spaces) or by its class index
//! (`281`), which also tells apart ImageNet's duplicated labels.
//!
//! A set read from the command line ([`load`]) is the operator's own: a CSV row may name
//! any file. A set someone uploaded ([`load_within`]) is confined to its folder: a row
//! must be a relative path without `..` steps, or the set is refused naming the row.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::EvalError;

/// Extensions read as images in an ImageFolder tree.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "bmp"];

/// One labelled image.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub path: PathBuf,
    /// The class index in the model's output.
    pub class: usize,
}

/// Loads `path`: a directory (ImageFolder) or a `.csv` file whose rows may name any file.
pub fn load(path: &Path, labels: &[String]) -> Result<Vec<Sample>, EvalError> {
    load_with(path, labels, false)
}

/// [`load`] for a set confined to the folder `root` holds it (an uploaded archive): a CSV
/// row naming a file outside is an [`EvalError::Outside`].
pub fn load_within(path: &Path, root: &Path, labels: &[String]) -> Result<Vec<Sample>, EvalError> {
    if !path.starts_with(root) {
        return Err(EvalError::NoDataset(path.display().to_string()));
    }
    load_with(path, labels, true)
}

fn load_with(path: &Path, labels: &[String], confined: bool) -> Result<Vec<Sample>, EvalError> {
    let resolver = Resolver::new(labels);
    let samples = if path.is_dir() {
        image_folder(path, &resolver)?
    } else if path.is_file() {
        let text = std::fs::read_to_string(path).map_err(|source| EvalError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let rows = rows(&text, &resolver).map_err(|(line, message)| EvalError::Csv {
            path: path.display().to_string(),
            line,
            message,
        })?;
        let mut samples = Vec::with_capacity(rows.len());
        for (line, row, class) in rows {
            if confined && let Err(why) = relative_inside(&row) {
                return Err(EvalError::Outside {
                    path: path.display().to_string(),
                    line,
                    row: row.chars().take(200).collect(),
                    why,
                });
            }
            samples.push(Sample {
                path: base.join(&row),
                class,
            });
        }
        samples
    } else {
        return Err(EvalError::NoDataset(path.display().to_string()));
    };
    if samples.is_empty() {
        return Err(EvalError::EmptyDataset(path.display().to_string()));
    }
    Ok(samples)
}

/// Class name → index.
pub struct Resolver {
    exact: HashMap<String, usize>,
    loose: HashMap<String, usize>,
    classes: usize,
}

fn loosen(name: &str) -> String {
    name.trim().replace('_', " ").to_lowercase()
}

impl Resolver {
    pub fn new(labels: &[String]) -> Resolver {
        let mut exact = HashMap::new();
        let mut loose = HashMap::new();
        // The first of duplicated labels wins (ImageNet has a few).
        for (i, l) in labels.iter().enumerate().rev() {
            exact.insert(l.clone(), i);
            loose.insert(loosen(l), i);
        }
        Resolver {
            exact,
            loose,
            classes: labels.len(),
        }
    }

    pub fn resolve(&self, name: &str) -> Option<usize> {
        let name = name.trim();
        if let Some(&i) = self.exact.get(name) {
            return Some(i);
        }
        if let Some(&i) = self.loose.get(&loosen(name)) {
            return Some(i);
        }
        name.parse::<usize>().ok().filter(|&i| i < self.classes)
    }
}

fn image_folder(dir: &Path, resolver: &Resolver) -> Result<Vec<Sample>, EvalError> {
    let read = |p: &Path| {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
            .map_err(|source| EvalError::Read {
                path: p.display().to_string(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                !p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
            })
            .collect();
        entries.sort();
        Ok::<_, EvalError>(entries)
    };
    let mut samples = Vec::new();
    for class_dir in read(dir)?.into_iter().filter(|p| p.is_dir()) {
        let name = class_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let class = resolver
            .resolve(&name)
            .ok_or_else(|| EvalError::UnknownClass {
                name: name.clone(),
                at: class_dir.display().to_string(),
            })?;
        for file in read(&class_dir)? {
            let is_image = file
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
            if file.is_file() && is_image {
                samples.push(Sample { path: file, class });
            }
        }
    }
    Ok(samples)
}

/// Whether a CSV row's path stays inside the folder it is read from: relative, without
/// `..` steps (`a/./b.png` is fine).
fn relative_inside(row: &str) -> Result<(), &'static str> {
    use std::path::Component;
    for component in Path::new(row).components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err("a '..' step leaves it"),
            Component::RootDir | Component::Prefix(_) => {
                return Err("an absolute path; name files relative to the CSV");
            }
        }
    }
    Ok(())
}

/// Parses `path,label` rows into samples under `base`; see [`rows`].
pub fn csv(text: &str, base: &Path, resolver: &Resolver) -> Result<Vec<Sample>, (usize, String)> {
    Ok(rows(text, resolver)?
        .into_iter()
        .map(|(_, path, class)| Sample {
            path: base.join(path),
            class,
        })
        .collect())
}

/// One CSV row: its 1-based line, its path as written, its class.
pub type Row = (usize, String, usize);

/// Parses `path,label` rows into `(1-based line, path, class)`; a first row `path,label`
/// is a header. Fields may be quoted with `"` (a doubled `""` inside is one quote). Blank
/// lines and `#` comments are skipped. Errors are `(1-based line, message)`.
pub fn rows(text: &str, resolver: &Resolver) -> Result<Vec<Row>, (usize, String)> {
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let fields = split_csv_line(line).map_err(|m| (number, m))?;
        let [path, label] = fields.as_slice() else {
            return Err((
                number,
                format!("expected 2 fields (path,label), found {}", fields.len()),
            ));
        };
        if samples.is_empty()
            && path.trim().eq_ignore_ascii_case("path")
            && label.trim().eq_ignore_ascii_case("label")
        {
            continue;
        }
        if path.trim().is_empty() {
            return Err((number, "empty path".into()));
        }
        let class = resolver
            .resolve(label)
            .ok_or_else(|| (number, format!("unknown class {label:?}")))?;
        samples.push((number, path.trim().to_string(), class));
    }
    Ok(samples)
}

fn split_csv_line(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.trim().is_empty() && !was_quoted => {
                field.clear();
                quoted = true;
                was_quoted = true;
            }
            (false, ',') => {
                fields.push(std::mem::take(&mut field));
                was_quoted = false;
            }
            (false, c) => field.push(c),
        }
    }
    if quoted {
        return Err("unterminated quoted field".into());
    }
    fields.push(field);
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        ["red", "green", "tabby cat", "crane", "crane"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn names_resolve_exactly_loosely_or_by_index() {
        let r = Resolver::new(&labels());
        assert_eq!(r.resolve("red"), Some(0));
        assert_eq!(r.resolve("Tabby_Cat"), Some(2));
        assert_eq!(r.resolve("crane"), Some(3), "first duplicate");
        assert_eq!(r.resolve("4"), Some(4));
        assert_eq!(r.resolve("5"), None);
        assert_eq!(r.resolve("blue"), None);
    }

    #[test]
    fn csv_rows_with_header_quotes_and_comments() {
        let r = Resolver::new(&labels());
        let text =
            "path,label\n# a comment\na.png,red\n\"b,1.png\",\"tabby cat\"\r\n\nsub/c.jpg,4\n";
        let s = csv(text, Path::new("/d"), &r).expect("parses");
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].path, PathBuf::from("/d/a.png"));
        assert_eq!(s[1].path, PathBuf::from("/d/b,1.png"));
        assert_eq!(s[1].class, 2);
        assert_eq!(s[2].class, 4);
    }

    #[test]
    fn bad_csv_rows_name_their_line() {
        let r = Resolver::new(&labels());
        let err = csv("a.png,red\nb.png\n", Path::new("."), &r).expect_err("fields");
        assert_eq!(err.0, 2);
        let err = csv("a.png,purple\n", Path::new("."), &r).expect_err("class");
        assert!(err.1.contains("purple"));
        let err = csv("\"a.png,red\n", Path::new("."), &r).expect_err("quote");
        assert!(err.1.contains("unterminated"));
    }

    #[test]
    fn a_confined_set_refuses_rows_outside_its_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let csv = dir.path().join("set.csv");
        for (row, ok) in [
            ("a.png", true),
            ("./sub/a.png", true),
            ("/etc/passwd", false),
            ("/dev/zero", false),
            ("../a.png", false),
            ("sub/../../a.png", false),
        ] {
            std::fs::write(&csv, format!("path,label\n{row},red\n")).expect("write");
            let loaded = load_within(&csv, dir.path(), &labels());
            match (ok, loaded) {
                (true, Ok(s)) => assert!(s[0].path.starts_with(dir.path()), "{row}"),
                (false, Err(EvalError::Outside { line: 2, .. })) => {}
                (_, other) => panic!("{row}: {other:?}"),
            }
            // The command line's own sets may name any file.
            assert!(load(&csv, &labels()).is_ok(), "{row}");
        }
    }

    #[test]
    fn image_folders_skip_hidden_and_non_images() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (class, file) in [
            ("red", "1.png"),
            ("red", "2.JPG"),
            ("red", "notes.txt"),
            ("green", ".hidden.png"),
            ("green", "3.png"),
        ] {
            std::fs::create_dir_all(dir.path().join(class)).expect("mkdir");
            std::fs::write(dir.path().join(class).join(file), b"x").expect("write");
        }
        let s = load(dir.path(), &labels()).expect("loads");
        assert_eq!(s.iter().map(|s| s.class).collect::<Vec<_>>(), vec![1, 0, 0]);
        std::fs::create_dir_all(dir.path().join("purple")).expect("mkdir");
        let err = load(dir.path(), &labels()).expect_err("unknown class");
        assert!(err.to_string().contains("purple"), "{err}");
        let empty = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            load(empty.path(), &labels()),
            Err(EvalError::EmptyDataset(_))
        ));
        assert!(matches!(
            load(Path::new("/nonexistent/x"), &labels()),
            Err(EvalError::NoDataset(_))
        ));
    }
}
