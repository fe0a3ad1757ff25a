//! A cut-off upload is refused and nothing is stored: a real photo (JPEG, and a PNG) cut to
//! a third of its bytes gets `400` from both upload endpoints, where the decoders alone
//! would have accepted the JPEG (they fill the missing part with grey).

mod support;

use std::path::Path;

use axum::http::StatusCode;
use support::*;

/// Every file under `dir` (the image store), but its `tmp/` directory.
fn stored_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(path) = todo.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read dir") {
                todo.push(entry.expect("entry").path());
            }
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn a_photo_cut_to_a_third_is_a_400_and_nothing_is_stored() {
    let photos = models().join("photos");
    let (jpeg, png) = (photos.join("rocket.jpg"), photos.join("chelsea.png"));
    if !require(&[jpeg.clone(), png.clone()]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let app = unloaded_app("upload", dir.path(), &[]).await;
    for photo in [&jpeg, &png] {
        let whole = std::fs::read(photo).expect("photo");
        let third = &whole[..whole.len() / 3];
        if photo == &jpeg {
            // Why a structural check is needed: the decoder pads the missing scan data.
            let padded = sightline_server::preprocess::decode(third, &Default::default());
            eprintln!(
                "decoding the first third of {} alone: {:?}",
                photo.display(),
                padded.as_ref().map(|i| i.dimensions())
            );
        }
        let (content_type, body) = multipart("image", "photo", third);
        let (status, response) = send(&app, post("/api/images/upload", &content_type, body)).await;
        let answer = body_json(response).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{}: {answer}",
            photo.display()
        );
        assert!(
            answer["error"]
                .as_str()
                .is_some_and(|e| e.contains("cut short")),
            "{answer}"
        );
        let (status, response) = send(
            &app,
            post("/api/v1/images", "application/octet-stream", third.to_vec()),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{}",
            body_json(response).await
        );
        let images = dir.path().join("images");
        let files = stored_files(&images);
        assert!(files.is_empty(), "nothing is stored: {files:?}");
        // The whole photo is fine.
        let (status, response) = send(
            &app,
            post("/api/v1/images", "application/octet-stream", whole.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{}", body_json(response).await);
        let id = sightline_server::upload::sha256_hex(&whole);
        let files = stored_files(&images);
        assert_eq!(files.len(), 1, "{files:?}");
        assert!(files[0].ends_with(&id));
        std::fs::remove_file(&files[0]).expect("clean up");
    }
}
