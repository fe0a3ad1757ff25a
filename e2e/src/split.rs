//! The three roles as three `sightline-server` processes on loopback (store, recognize,
//! upload wired to the other two, as in a cluster: the upload role is the front door and
//! the model fetches nothing), throwaway databases on the PostgreSQL and MariaDB
//! servers, test images, and the client calls the process tests and the load command share.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};

use crate::process::{ScratchDir, ServerProcess, free_port, free_ports, require_server_binary};
use crate::{models, ort_lib, require};
use std::time::Instant;

/// A solid-colour PNG.
pub fn png(rgb: [u8; 3], w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb(rgb));
    let mut out = std::io::Cursor::new(Vec::new());
    // Encoding an in-memory RGB image into a Vec cannot fail.
    let _ = image::DynamicImage::ImageRgb8(img).write_to(&mut out, image::ImageFormat::Png);
    out.into_inner()
}

/// A `size`×`size` PNG of one colour.
pub fn solid_png(rgb: [u8; 3], size: u32) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(size, size, image::Rgb(rgb));
    let mut out = std::io::Cursor::new(Vec::new());
    let _ = image::DynamicImage::ImageRgb8(img).write_to(&mut out, image::ImageFormat::Png);
    out.into_inner()
}

/// A PNG that differs from `unique_png(m)` for every `m != n`: a red, green or blue field
/// (so the test classifier has a clear answer) with `n` written into its first pixels.
pub fn unique_png(n: u64) -> Vec<u8> {
    let colour = [[230, 20, 20], [20, 230, 20], [20, 20, 230]][(n % 3) as usize];
    let mut img = image::RgbImage::from_pixel(24, 24, image::Rgb(colour));
    for (i, byte) in n.to_le_bytes().iter().enumerate() {
        img.put_pixel(i as u32, 0, image::Rgb([*byte, *byte, *byte]));
    }
    let mut out = std::io::Cursor::new(Vec::new());
    let _ = image::DynamicImage::ImageRgb8(img).write_to(&mut out, image::ImageFormat::Png);
    out.into_inner()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    Mariadb,
}

impl Backend {
    /// Where the machine's server listens (none for SQLite).
    pub fn server_addr(self) -> Option<&'static str> {
        match self {
            Backend::Sqlite => None,
            Backend::Postgres => Some("127.0.0.1:5432"),
            Backend::Mariadb => Some("127.0.0.1:3306"),
        }
    }
}

