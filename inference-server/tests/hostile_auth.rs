//! One key policy (issue 18, finding 13): keys from the environment are held to the same
//! minimum length as keys from the file, generated key names never collide (two keys never
//! share a rate-limit bucket), a non-Bearer `Authorization` header does not hide a valid
//! `X-API-Key`, and the keys file is re-read when it changes — replaced the way the kubelet
//! updates a mounted Secret — so a rotation needs no restart, while a malformed or empty new
//! file keeps the last good keys.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use sightline_server::auth::Auth;
use support::{body_json, send};

/// A keys file as the kubelet keeps a Secret's key: `keys` → `..data/keys`, `..data` →
/// `..<version>`; each write makes a new version directory and swaps `..data` with a rename
/// (what `AtomicWriter` in the kubelet does), so a reader sees the old file or the new one,
/// whole, and never an open file being rewritten.
struct SecretDir {
    root: PathBuf,
    version: u32,
}

impl SecretDir {
    fn new(root: &Path) -> SecretDir {
        SecretDir {
            root: root.to_path_buf(),
            version: 0,
        }
    }

    fn path(&self) -> PathBuf {
        self.root.join("keys")
    }

    fn write(&mut self, text: &str) {
        let old = format!("..v{}", self.version);
        self.version += 1;
        let new = format!("..v{}", self.version);
        std::fs::create_dir(self.root.join(&new)).expect("a version directory");
        std::fs::write(self.root.join(&new).join("keys"), text).expect("write the keys");
        let tmp = self.root.join("..data_tmp");
        std::os::unix::fs::symlink(&new, &tmp).expect("link ..data_tmp");
        std::fs::rename(&tmp, self.root.join("..data")).expect("swap ..data");
        if self.version == 1 {
            std::os::unix::fs::symlink("..data/keys", self.path()).expect("link keys");
        } else {
            std::fs::remove_dir_all(self.root.join(old)).expect("remove the old version");
        }
    }
}

/// A call that needs a key and is refused after the key check (an empty upload: 400).
async fn status_with(app: &Router, header: (&str, &str)) -> StatusCode {
    let request = Request::post("/api/v1/images")
        .header("content-type", "image/png")
        .header(header.0, header.1)
        .body(Body::empty())
        .expect("request");
    let (status, response) = send(app, request).await;
    let body = body_json(response).await;
    assert!(body["error"].is_string(), "{body}");
    status
}

async fn bearer(app: &Router, key: &str) -> StatusCode {
    status_with(app, ("authorization", &format!("Bearer {key}"))).await
}

/// Polls until `key` gets `want` (the keys file is re-read every second).
async fn eventually(app: &Router, key: &str, want: StatusCode) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if bearer(app, key).await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[test]
fn keys_from_the_environment_need_the_same_length_as_file_keys() {
    let short = Auth::new(None, &["ci:short".into()], 0.0, None);
    assert!(short.is_err(), "a 5-character key from the environment");
    let unnamed = Auth::new(None, &["1234567".into()], 0.0, None);
    assert!(unnamed.is_err(), "a 7-character unnamed key");
    assert!(Auth::new(None, &["ci:12345678".into()], 0.0, None).is_ok());
}

#[tokio::test]
async fn generated_key_names_never_share_a_bucket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("keys");
    // The second line has no name: before, it was called `key2`, like the first.
    std::fs::write(&file, "key2:first-key-aaaa\nsecond-key-bbbb\n").expect("write");
    let keys = file.display().to_string();
    let app = support::unloaded_app(
        "upload",
        dir.path(),
        &[
            "--api-keys-file",
            &keys,
            "--api-keys",
            "third-key-cccc",
            "--rate-limit-rps",
            "0.01",
            "--rate-limit-burst",
            "1",
        ],
    )
    .await;
    assert_eq!(
        bearer(&app, "first-key-aaaa").await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        bearer(&app, "second-key-bbbb").await,
        StatusCode::BAD_REQUEST,
        "another key has a bucket of its own"
    );
    assert_eq!(
        bearer(&app, "third-key-cccc").await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        bearer(&app, "first-key-aaaa").await,
        StatusCode::TOO_MANY_REQUESTS,
        "the first key's bucket is spent"
    );
}

#[tokio::test]
async fn a_basic_authorization_header_does_not_hide_a_valid_api_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app =
        support::unloaded_app("upload", dir.path(), &["--api-keys", "ci:the-valid-key-1"]).await;
    let request = Request::post("/api/v1/images")
        .header("content-type", "image/png")
        .header("authorization", "Basic dXNlcjpwYXNz")
        .header("x-api-key", "the-valid-key-1")
        .body(Body::empty())
        .expect("request");
    let (status, response) = send(&app, request).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "{}",
        body_json(response).await
    );
    // A Bearer token that is wrong is still refused, whatever else is sent.
    let request = Request::post("/api/v1/images")
        .header("authorization", "Bearer wrong-key-0000")
        .body(Body::empty())
        .expect("request");
    assert_eq!(send(&app, request).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        status_with(&app, ("authorization", "Basic dXNlcjpwYXNz")).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_keys_file_applies_without_a_restart_and_a_bad_one_keeps_the_last_good() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = tempfile::tempdir().expect("tempdir");
    let mut keys = SecretDir::new(secret.path());
    keys.write("team:old-key-11111111\n");
    let path = keys.path().display().to_string();
    let app = support::unloaded_app("upload", dir.path(), &["--api-keys-file", &path]).await;
    assert_eq!(
        bearer(&app, "old-key-11111111").await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        bearer(&app, "new-key-22222222").await,
        StatusCode::UNAUTHORIZED
    );

    keys.write("team:new-key-22222222\n");
    assert!(
        eventually(&app, "new-key-22222222", StatusCode::BAD_REQUEST).await,
        "the rotated key is taken without a restart"
    );
    assert_eq!(
        bearer(&app, "old-key-11111111").await,
        StatusCode::UNAUTHORIZED
    );

    // A malformed file (a key under 8 characters) and an empty one keep the last good keys.
    for bad in ["team:short\n", "", "# nothing but a comment\n"] {
        keys.write(bad);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(
            bearer(&app, "new-key-22222222").await,
            StatusCode::BAD_REQUEST,
            "after {bad:?}"
        );
    }
    keys.write("team:third-key-33333333\n");
    assert!(eventually(&app, "third-key-33333333", StatusCode::BAD_REQUEST).await);
    assert_eq!(
        bearer(&app, "new-key-22222222").await,
        StatusCode::UNAUTHORIZED
    );
}
