//! Graceful shutdown (SIGTERM) of `sightline-server` processes: the drain (readiness
//! fails, requests still arriving are served with `Connection: close`), then new
//! connections are refused while requests in flight finish; and a rolling restart of one
//! role, two instances behind a round-robin proxy that follows readiness (as a Kubernetes
//! Service does), under load, with no 5xx and no request left without an answer.
//!
//! Needs `target/debug/sightline-server` (`make test` builds it first).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sightline_e2e::load::pipeline_burst;
use sightline_e2e::netfault::RoundRobin;
use sightline_e2e::process::{ScratchDir, ServerProcess, free_ports, require_server_binary};
use sightline_e2e::split::{
    client, recognize_args, records_per_image, store_args, try_all_records, unique_png, upload_args,
};
use sightline_e2e::{models, ort_lib, require};
use sightline_server::upload::sha256_hex;

/// Seconds each instance keeps serving after SIGTERM with readiness failing.
const DRAIN_SECS: &str = "2";

/// An in-flight upload (its body half sent when SIGTERM arrives) is answered `201` after
/// the drain; during the drain `/readyz` is `503 ShuttingDown` and a new request is still
/// served, with `Connection: close`; after it new connections are refused; the process
/// exits 0 and the in-flight image was kept.
#[test]
fn sigterm_drains_then_finishes_in_flight_requests_and_refuses_new_ones() {
    let Some(binary) = require_server_binary() else {
        return;
    };
    let dir = ScratchDir::new("sigterm").expect("scratch");
    let data = dir.path().join("data").display().to_string();
    let args: Vec<String> = vec![
        "--data-dir".into(),
        data,
        "--shutdown-drain-secs".into(),
        DRAIN_SECS.into(),
    ];
    let mut upload =
        ServerProcess::start(&binary, "upload", &args, dir.path()).expect("upload starts");

    let image = unique_png(4000);
    let mut in_flight = TcpStream::connect(upload.addr).expect("connect");
    write!(
        in_flight,
        "POST /api/v1/images HTTP/1.1\r\nHost: test\r\ncontent-type: image/png\r\ncontent-length: {}\r\n\r\n",
        image.len()
    )
    .expect("headers");
    let half = image.len() / 2;
    in_flight.write_all(&image[..half]).expect("half the body");
    in_flight.flush().expect("flush");
    std::thread::sleep(Duration::from_millis(200));

    upload.terminate().expect("SIGTERM");
    let (status, body) = poll_until(&upload.url("/readyz"), 503);
    assert_eq!(status, 503);
    assert!(body.contains("ShuttingDown"), "{body}");
    // No `Connection: close` asked for: the server adds it while draining.
    let (status_line, headers) =
        raw_get(upload.addr, "/healthz", "").expect("served while draining");
    assert!(status_line.contains(" 200 "), "{status_line}");
    assert!(
        headers.to_ascii_lowercase().contains("connection: close"),
        "{headers}"
    );

    // After the drain the listener is closed.
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(upload.addr).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after the drain");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The request in flight all along completes.
    in_flight
        .write_all(&image[half..])
        .expect("rest of the body");
    let mut response = String::new();
    in_flight
        .read_to_string(&mut response)
        .expect("the in-flight response");
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    let status = upload.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(status.success(), "exit status {status}");

    upload.restart().expect("restarts");
    let path = format!("/api/v1/images/{}", sha256_hex(&image));
    let (status_line, _) = raw_get(upload.addr, &path, "Connection: close\r\n").expect("get");
    assert!(
        status_line.contains(" 200 "),
        "the in-flight upload was kept: {status_line}"
    );
}

