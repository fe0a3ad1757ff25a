//! Faults on the three split services (separate processes on loopback), each with the same
//! verdict: clear errors while it lasts (a `503` naming the component, a `507` for a full
//! disk — never a `500` or a hang), recovery without a restart of anything else, and every
//! acknowledged request durable: its image stored, its result stored exactly once.
//!
//! How each fault is made:
//! - `kill -9` of recognize or upload during a burst: SIGKILL of the process, restarted on
//!   the same port (the store's case is in `pipeline_processes.rs`).
//! - The database down and back: a TCP proxy between the store and PostgreSQL / MariaDB
//!   that closes every connection and refuses new ones, then lets them through again (the
//!   machine's database server itself is never stopped).
//! - A full image store: the upload role's data dir on a 2 MiB tmpfs (`mount -t tmpfs`,
//!   root only — CI runs as root; skipped loudly elsewhere), grown with `remount` to recover.
//! - A slow recognize service: a TCP proxy in front of it that delays every chunk.
//!
//! Needs `target/debug/sightline-server` (`make test` builds it first).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use sightline_e2e::load::pipeline_burst;
use sightline_e2e::netfault::{FaultProxy, Link};
use sightline_e2e::process::ServerProcess;
use sightline_e2e::split::{
    Backend, Split, SplitOptions, all_records, client, fresh_database, json_of, pipeline,
    records_per_image, rerun_until_stored, unique_png,
};
use sightline_server::upload::sha256_hex;

/// Every image in `images` has exactly one record, and there are no others; every one
/// can be downloaded from the upload service with the bytes it had.
async fn assert_each_stored_once(split: &Split, images: &[Vec<u8>]) {
    let client = client();
    let records = all_records(&client, &split.store).await;
    let per_image = records_per_image(&records);
    let wanted: HashSet<String> = images.iter().map(|i| sha256_hex(i)).collect();
    for id in &wanted {
        assert_eq!(
            per_image.get(id),
            Some(&1),
            "image {id}: records {per_image:?}"
        );
        let response = client
            .get(split.upload.url(&format!("/api/v1/images/{id}")))
            .send()
            .await
            .expect("download");
        assert_eq!(response.status().as_u16(), 200, "image {id} is kept");
        let bytes = response.bytes().await.expect("bytes");
        assert_eq!(sha256_hex(&bytes), *id, "image {id} is intact");
    }
    assert_eq!(
        records.len(),
        wanted.len(),
        "no other records: {per_image:?}"
    );
}

