//! The images of a folder, in a fixed order, and a deterministic shard of them.

use std::path::{Path, PathBuf};

use crate::BatchError;

/// File name endings taken as images (case-insensitive); other files are not listed.
pub const IMAGE_ENDINGS: [&str; 7] = ["jpg", "jpeg", "png", "webp", "gif", "bmp", "jfif"];

/// One image to recognize: its path relative to the input folder (the name results carry)
/// and where it is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Item {
    /// Relative to the input folder (or the bucket prefix), `/`-separated.
    pub name: String,
    /// The file; for an object store ([`objects`]), the object's key.
    pub path: PathBuf,
}

/// Every image file under `root` (sub-folders included, hidden entries and symlinks
/// skipped), sorted by name, so every run and every shard sees the same order.
pub fn list(root: &Path) -> Result<Vec<Item>, BatchError> {
    if !root.is_dir() {
        return Err(BatchError::NotAFolder(root.to_path_buf()));
    }
    let mut items = Vec::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let error = |source| BatchError::List {
            path: folder.clone(),
            source,
        };
        for entry in std::fs::read_dir(&folder).map_err(error)? {
            let entry = entry.map_err(error)?;
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            if file_name.starts_with('.') {
                continue;
            }
            let kind = entry.file_type().map_err(error)?;
            let path = entry.path();
            if kind.is_dir() {
                folders.push(path);
            } else if kind.is_file() && is_image_name(file_name) {
                let name = name_in(root, &path).unwrap_or_else(|| file_name.to_string());
                items.push(Item { name, path });
            }
        }
    }
    items.sort();
    Ok(items)
}

/// The name results carry for `path` under `root`: relative, `/`-separated; `None` when
/// `path` is not under `root`.
pub fn name_in(root: &Path, path: &Path) -> Option<String> {
    let relative = path.strip_prefix(root).ok()?;
    Some(
        relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/"),
    )
}

/// The images among an object store's keys under `prefix`: the same rule as for a folder
/// (image endings only, no segment starting with `.`), named relative to the prefix,
/// sorted.
pub fn objects(prefix: &str, keys: impl IntoIterator<Item = String>) -> Vec<Item> {
    let prefix = prefix.trim_matches('/');
    let mut items: Vec<Item> = keys
        .into_iter()
        .filter_map(|key| {
            let name = if prefix.is_empty() {
                key.as_str()
            } else {
                key.strip_prefix(prefix)?.strip_prefix('/')?
            };
            let visible = !name.is_empty() && name.split('/').all(|s| !s.starts_with('.'));
            (visible && is_image_name(name)).then(|| Item {
                name: name.to_string(),
                path: PathBuf::from(&key),
            })
        })
        .collect();
    items.sort();
    items
}

fn is_image_name(name: &str) -> bool {
    name.rsplit_once('.').is_some_and(|(_, ending)| {
        IMAGE_ENDINGS
            .iter()
            .any(|known| known.eq_ignore_ascii_case(ending))
    })
}

/// The items of shard `index` of `count`: every `count`-th item from position `index`.
pub fn shard(items: Vec<Item>, index: usize, count: usize) -> Result<Vec<Item>, BatchError> {
    if index >= count {
        return Err(BatchError::Shard { index, count });
    }
    Ok(items
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % count == index)
        .map(|(_, item)| item)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_listed_in_order_and_shards_cover_them_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("b/c")).expect("mkdir");
        for name in [
            "z.JPG",
            "a.png",
            "b/c/x.webp",
            "b/y.gif",
            "notes.txt",
            ".hidden.png",
        ] {
            std::fs::write(root.join(name), b"x").expect("write");
        }
        let names: Vec<String> = list(root)
            .expect("list")
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(names, ["a.png", "b/c/x.webp", "b/y.gif", "z.JPG"]);
        let mut seen = Vec::new();
        for index in 0..3 {
            seen.extend(shard(list(root).expect("list"), index, 3).expect("shard"));
        }
        seen.sort();
        assert_eq!(seen, list(root).expect("list"));
        assert!(shard(Vec::new(), 3, 3).is_err());
        assert!(matches!(
            list(&root.join("a.png")),
            Err(BatchError::NotAFolder(_))
        ));
    }

    #[test]
    fn object_keys_are_listed_like_files() {
        let keys = [
            "photos/z.JPG",
            "photos/a.png",
            "photos/b/.cache/x.png",
            "photos/b/y.gif",
            "photos/notes.txt",
            "photos-old/a.png",
            "other/a.png",
        ]
        .map(String::from);
        let items = objects("photos/", keys.clone());
        let names: Vec<&str> = items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["a.png", "b/y.gif", "z.JPG"]);
        assert_eq!(items[1].path, PathBuf::from("photos/b/y.gif"));
        assert_eq!(objects("", keys).len(), 5);
    }
}
