//! The three roles as three separate `sightline-server` processes on loopback, as they run
//! as three Deployments: the seed's client flow (three calls, all through the upload role,
//! the pipeline's front door, with a model that fetches nothing), the one-call pipeline
//! through the upload role, `kill -9` of the store during a burst (every answered write is
//! there exactly once — on SQLite, PostgreSQL and MariaDB), and the recognize service down
//! (a `503` naming it, the image kept, the re-run working once it is back).
//!
//! Needs `target/debug/sightline-server` (`make test` builds it first).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use sightline_e2e::split::{
    Backend, Split, all_records, client, fresh_database, json_of, pipeline, png, rerun_until_stored,
};
use sightline_e2e::{require, venv_python};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_client_flow_across_three_processes() {
    let Some(split) = Split::start(None) else {
        return;
    };
    let client = client();
    let image = png([220, 30, 20], 64, 48);

    // 1. upload: multipart field `image` → 201 {"url"}
    let form = reqwest::multipart::Form::new().part(
        "image",
        reqwest::multipart::Part::bytes(image.clone()).file_name("cat.jpg"),
    );
    let response = client
        .post(split.upload.url("/api/images/upload"))
        .multipart(form)
        .send()
        .await
        .expect("upload");
    let (status, uploaded) = json_of(response).await;
    assert_eq!(status, 201, "{uploaded}\n{}", split.logs());
    let url = uploaded["url"].as_str().expect("url").to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "absolute: {url}");

    // 2. recognition by URL → 200 [{label, probability}] (top 3): the front door reads the
    // image from its own store and sends the bytes to recognize.
    let response = client
        .post(split.upload.url("/api/images/recognition"))
        .json(&json!({ "url": url }))
        .send()
        .await
        .expect("recognize");
    let (status, result) = json_of(response).await;
    assert_eq!(status, 200, "{result}\n{}", split.logs());
    let labels = result.as_array().expect("list");
    assert_eq!(labels.len(), 3);
    assert_eq!(labels[0]["label"], "red");
    assert!(labels[0]["probability"].as_f64().expect("p") > 0.5);

    // 3. save → 201, forwarded to the store
    let response = client
        .post(split.upload.url("/api/results/save"))
        .json(&json!({ "url": url, "result": result }))
        .send()
        .await
        .expect("save");
    let (status, saved) = json_of(response).await;
    assert_eq!(status, 201, "{saved}\n{}", split.logs());
    assert_eq!(saved["message"], "Result saved successfully");

    let records = all_records(&client, &split.store).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["image_url"], url.as_str());
    assert_eq!(records[0]["top_label"], "red");
    let id = sightline_server::upload::sha256_hex(&image);
    assert_eq!(
        records[0]["image_id"],
        id.as_str(),
        "the seed's record links to its image"
    );

    // No other URL is fetched: the front door takes only its own images' URLs (400), and
    // the model, given nothing to fetch from, refuses every URL (403).
    for base in [&split.upload, &split.recognize] {
        for target in [
            "http://169.254.169.254/latest/meta-data".to_string(),
            split.recognize.url(&format!("/api/v1/images/{id}")),
            url.clone(),
        ] {
            if target == url && base.role == "upload" {
                continue;
            }
            let response = client
                .post(base.url("/api/images/recognition"))
                .json(&json!({ "url": target }))
                .send()
                .await
                .expect("recognize");
            let expected = if base.role == "upload" { 400 } else { 403 };
            assert_eq!(
                response.status().as_u16(),
                expected,
                "{} {target}",
                base.role
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_pipeline_across_three_processes() {
    let Some(split) = Split::start(None) else {
        return;
    };
    let client = client();
    let (status, record) =
        pipeline(&client, &split.upload.url(""), png([20, 20, 230], 40, 40)).await;
    assert_eq!(status, 201, "{record}\n{}", split.logs());
    assert_eq!(record["top_label"], "blue");
    assert_eq!(record["model"]["name"], "test-classifier");
    let id = record["id"].as_str().expect("id");
    let (status, stored) = json_of(
        client
            .get(split.store.url(&format!("/api/v1/results/{id}")))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(stored["image_id"], record["image_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_hold_across_the_split_services() {
    let Some(split) = Split::start_with(None, &["--api-keys", "team:team-secret-key-1"]) else {
        return;
    };
    let client = client();
    let image = png([220, 20, 20], 20, 20);
    for role in [&split.upload, &split.recognize, &split.store] {
        let open = client
            .get(role.url("/readyz"))
            .send()
            .await
            .expect("readyz");
        assert_eq!(
            open.status().as_u16(),
            200,
            "{} health stays open",
            role.role
        );
    }
    let (status, body) = pipeline(&client, &split.upload.url(""), image.clone()).await;
    assert_eq!(status, 401, "{body}");
    let response = client
        .post(split.upload.url("/api/v1/pipeline"))
        .bearer_auth("team-secret-key-1")
        .header("content-type", "image/png")
        .body(image)
        .send()
        .await
        .expect("pipeline");
    let (status, record) = json_of(response).await;
    assert_eq!(
        status,
        201,
        "the caller's key travels to recognize and store: {record}\n{}",
        split.logs()
    );
    // The store directly, and through the front door: the same key either way.
    for base in [&split.store, &split.upload] {
        let listed = client
            .get(base.url("/api/v1/results"))
            .send()
            .await
            .expect("list");
        assert_eq!(listed.status().as_u16(), 401, "{}", base.role);
        let listed = client
            .get(base.url("/api/v1/results"))
            .header("x-api-key", "team-secret-key-1")
            .send()
            .await
            .expect("list");
        let (status, page) = json_of(listed).await;
        assert_eq!(status, 200, "{}: {page}", base.role);
        assert_eq!(page["items"].as_array().map(Vec::len), Some(1), "{page}");
    }
}

/// The seed's three calls as its Python clients made them, with `requests`.
const SEED_CLIENT: &str = r#"
import json, sys, requests
upload, recognize, store, path = sys.argv[1:5]
with open(path, "rb") as f:
    r = requests.post(upload + "/api/images/upload", files={"image": f})
assert r.status_code == 201, (r.status_code, r.text)
url = r.json()["url"]
r = requests.post(recognize + "/api/images/recognition", json={"url": url})
assert r.status_code == 200, (r.status_code, r.text)
result = r.json()
r = requests.post(store + "/api/results/save", json={"url": url, "result": result})
assert r.status_code == 201, (r.status_code, r.text)
saved = r.json()
with open(path, "rb") as f:
    wrong = requests.post(upload + "/api/images/upload", files={"file": f})
print(json.dumps({"url": url, "result": result, "saved": saved,
                  "wrong_field": [wrong.status_code, wrong.json()]}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_python_client_flow_across_three_processes() {
    if !require(&[venv_python()]) {
        return;
    }
    let Some(split) = Split::start(None) else {
        return;
    };
    let image_path = split.dir.path().join("photo.jpg");
    let image = png([20, 220, 20], 50, 40);
    std::fs::write(&image_path, &image).expect("write the image");
    let output = tokio::process::Command::new(venv_python())
        .arg("-c")
        .arg(SEED_CLIENT)
        // All three calls through the front door, as a client of a cluster makes them.
        .arg(split.upload.url(""))
        .arg(split.upload.url(""))
        .arg(split.upload.url(""))
        .arg(&image_path)
        .output()
        .await
        .expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the seed client failed:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        split.logs()
    );
    let seen: Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert_eq!(seen["result"][0]["label"], "green");
    assert_eq!(seen["saved"]["message"], "Result saved successfully");
    assert_eq!(seen["wrong_field"][0], 400);
    assert!(seen["wrong_field"][1]["error"].is_string());
    let records = all_records(&client(), &split.store).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["image_url"], seen["url"]);
}

/// Burst of pipeline calls; the store is killed with SIGKILL after the first answers and
/// restarted at once (the retries ride that out); then killed for a whole second burst
/// (those calls are 503s naming the store) and restarted. Every call answered 2xx has its
/// record, no image has two, and the 503'd images are kept and re-run to completion.
async fn store_killed_during_a_burst(db: Backend) {
    let Some(database) = fresh_database(db) else {
        return;
    };
    let Some(split) = Split::start(database.url.as_deref()) else {
        return;
    };
    let client = client();
    let upload = split.upload.url("");
    let Split {
        mut store,
        recognize,
        upload: upload_process,
        dir: _dir,
    } = split;

    const CALLS: usize = 48;
    const OUTAGE_CALLS: usize = 8;
    let answered = Arc::new(AtomicUsize::new(0));
    let burst = {
        let answered = answered.clone();
        let client = client.clone();
        let upload = upload.clone();
        tokio::spawn(async move {
            futures::stream::iter(0..CALLS)
                .map(|i| {
                    let client = client.clone();
                    let upload = upload.clone();
                    let answered = answered.clone();
                    async move {
                        // Distinct images: sizes differ, colours cycle.
                        let rgb = [[230, 20, 20], [20, 230, 20], [20, 20, 230]][i % 3];
                        let image = png(rgb, 16 + i as u32, 16);
                        let answer = pipeline(&client, &upload, image.clone()).await;
                        answered.fetch_add(1, Ordering::SeqCst);
                        (sightline_server::upload::sha256_hex(&image), answer)
                    }
                })
                .buffer_unordered(6)
                .collect::<Vec<_>>()
                .await
        })
    };
    // Kill the store once the burst is under way, restart it a moment later.
    let deadline = Instant::now() + Duration::from_secs(30);
    while answered.load(Ordering::SeqCst) < 6 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    store.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let store = tokio::task::spawn_blocking(move || {
        store.restart().expect("the store restarts");
        store
    })
    .await
    .expect("restart task");
    let mut answers = burst.await.expect("burst");

    // A longer outage than the retries ride out: the store is down for a whole second burst,
    // whose calls must each be a 503 naming the store, with the image kept.
    let mut store = store;
    store.kill9();
    let outage = futures::stream::iter(CALLS..CALLS + OUTAGE_CALLS)
        .map(|i| {
            let client = client.clone();
            let upload = upload.clone();
            async move {
                let image = png([120, 120, 20], 16 + i as u32, 17);
                let answer = pipeline(&client, &upload, image.clone()).await;
                (sightline_server::upload::sha256_hex(&image), answer)
            }
        })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await;
    assert!(
        outage.iter().all(|(_, (status, _))| *status == 503),
        "{outage:?}"
    );
    answers.extend(outage);
    let store = tokio::task::spawn_blocking(move || {
        store.restart().expect("the store restarts");
        store
    })
    .await
    .expect("restart task");

    let mut ok = 0;
    let mut unavailable = Vec::new();
    for (image_id, (status, body)) in &answers {
        match status {
            200 | 201 => {
                ok += 1;
                assert_eq!(body["image_id"], image_id.as_str());
            }
            503 => {
                assert_eq!(body["component"], "store", "{body}");
                assert_eq!(body["image"]["id"], image_id.as_str());
                unavailable.push(image_id.clone());
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(ok > 0, "some calls succeeded");
    eprintln!(
        "{db:?}: {ok} answered 2xx, {} answered 503 while the store was down",
        unavailable.len()
    );

    // Every answered call has its record, once.
    let records = all_records(&client, &store).await;
    let mut per_image: HashMap<String, usize> = HashMap::new();
    for r in &records {
        *per_image
            .entry(r["image_id"].as_str().expect("image id").to_string())
            .or_default() += 1;
    }
    assert!(
        per_image.values().all(|&n| n == 1),
        "duplicated records: {per_image:?}"
    );
    for (image_id, (status, body)) in &answers {
        if *status == 200 || *status == 201 {
            assert_eq!(
                per_image.get(image_id),
                Some(&1),
                "lost the record of {body}"
            );
            let id = body["id"].as_str().expect("id");
            let (status, _) = json_of(
                client
                    .get(store.url(&format!("/api/v1/results/{id}")))
                    .send()
                    .await
                    .expect("get"),
            )
            .await;
            assert_eq!(status, 200);
        }
    }

    // The refused ones were kept: re-running them (as a client would, honouring
    // Retry-After while the breaker cools down) completes the set, still once each.
    for image_id in &unavailable {
        rerun_until_stored(&client, &upload, image_id).await;
    }
    let records = all_records(&client, &store).await;
    assert_eq!(
        records.len(),
        CALLS + OUTAGE_CALLS,
        "one record per image, none lost, none doubled"
    );
    drop((recognize, upload_process));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_store_during_burst_sqlite() {
    store_killed_during_a_burst(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_store_during_burst_postgres() {
    store_killed_during_a_burst(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_store_during_burst_mariadb() {
    store_killed_during_a_burst(Backend::Mariadb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recognize_down_is_a_503_the_image_is_kept_and_the_rerun_works() {
    let Some(split) = Split::start(None) else {
        return;
    };
    let client = client();
    let Split {
        store,
        mut recognize,
        upload,
        dir: _dir,
    } = split;
    recognize.kill9();
    let image = png([20, 220, 20], 33, 21);
    let started = Instant::now();
    let (status, body) = pipeline(&client, &upload.url(""), image.clone()).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "within the downstream timeout"
    );
    assert_eq!(body["component"], "recognize");
    let id = body["image"]["id"].as_str().expect("image id").to_string();
    let kept = client
        .get(upload.url(&format!("/api/v1/images/{id}")))
        .send()
        .await
        .expect("get");
    assert_eq!(kept.status().as_u16(), 200);
    assert_eq!(
        kept.bytes().await.expect("bytes").as_ref(),
        image.as_slice()
    );

    let recognize = tokio::task::spawn_blocking(move || {
        recognize.restart().expect("recognize restarts");
        recognize
    })
    .await
    .expect("restart");
    let response = client
        .post(upload.url(&format!("/api/v1/images/{id}/recognize")))
        .send()
        .await
        .expect("re-run");
    let (status, record) = json_of(response).await;
    assert_eq!(status, 201, "{record}\n{}", recognize.log_tail());
    assert_eq!(record["top_label"], "green");
    let records = all_records(&client, &store).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["image_id"], id.as_str());
}