/// GETs `url` until it answers `want` (10 s at most); the last status and body.
fn poll_until(url: &str, want: u16) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok((status, body)) = sightline_e2e::plain_http::get(url)
            && (status == want || Instant::now() > deadline)
        {
            return (status, body);
        }
        assert!(Instant::now() < deadline, "{url} never answered {want}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `(status line, headers)` of a GET on a fresh connection, with `extra` header lines.
fn raw_get(
    addr: std::net::SocketAddr,
    path: &str,
    extra: &str,
) -> std::io::Result<(String, String)> {
    let mut stream = TcpStream::connect(addr)?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n")?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut response = Vec::new();
    // Read to the end: the server closes after the answer (`Connection: close`); one
    // that does not makes this time out.
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let head = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string();
    let status = head.lines().next().unwrap_or_default().to_string();
    Ok((status, head))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Upload,
    Recognize,
    Store,
}

/// Two instances of `rolled` behind a [`RoundRobin`], one of each other role; pipeline
/// calls at concurrency 8 the whole time while instance A, then B, gets SIGTERM, exits and
/// is started again. Every call must be answered 2xx; every image has one record.
async fn rolling_restart(rolled: Role) {
    let Some(binary) = require_server_binary() else {
        return;
    };
    if !require(&[ort_lib(), models().join("test-classifier.onnx")]) {
        return;
    }
    let dir = ScratchDir::new("rolling").expect("scratch");
    let data = |name: &str| dir.path().join(name).display().to_string();
    let ports = free_ports(4).expect("ports");
    let (upload_port, recognize_port, store_port, second_port) =
        (ports[0], ports[1], ports[2], ports[3]);
    let port_of = |role: Role| match role {
        Role::Upload => upload_port,
        Role::Recognize => recognize_port,
        Role::Store => store_port,
    };
    let instances = [
        std::net::SocketAddr::from(([127, 0, 0, 1], port_of(rolled))),
        std::net::SocketAddr::from(([127, 0, 0, 1], second_port)),
    ];
    let proxy = RoundRobin::start(instances.to_vec())
        .await
        .expect("round robin");
    let url_of = |role: Role| {
        if role == rolled {
            proxy.url("")
        } else {
            format!("http://127.0.0.1:{}", port_of(role))
        }
    };
    let drain = vec!["--shutdown-drain-secs".to_string(), DRAIN_SECS.to_string()];
    // One SQLite file and one image directory, shared by both instances of a role.
    let args_of = |role: Role| -> (&'static str, Vec<String>) {
        let (name, args) = match role {
            Role::Store => ("store", store_args(&data("store"), None)),
            Role::Recognize => ("recognize", recognize_args(upload_port)),
            Role::Upload => (
                "upload",
                upload_args(
                    &data("upload"),
                    &url_of(Role::Recognize),
                    &url_of(Role::Store),
                ),
            ),
        };
        (name, [args, drain.clone()].concat())
    };
    let start = |role: Role, name: &str, port: u16| {
        let (role_name, args) = args_of(role);
        ServerProcess::start_named(&binary, role_name, name, port, &args, dir.path())
            .unwrap_or_else(|e| panic!("{name} starts: {e:#}"))
    };
    // Dependencies first: store, recognize, upload.
    let mut fixed = Vec::new();
    let mut pair = Vec::new();
    for role in [Role::Store, Role::Recognize, Role::Upload] {
        if role == rolled {
            pair.push(start(role, "a", instances[0].port()));
            pair.push(start(role, "b", instances[1].port()));
        } else {
            fixed.push(start(role, &format!("{role:?}"), port_of(role)));
        }
    }
    for i in 0..2 {
        assert!(
            proxy.wait_endpoint(i, true, Duration::from_secs(10)).await,
            "instance {i} never ready"
        );
    }
    let front = url_of(Role::Upload);
    let store_url = url_of(Role::Store);

    // Load the whole time, in rounds of 16 distinct images.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, front) = (stop.clone(), front.clone());
        tokio::spawn(async move {
            let client = client();
            let mut answers = Vec::new();
            let mut next = 5000u64;
            while !stop.load(Ordering::SeqCst) {
                let images = (next..next + 16).map(unique_png);
                next += 16;
                answers.extend(pipeline_burst(&client, &front, images, 8).await);
            }
            answers
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (i, instance) in pair.iter_mut().enumerate() {
        instance.terminate().expect("SIGTERM");
        assert!(
            proxy.wait_endpoint(i, false, Duration::from_secs(5)).await,
            "instance {i} still an endpoint after SIGTERM"
        );
        let status = tokio::task::block_in_place(|| instance.wait_exit(Duration::from_secs(30)))
            .expect("exits after the drain");
        assert!(status.success(), "instance {i} exit status {status}");
        tokio::task::block_in_place(|| instance.restart()).expect("restarts");
        assert!(
            proxy.wait_endpoint(i, true, Duration::from_secs(10)).await,
            "instance {i} back"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let answers = load.await.expect("load");

    let logs = || {
        pair.iter()
            .chain(&fixed)
            .map(|p| format!("--- {} ---\n{}", p.role, p.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let failed: Vec<String> = answers
        .iter()
        .filter_map(|(id, answer)| match answer {
            Ok((200 | 201, _)) => None,
            Ok((status, body)) => Some(format!("{id}: {status} {body}")),
            Err(e) => Some(format!("{id}: no answer: {e:#}")),
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} calls failed during the rolling restart of {rolled:?}: {failed:#?}\n{}",
        failed.len(),
        answers.len(),
        logs()
    );
    let connections: Vec<usize> = proxy
        .connections
        .iter()
        .map(|c| c.load(Ordering::SeqCst))
        .collect();
    assert!(
        connections.iter().all(|&c| c > 0),
        "both instances served: {connections:?}"
    );
    eprintln!(
        "rolling restart of {rolled:?}: {} calls, all 2xx; connections per instance {connections:?}",
        answers.len()
    );

    let client = client();
    let records = try_all_records(&client, &store_url).await.expect("records");
    let per_image = records_per_image(&records);
    for (id, _) in &answers {
        assert_eq!(per_image.get(id), Some(&1), "{id}");
    }
    assert_eq!(records.len(), answers.len(), "one record per call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_upload_has_no_errors() {
    rolling_restart(Role::Upload).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_recognize_has_no_errors() {
    rolling_restart(Role::Recognize).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_store_has_no_errors() {
    rolling_restart(Role::Store).await;
}
