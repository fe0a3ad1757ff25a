//! The API keys: parsed from the keys file and the environment under one policy, and the
//! keys file re-read while the server runs.
//!
//! One policy for every key, wherever it comes from: at least [`MIN_KEY_LEN`] characters,
//! `key` or `name:key`. A key without a name gets one made from where it was read
//! (`file:3`, `env:2`): it holds a `:`, which a given name never does (the name ends at the
//! first `:`), so a made name never equals another key's. Names are for logs only; each key
//! is told apart by its digest (rate-limit buckets are per digest), so two keys never share
//! a bucket whatever they are called.
//!
//! The keys file (`--api-keys-file`) is read by path every [`POLL_INTERVAL`], like the
//! traffic file: a Kubernetes Secret volume is updated by the kubelet swapping a symlink
//! (`..data`) with a rename, so nothing may be held open, and a `subPath` mount never
//! updates at all (mount the whole Secret). A changed file with valid keys replaces the file's
//! keys at once; a malformed one, an empty one (no key: that would turn authentication off)
//! or a missing one keeps the last good keys, and says so in the log once per change.

use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

/// Shortest key accepted, from the file or the environment.
pub const MIN_KEY_LEN: usize = 8;
/// How often the keys file is read again.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Largest keys file read (a few thousand keys).
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// One key: its name (for logs) and the SHA-256 of its text (never the text itself).
#[derive(Clone)]
pub struct Key {
    pub name: String,
    pub digest: [u8; 32],
}

/// Why a list of keys was refused: the line or item (1-based) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub line: usize,
    pub reason: &'static str,
}

/// Where keys come from: the made name's prefix.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// `--api-keys-file`: one key a line, blank lines and `#` comments skipped.
    File,
    /// `--api-keys` / `SIGHTLINE_API_KEYS`: one key an item.
    Env,
}

impl Source {
    fn prefix(self) -> &'static str {
        match self {
            Source::File => "file",
            Source::Env => "env",
        }
    }
}

/// One `key` or `name:key` entry found at `line` of `source`.
fn entry(text: &str, source: Source, line: usize) -> Result<Key, Invalid> {
    let invalid = |reason| Invalid { line, reason };
    let (name, key) = match text.split_once(':') {
        Some((name, key)) => (name.trim().to_string(), key.trim()),
        None => (format!("{}:{line}", source.prefix()), text.trim()),
    };
    if name.is_empty() {
        return Err(invalid("a key's name before ':' must not be empty"));
    }
    if key.chars().count() < MIN_KEY_LEN {
        return Err(invalid("keys must be at least 8 characters"));
    }
    Ok(Key {
        name,
        digest: Sha256::digest(key.as_bytes()).into(),
    })
}

/// The keys of a keys file's text.
pub fn parse_file(text: &str) -> Result<Vec<Key>, Invalid> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        keys.push(entry(line, Source::File, i + 1)?);
    }
    Ok(keys)
}

/// The keys given in the environment (or by `--api-keys`); empty items are skipped.
pub fn parse_env(items: &[String]) -> Result<Vec<Key>, Invalid> {
    items
        .iter()
        .enumerate()
        .filter(|(_, item)| !item.trim().is_empty())
        .map(|(i, item)| entry(item.trim(), Source::Env, i + 1))
        .collect()
}

/// The keys file's bytes, read by path (nothing held open between reads), at most
/// [`MAX_FILE_BYTES`].
pub async fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = tokio::fs::File::open(path).await?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .await?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_FILE_BYTES} bytes"),
        ));
    }
    Ok(bytes)
}

/// Checks a new reading of the keys file: its keys, or why the last good ones stay.
pub fn judge(read: std::io::Result<Vec<u8>>) -> Result<Vec<Key>, String> {
    let bytes = read.map_err(|e| format!("cannot read it: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|_| "it is not UTF-8 text".to_string())?;
    let keys = parse_file(&text).map_err(|e| format!("line {}: {}", e.line, e.reason))?;
    if keys.is_empty() {
        return Err("it holds no key (an empty file would turn authentication off)".into());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_names_never_equal_given_ones_and_short_keys_are_refused_everywhere() {
        let keys = parse_file("# c\nkey2:first-key-aaaa\n\nsecond-key-bbbb\n").expect("keys");
        assert_eq!(keys[0].name, "key2");
        assert_eq!(keys[1].name, "file:4");
        let env = parse_env(&[
            "carol:carol-key-1".into(),
            " ".into(),
            "plain-key-22".into(),
        ])
        .expect("keys");
        assert_eq!(env[1].name, "env:3");
        assert_eq!(
            parse_env(&["ci:short".into()]).err(),
            Some(Invalid {
                line: 1,
                reason: "keys must be at least 8 characters"
            })
        );
        assert!(parse_file("a:1234567\n").is_err());
        assert!(parse_file(":12345678\n").is_err(), "an empty name");
    }

    #[test]
    fn a_reading_without_keys_keeps_the_last_good_ones() {
        assert!(judge(Ok(b"team:good-key-123\n".to_vec())).is_ok());
        for bad in [
            &b""[..],
            b"# only a comment\n",
            b"team:short\n",
            b"\xff\xfe",
        ] {
            assert!(judge(Ok(bad.to_vec())).is_err(), "{bad:?}");
        }
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert!(judge(Err(missing)).is_err());
    }
}