/// A fresh database on a server (made with its command-line client), dropped again when
/// this is dropped. `url` is `None` for SQLite (in the store's data dir).
pub struct TempDatabase {
    pub url: Option<String>,
    /// The database's name on its server.
    pub name: String,
    drop_command: Option<(&'static str, Vec<String>)>,
}

impl TempDatabase {
    /// The URL with its `host:port` replaced (to reach the server through a proxy).
    pub fn url_via(&self, host_port: &str) -> Option<String> {
        let url = self.url.as_deref()?;
        let (scheme, rest) = url.split_once("://")?;
        let (authority, path) = rest.split_once('/')?;
        let user = authority
            .rsplit_once('@')
            .map(|(u, _)| format!("{u}@"))
            .unwrap_or_default();
        Some(format!("{scheme}://{user}{host_port}/{path}"))
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        if let Some((program, args)) = self.drop_command.take() {
            let _ = Command::new(program).args(args).output();
        }
    }
}

/// `None` after a loud notice when the server is unreachable outside CI; a failure under CI.
pub fn fresh_database(db: Backend) -> Option<TempDatabase> {
    let name = format!(
        "sightline_e2e_{}_{}",
        std::process::id(),
        free_port().unwrap_or(0)
    );
    let (program, base, create, drop, url): (&'static str, Vec<String>, String, String, String) =
        match db {
            Backend::Sqlite => {
                return Some(TempDatabase {
                    url: None,
                    name,
                    drop_command: None,
                });
            }
            Backend::Postgres => (
                "psql",
                ["-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-c"]
                    .map(String::from)
                    .to_vec(),
                format!("CREATE DATABASE {name}"),
                format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                format!("postgres://postgres@127.0.0.1:5432/{name}"),
            ),
            Backend::Mariadb => (
                "mysql",
                ["-h", "127.0.0.1", "-u", "root", "-e"]
                    .map(String::from)
                    .to_vec(),
                format!("CREATE DATABASE {name}"),
                format!("DROP DATABASE IF EXISTS {name}"),
                format!("mysql://root@127.0.0.1:3306/{name}"),
            ),
        };
    let with = |sql: String| {
        let mut args = base.clone();
        args.push(sql);
        args
    };
    match Command::new(program).args(with(create)).output() {
        Ok(out) if out.status.success() => Some(TempDatabase {
            url: Some(url),
            name,
            drop_command: Some((program, with(drop))),
        }),
        other => {
            let why = match other {
                Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            crate::skip(&format!(
                "cannot create a {db:?} database with {program}: {why}"
            ));
            None
        }
    }
}

/// How to start the three roles.
#[derive(Debug, Clone, Default)]
pub struct SplitOptions {
    /// The store's database; SQLite in its data dir when `None`.
    pub database_url: Option<String>,
    /// Flags given to all three.
    pub common: Vec<String>,
    /// The upload role's recognize URL instead of the recognize process's own (a proxy in
    /// front of it); the listener must exist before the split starts.
    pub recognize_url: Option<String>,
    /// The upload role's own data dir instead of one in the scratch dir.
    pub upload_data_dir: Option<String>,
    /// Flags given to the upload role only (the front door), after `common`.
    pub upload_extra: Vec<String>,
}

/// Flags of the recognize role as the split runs it: the test classifier, and nothing to
/// fetch images from (the front door sends the bytes of an image named by URL).
pub fn model_args() -> Vec<String> {
    vec![
        "--model".into(),
        models().join("test-classifier.onnx").display().to_string(),
        "--ort-lib".into(),
        ort_lib().display().to_string(),
        "--intra-threads".into(),
        "1".into(),
    ]
}

/// [`model_args`] plus `--upload-url` of the upload role on `upload_port`, for tests of a
/// recognize role that fetches images by URL itself.
pub fn recognize_args(upload_port: u16) -> Vec<String> {
    let mut args = model_args();
    args.extend([
        "--upload-url".into(),
        format!("http://127.0.0.1:{upload_port}/api/v1/images"),
    ]);
    args
}

/// Flags of the upload role.
pub fn upload_args(data_dir: &str, recognize_url: &str, store_url: &str) -> Vec<String> {
    vec![
        "--data-dir".into(),
        data_dir.into(),
        "--recognize-url".into(),
        recognize_url.into(),
        "--store-url".into(),
        store_url.into(),
        "--downstream-timeout-secs".into(),
        "5".into(),
    ]
}

/// Flags of the store role.
pub fn store_args(data_dir: &str, database_url: Option<&str>) -> Vec<String> {
    let mut args = vec!["--data-dir".to_string(), data_dir.to_string()];
    if let Some(url) = database_url {
        args.extend(["--database-url".to_string(), url.to_string()]);
    }
    args
}

/// store + recognize + upload, each its own process, the upload role wired to the others.
pub struct Split {
    pub store: ServerProcess,
    pub recognize: ServerProcess,
    pub upload: ServerProcess,
    pub dir: ScratchDir,
}

impl Split {
    /// For tests: `None` after a loud notice when the binary or the model is missing
    /// (a failure under CI); panics when a process does not start.
    pub fn start(database_url: Option<&str>) -> Option<Split> {
        Self::start_with(database_url, &[])
    }

    /// With `common` flags given to all three.
    pub fn start_with(database_url: Option<&str>, common: &[&str]) -> Option<Split> {
        Self::start_opts(&SplitOptions {
            database_url: database_url.map(str::to_string),
            common: common.iter().map(|s| s.to_string()).collect(),
            ..SplitOptions::default()
        })
    }

    pub fn start_opts(options: &SplitOptions) -> Option<Split> {
        let binary = require_server_binary()?;
        if !require(&[ort_lib(), models().join("test-classifier.onnx")]) {
            return None;
        }
        match Split::launch(&binary, options) {
            Ok(split) => Some(split),
            Err(e) => panic!("the split services did not start: {e:#}"),
        }
    }

    /// Starts the three with `binary`.
    pub fn launch(binary: &Path, options: &SplitOptions) -> anyhow::Result<Split> {
        let dir = ScratchDir::new("split")?;
        let data = |role: &str| dir.path().join(role).display().to_string();
        let ports = free_ports(3)?;
        let (store_port, recognize_port, upload_port) = (ports[0], ports[1], ports[2]);
        let common = &options.common;
        let store_args = [
            store_args(&data("store"), options.database_url.as_deref()),
            common.clone(),
        ]
        .concat();
        let store = ServerProcess::start_on(binary, "store", store_port, &store_args, dir.path())
            .context("start the store role")?;
        let recognize_args = [model_args(), common.clone()].concat();
        let recognize = ServerProcess::start_on(
            binary,
            "recognize",
            recognize_port,
            &recognize_args,
            dir.path(),
        )
        .context("start the recognize role")?;
        let recognize_url = options
            .recognize_url
            .clone()
            .unwrap_or_else(|| format!("http://127.0.0.1:{recognize_port}"));
        let upload_data = options
            .upload_data_dir
            .clone()
            .unwrap_or_else(|| data("upload"));
        let upload_args = [
            upload_args(
                &upload_data,
                &recognize_url,
                &format!("http://127.0.0.1:{store_port}"),
            ),
            common.clone(),
            options.upload_extra.clone(),
        ]
        .concat();
        let upload =
            ServerProcess::start_on(binary, "upload", upload_port, &upload_args, dir.path())
                .context("start the upload role")?;
        Ok(Split {
            store,
            recognize,
            upload,
            dir,
        })
    }

    /// The end of each log (for failure messages).
    pub fn logs(&self) -> String {
        format!(
            "--- store ---\n{}\n--- recognize ---\n{}\n--- upload ---\n{}",
            self.store.log_tail(),
            self.recognize.log_tail(),
            self.upload.log_tail()
        )
    }
}

/// A client with a 30 s timeout.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// Status and JSON body (non-JSON bodies as `{"raw": text}`).
pub async fn try_json_of(response: reqwest::Response) -> anyhow::Result<(u16, Value)> {
    let status = response.status().as_u16();
    let text = response.text().await.context("read the response body")?;
    let value = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text }));
    Ok((status, value))
}

