//! The default bench's two sides, same model and thread count: the raw ONNX Runtime
//! session shared by `c` client threads, and `c` concurrent HTTP clients posting the JPEG.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use sightline_e2e::mirror_bench::post_jpeg_timed;
use sightline_e2e::models;

use super::{Stats, stats};

/// The ONNX Runtime side both measurements share.
pub(super) struct Side<'a> {
    pub(super) lib: &'a std::path::Path,
    pub(super) gpu: bool,
    pub(super) threads: usize,
}

pub(super) fn raw(
    side: &Side,
    model: &str,
    tensor: &[f32],
    shape: [usize; 4],
    concurrency: usize,
    n: usize,
) -> anyhow::Result<Stats> {
    let env = sightline_server::ort_runtime::init(side.lib)?;
    let mut builder = Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_intra_threads(side.threads)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if side.gpu {
        builder = builder
            .with_execution_providers([sightline_server::engine::cuda_execution_provider()])
            .map_err(|e| anyhow::anyhow!("CUDA: {e}"))?;
    }
    let session = builder.commit_from_file(models().join(format!("{model}.onnx")))?;
    let session = Arc::new(Mutex::new(session));
    let shape = shape.map(|d| d as i64);
    let run_once = |session: &Mutex<Session>| -> anyhow::Result<()> {
        let mut guard = session.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let input = ort::value::TensorRef::from_array_view((shape, tensor))?;
        let outputs = guard.run(ort::inputs![input])?;
        let (_, scores) = outputs[0].try_extract_tensor::<f32>()?;
        std::hint::black_box(scores);
        Ok(())
    };
    for _ in 0..10 {
        run_once(&session)?;
    }
    let per_client = n.div_ceil(concurrency);
    let started = Instant::now();
    let latencies = std::thread::scope(|scope| -> anyhow::Result<Vec<Duration>> {
        let handles: Vec<_> = (0..concurrency)
            .map(|_| {
                let session = session.clone();
                let run_once = &run_once;
                scope.spawn(move || -> anyhow::Result<Vec<Duration>> {
                    let mut mine = Vec::with_capacity(per_client);
                    for _ in 0..per_client {
                        let t = Instant::now();
                        run_once(&session)?;
                        mine.push(t.elapsed());
                    }
                    Ok(mine)
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("client thread panicked"))??,
            );
        }
        Ok(all)
    })?;
    Ok(stats(latencies, started.elapsed()))
}

pub(super) async fn http(
    url: &str,
    jpeg: bytes::Bytes,
    concurrency: usize,
    n: usize,
) -> anyhow::Result<Stats> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let call = |client: reqwest::Client, jpeg: bytes::Bytes, url: String| async move {
        post_jpeg_timed(&client, &url, jpeg).await
    };
    for _ in 0..10 {
        call(client.clone(), jpeg.clone(), url.to_string()).await?;
    }
    let per_client = n.div_ceil(concurrency);
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, jpeg, url) = (client.clone(), jpeg.clone(), url.to_string());
            tokio::spawn(async move {
                let mut mine = Vec::with_capacity(per_client);
                for _ in 0..per_client {
                    mine.push(call(client.clone(), jpeg.clone(), url.clone()).await?);
                }
                anyhow::Ok(mine)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(stats(all, started.elapsed()))
}
