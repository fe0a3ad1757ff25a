//! Runs an evaluation: classifies every image of the set through the model's batcher with
//! as many images in flight as batches can take, and scores the answers. The model is
//! loaded by the caller exactly as the recognize role loads it (the server's `eval`
//! command, or the recognize role's own model for `POST /api/v1/evaluations`).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;

use crate::archive::Cancel;
use crate::dataset::Sample;
use crate::progress::Progress;
use crate::report::{Answer, Report};
use sightline_model::postprocess::{softmax, top_k_indices};
use sightline_model::serving::ServingModel;

/// Ranked classes kept per image (top-5 accuracy needs five).
const RANKED: usize = 5;

/// Classifies every sample through the model's batcher and scores the answers; an image
/// file larger than `max_image_bytes` is a failed sample, not read.
pub async fn evaluate(
    model: &Arc<ServingModel>,
    labels: &[String],
    samples: &[Sample],
    dataset: &str,
    progress: bool,
    max_image_bytes: u64,
) -> Report {
    let bar = Progress::new(samples.len() as u64, progress);
    let never = Cancel::default();
    evaluate_with(
        model,
        labels,
        samples,
        dataset,
        &bar,
        max_image_bytes,
        &never,
    )
    .await
}

/// [`evaluate`], counting progress in `bar` (the evaluations API reads it) and taking no
/// new image once `cancel` is set.
pub async fn evaluate_with(
    model: &Arc<ServingModel>,
    labels: &[String],
    samples: &[Sample],
    dataset: &str,
    bar: &Progress,
    max_image_bytes: u64,
    cancel: &Cancel,
) -> Report {
    let started = Instant::now();
    let in_flight = model.bulk_in_flight();
    let answers: Vec<Answer> = futures::stream::iter(samples.iter().cloned())
        .take_while(|_| std::future::ready(!cancel.is_set()))
        .map(|s: Sample| {
            let model = model.clone();
            async move {
                let ranked = rank(&model, &s.path, max_image_bytes).await;
                bar.inc();
                Answer {
                    path: s.path,
                    truth: s.class,
                    ranked,
                }
            }
        })
        .buffered(in_flight)
        .collect()
        .await;
    bar.finish();
    Report::build(
        &model.name,
        dataset,
        labels,
        &answers,
        started.elapsed().as_secs_f64(),
    )
}

/// The bytes of one image file: a regular file (a device or a pipe would be read without
/// end), at most `max` bytes. One trip to the blocking pool for the whole file: tokio's
/// own file reads take one per chunk, each a thread hand-off, which a bulk run paid about
/// forty times an image.
pub async fn read_image(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || read_image_now(&path, max))
        .await
        .map_err(|_| "the file reader panicked".to_string())?
}

fn read_image_now(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > max {
        return Err(format!("larger than {max} bytes"));
    }
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    // The size read above, and one more byte to see a file that grew past `max`.
    let mut bytes = Vec::with_capacity(meta.len() as usize + 1);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > max {
        return Err(format!("larger than {max} bytes"));
    }
    Ok(bytes)
}

/// The top classes of one image file, best first.
async fn rank(model: &ServingModel, path: &Path, max: u64) -> Result<Vec<usize>, String> {
    let bytes = read_image(path, max).await?;
    // The recognitions' decode bound (--decode-threads) holds for evaluations too.
    let tensor = model
        .preprocess_bytes(bytes.into())
        .await
        .map_err(|e| e.to_string())?;
    let row = model
        .infer_rows(tensor, 1)
        .await
        .map_err(|e| e.to_string())?;
    let probs = if model.info.outputs_probabilities {
        row
    } else {
        softmax(&row)
    };
    Ok(top_k_indices(&probs, RANKED))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_is_read_whole_up_to_the_limit() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("a.jpg");
        std::fs::write(&path, [7u8; 100]).expect("write");
        assert_eq!(read_image(&path, 100).await, Ok(vec![7u8; 100]));
        assert_eq!(
            read_image(&path, 99).await,
            Err("larger than 99 bytes".to_string())
        );
        let empty = dir.path().join("empty.jpg");
        std::fs::write(&empty, []).expect("write");
        assert_eq!(read_image(&empty, 10).await, Ok(Vec::new()));
    }

    #[tokio::test]
    async fn what_is_no_regular_file_is_refused_without_reading_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(
            read_image(dir.path(), 1 << 20).await,
            Err("not a regular file".to_string())
        );
        // A pipe with no writer: opening it would wait for ever.
        let fifo = dir.path().join("pipe.jpg");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo runs");
        assert!(made.success());
        let answer = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            read_image(&fifo, 1 << 20),
        )
        .await
        .expect("a pipe is refused at once");
        assert_eq!(answer, Err("not a regular file".to_string()));
        // /dev/zero would never end.
        assert_eq!(
            read_image(Path::new("/dev/zero"), 1 << 20).await,
            Err("not a regular file".to_string())
        );
        let missing = read_image(&dir.path().join("gone.jpg"), 10).await;
        assert!(
            missing.as_ref().is_err_and(|e| e.contains("No such file")),
            "{missing:?}"
        );
    }
}