/// For tests: [`try_json_of`], panicking when the body cannot be read.
pub async fn json_of(response: reqwest::Response) -> (u16, Value) {
    try_json_of(response).await.expect("a readable body")
}

/// `POST {upload}/api/v1/pipeline` with a PNG.
pub async fn try_pipeline(
    client: &reqwest::Client,
    upload: &str,
    image: Vec<u8>,
) -> anyhow::Result<(u16, Value)> {
    let response = client
        .post(format!("{upload}/api/v1/pipeline"))
        .header("content-type", "image/png")
        .body(image)
        .send()
        .await
        .context("POST /api/v1/pipeline")?;
    try_json_of(response).await
}

/// For tests: [`try_pipeline`], panicking when the upload service does not answer.
pub async fn pipeline(client: &reqwest::Client, upload: &str, image: Vec<u8>) -> (u16, Value) {
    try_pipeline(client, upload, image)
        .await
        .expect("the upload service answers")
}

/// Every record in the store at `store` (its base URL), following the cursor.
pub async fn try_all_records(client: &reqwest::Client, store: &str) -> anyhow::Result<Vec<Value>> {
    let mut records = Vec::new();
    let mut uri = format!("{store}/api/v1/results?limit=1000");
    loop {
        let response = client.get(&uri).send().await.context("list results")?;
        let (status, page) = try_json_of(response).await?;
        anyhow::ensure!(status == 200, "listing results: {status} {page}");
        let items = page["items"]
            .as_array()
            .ok_or_else(|| anyhow::anyhow!("no items in {page}"))?;
        records.extend(items.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => uri = format!("{store}/api/v1/results?limit=1000&cursor={c}"),
            None => return Ok(records),
        }
    }
}

/// For tests: [`try_all_records`] of a store process, panicking on failure.
pub async fn all_records(client: &reqwest::Client, store: &ServerProcess) -> Vec<Value> {
    try_all_records(client, &store.url(""))
        .await
        .expect("list the records")
}

/// Records per image id.
pub fn records_per_image(records: &[Value]) -> HashMap<String, usize> {
    let mut per_image: HashMap<String, usize> = HashMap::new();
    for r in records {
        let id = r["image_id"].as_str().unwrap_or("<none>").to_string();
        *per_image.entry(id).or_default() += 1;
    }
    per_image
}

/// Re-runs a kept image (`POST {upload}/api/v1/images/{id}/recognize`), honouring
/// `Retry-After` while a breaker cools down, until it is stored; panics on anything but
/// `503` meanwhile, or after 40 s.
pub async fn rerun_until_stored(client: &reqwest::Client, upload: &str, image_id: &str) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let response = client
            .post(format!("{upload}/api/v1/images/{image_id}/recognize"))
            .send()
            .await
            .expect("re-run");
        let wait: u64 = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let (status, body) = json_of(response).await;
        if status == 201 || status == 200 {
            return;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            Instant::now() < deadline,
            "the re-run never succeeded: {body}"
        );
        tokio::time::sleep(Duration::from_secs(wait.min(5))).await;
    }
}