/// Waits until `process` answers `/readyz` with `status`.
async fn wait_readyz(process: &ServerProcess, status: u16, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    let client = client();
    loop {
        if let Ok(response) = client.get(process.url("/readyz")).send().await {
            let (got, body) = json_of(response).await;
            if got == status {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{} /readyz still {got} after {timeout:?}: {body}",
                process.role
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Recognize,
    Upload,
}

/// A burst of pipeline calls; `role` is killed with SIGKILL once some are stored and
/// restarted at once. Allowed answers: 2xx; a 503 naming the killed component with the
/// image kept (recognize); no answer at all while the front door itself is dead (upload).
/// Never a 500. Then the client retries what was not acknowledged, and every image ends
/// with exactly one record.
async fn killed_during_a_burst(role: Role) {
    let Some(split) = Split::start(None) else {
        return;
    };
    let client = client();
    let upload = split.upload.url("");
    let images: Vec<Vec<u8>> = (0..48).map(|i| unique_png(1000 + i)).collect();
    let burst = {
        let (client, upload, images) = (client.clone(), upload.clone(), images.clone());
        tokio::spawn(async move { pipeline_burst(&client, &upload, images.into_iter(), 6).await })
    };
    // Kill once a few records are in.
    let deadline = Instant::now() + Duration::from_secs(30);
    while all_records(&client, &split.store).await.len() < 6 {
        assert!(Instant::now() < deadline, "no records:\n{}", split.logs());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut split = split;
    let victim = match role {
        Role::Recognize => &mut split.recognize,
        Role::Upload => &mut split.upload,
    };
    victim.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Restarting waits for /readyz: block this worker, the burst runs on the other.
    tokio::task::block_in_place(|| victim.restart()).expect("the killed role restarts");
    let answers = burst.await.expect("burst");

    let mut acknowledged = 0;
    let mut again = Vec::new();
    for ((id, answer), image) in answers.iter().zip(&images) {
        match answer {
            Ok((200 | 201, body)) => {
                acknowledged += 1;
                assert_eq!(body["image_id"], id.as_str(), "{body}");
                continue;
            }
            Ok((503, body)) if role == Role::Recognize => {
                assert_eq!(body["component"], "recognize", "{body}");
                assert_eq!(
                    body["image"]["id"],
                    id.as_str(),
                    "the image is kept: {body}"
                );
            }
            Ok((status, body)) => panic!("unexpected {status}: {body}\n{}", split.logs()),
            Err(e) if role == Role::Upload => {
                eprintln!("no answer while upload was down: {e:#}");
            }
            Err(e) => panic!("no answer: {e:#}\n{}", split.logs()),
        }
        again.push(image.clone());
    }
    eprintln!(
        "{role:?} killed: {acknowledged} acknowledged, {} to retry",
        again.len()
    );
    assert!(acknowledged > 0);
    // What the client was not told succeeded, it sends again (a retry is safe: one record
    // per image and model).
    for image in again {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let (status, body) = pipeline(&client, &upload, image.clone()).await;
            if status == 200 || status == 201 {
                break;
            }
            assert_eq!(status, 503, "{body}");
            assert!(Instant::now() < deadline, "never stored: {body}");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    assert_each_stored_once(&split, &images).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_recognize_during_a_burst() {
    killed_during_a_burst(Role::Recognize).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_upload_during_a_burst() {
    killed_during_a_burst(Role::Upload).await;
}

/// The store's database goes away (a proxy closes every connection and refuses new ones)
/// and comes back. While it is away: the store's `/readyz` says `DatabaseUnreachable`, its
/// API answers `503`, pipeline calls answer `503` naming the store with the image kept.
/// Once it is back the store recovers by itself (no restart) and the kept images are
/// re-run; every image has one record.
async fn database_down_and_back(db: Backend) {
    let Some(database) = fresh_database(db) else {
        return;
    };
    let server = db
        .server_addr()
        .and_then(|a| a.parse().ok())
        .expect("a database server address");
    let proxy = FaultProxy::start(server).await.expect("proxy");
    let url = database.url_via(&proxy.host_port()).expect("proxied URL");
    let Some(split) = Split::start(Some(&url)) else {
        return;
    };
    let client = client();
    let upload = split.upload.url("");
    let before: Vec<Vec<u8>> = (0..6).map(|i| unique_png(2000 + i)).collect();
    for image in &before {
        let (status, body) = pipeline(&client, &upload, image.clone()).await;
        assert_eq!(status, 201, "{body}\n{}", split.logs());
    }

    proxy.set(Link::Cut);
    let body = wait_readyz(&split.store, 503, Duration::from_secs(15)).await;
    assert_eq!(body["reason"], "DatabaseUnreachable", "{body}");
    let (status, body) = json_of(
        client
            .get(split.store.url("/api/v1/results"))
            .send()
            .await
            .expect("list"),
    )
    .await;
    assert_eq!(
        status,
        503,
        "a clear 503, not a 500: {body}\n{}",
        split.logs()
    );
    assert!(body["error"].is_string(), "{body}");
    let during: Vec<Vec<u8>> = (0..4).map(|i| unique_png(2100 + i)).collect();
    let answers = pipeline_burst(&client, &upload, during.clone().into_iter(), 4).await;
    for (id, answer) in &answers {
        let (status, body) = answer.as_ref().expect("an answer");
        assert_eq!(*status, 503, "{body}\n{}", split.logs());
        assert_eq!(body["component"], "store", "{body}");
        assert_eq!(
            body["image"]["id"],
            id.as_str(),
            "the image is kept: {body}"
        );
    }

    proxy.set(Link::Up);
    wait_readyz(&split.store, 200, Duration::from_secs(30)).await;
    for id in answers.iter().map(|(id, _)| id) {
        rerun_until_stored(&client, &upload, id).await;
    }
    let after: Vec<Vec<u8>> = (0..6).map(|i| unique_png(2200 + i)).collect();
    for image in &after {
        let (status, body) = pipeline(&client, &upload, image.clone()).await;
        assert_eq!(status, 201, "{body}\n{}", split.logs());
    }
    let all = [before, during, after].concat();
    assert_each_stored_once(&split, &all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_and_back() {
    database_down_and_back(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_down_and_back() {
    database_down_and_back(Backend::Mariadb).await;
}

/// A tmpfs of `size` mounted on `path`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` after a loud notice when mounting is not permitted (not root) outside CI;
    /// a failure under CI (which runs as root).
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output();
        match out {
            Ok(out) if out.status.success() => Some(Tmpfs(path.to_path_buf())),
            other => {
                let why = match other {
                    Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
                    Err(e) => e.to_string(),
                };
                sightline_e2e::skip(&format!("cannot mount a tmpfs (needs root): {why}"));
                None
            }
        }
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(status.success(), "remount {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A PNG of noise (barely compressible): about 3 × `side`² bytes.
fn noise_png(seed: u64, side: u32) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let img = image::RgbImage::from_fn(side, side, |_, _| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let b = (state >> 33).to_le_bytes();
        image::Rgb([b[0], b[1], b[2]])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("encode");
    out.into_inner()
}

/// The upload role's image store fills up: uploads and pipeline calls get `507` with a
/// message saying so, nothing half-written is left, nothing is recorded for the refused
/// images, the acknowledged images stay intact, and once there is space again the same
/// process stores again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_store_full_is_a_507_and_recovers_when_space_is_freed() {
    let scratch = sightline_e2e::process::ScratchDir::new("diskfull").expect("scratch");
    let mount_point = scratch.path().join("upload");
    let Some(tmpfs) = Tmpfs::mount(&mount_point, "2m") else {
        return;
    };
    let Some(split) = Split::start_opts(&SplitOptions {
        upload_data_dir: Some(mount_point.display().to_string()),
        ..SplitOptions::default()
    }) else {
        return;
    };
    let client = client();
    let upload = split.upload.url("");
    let mut stored = Vec::new();
    let mut refused = None;
    for seed in 0..40 {
        let image = noise_png(seed, 200);
        let response = client
            .post(format!("{upload}/api/v1/images"))
            .header("content-type", "image/png")
            .body(image.clone())
            .send()
            .await
            .expect("upload");
        let (status, body) = json_of(response).await;
        match status {
            201 => stored.push(image),
            507 => {
                let message = body["error"].as_str().expect("an error message");
                assert!(message.contains("full"), "{message}");
                refused = Some(image);
                break;
            }
            other => panic!("unexpected {other}: {body}\n{}", split.logs()),
        }
    }
    let refused = refused.expect("2 MiB fills up within 40 images of 120 KB");
    assert!(!stored.is_empty());
    let leftovers = std::fs::read_dir(mount_point.join("images/tmp"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(leftovers, 0, "no half-written files");

    // The pipeline refuses the same way, before anything is recognized or recorded.
    let (status, body) = pipeline(&client, &upload, refused.clone()).await;
    assert_eq!(status, 507, "{body}");
    let healthz = client
        .get(split.upload.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(healthz.status().as_u16(), 200, "the process lives on");

    // Space again: the same process, no restart.
    tmpfs.resize("16m");
    for image in stored.iter().chain([&refused]) {
        let (status, body) = pipeline(&client, &upload, image.clone()).await;
        assert_eq!(status, 201, "{body}\n{}", split.logs());
    }
    let all: Vec<Vec<u8>> = stored.into_iter().chain([refused]).collect();
    assert_each_stored_once(&split, &all).await;
    drop(split);
    drop(tmpfs);
}

/// The recognize service slows down behind a proxy that delays every chunk: a little, and
/// calls still succeed; far past the upload role's 5 s downstream timeout, and calls end in
/// a `503` naming recognize within that deadline (no hang), the image kept. Once it is fast
/// again the kept images are re-run; one record each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_recognize_is_a_bounded_503_and_recovers() {
    // The proxy exists before the split so the upload role can be pointed at it; it learns
    // the recognize process's address once that runs.
    let placeholder = "127.0.0.1:9".parse().expect("addr");
    let proxy = FaultProxy::start(placeholder).await.expect("proxy");
    let Some(split) = Split::start_opts(&SplitOptions {
        recognize_url: Some(proxy.url("")),
        ..SplitOptions::default()
    }) else {
        return;
    };
    proxy.retarget(split.recognize.addr);
    let client = client();
    let upload = split.upload.url("");

    proxy.set(Link::Slow(Duration::from_millis(150)));
    let slow_but_fine: Vec<Vec<u8>> = (0..3).map(|i| unique_png(3000 + i)).collect();
    for image in &slow_but_fine {
        let (status, body) = pipeline(&client, &upload, image.clone()).await;
        assert_eq!(status, 201, "{body}\n{}", split.logs());
    }

    proxy.set(Link::Slow(Duration::from_secs(60)));
    let stuck: Vec<Vec<u8>> = (0..4).map(|i| unique_png(3100 + i)).collect();
    let started = Instant::now();
    let answers = pipeline_burst(&client, &upload, stuck.clone().into_iter(), 4).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "bounded by the downstream timeout, not the 60 s delay: {:?}",
        started.elapsed()
    );
    for (id, answer) in &answers {
        let (status, body) = answer.as_ref().expect("an answer");
        assert_eq!(*status, 503, "{body}");
        assert_eq!(body["component"], "recognize", "{body}");
        assert_eq!(
            body["image"]["id"],
            id.as_str(),
            "the image is kept: {body}"
        );
    }

    proxy.set(Link::Up);
    for (id, _) in &answers {
        rerun_until_stored(&client, &upload, id).await;
    }
    let all = [slow_but_fine, stuck].concat();
    assert_each_stored_once(&split, &all).await;
}
