//! What a result to save must be, whoever sends it: sizes, NUL-free text, a real image id,
//! finite probabilities and, for a batch job's result, a Kubernetes object name.

use super::NewResult;
use crate::http::error::AppError;

/// Most predictions one saved result may hold.
pub const MAX_PREDICTIONS: usize = 10_000;

/// A Kubernetes object name (RFC 1123 subdomain): what a RecognitionJob is called.
pub fn is_job_name(name: &str) -> bool {
    (1..=253).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

pub fn check(new: &NewResult) -> Result<(), AppError> {
    if new.image_url.len() > 4096 {
        return Err(AppError::bad_request(
            "the image URL is longer than 4096 bytes",
        ));
    }
    if new.job.as_ref().is_some_and(|j| !is_job_name(j)) {
        return Err(AppError::bad_request(
            "job must be a Kubernetes object name: 1 to 253 of a-z, 0-9, '-' and '.'",
        ));
    }
    if new.model.name.len() > 255 || new.model.sha256.len() > 64 {
        return Err(AppError::bad_request(
            "model name must be at most 255 bytes and its sha256 at most 64",
        ));
    }
    // A SHA-256 in the image ids' form (64 lowercase hex digits), or nothing.
    let digest = &new.model.preprocess_sha256;
    if !digest.is_empty() && !crate::upload::is_image_id(digest) {
        return Err(AppError::bad_request(
            "model.preprocess_sha256 must be empty or a SHA-256 (64 lowercase hex digits)",
        ));
    }
    if new.predictions.len() > MAX_PREDICTIONS {
        return Err(AppError::bad_request(format!(
            "at most {MAX_PREDICTIONS} predictions"
        )));
    }
    // PostgreSQL's TEXT cannot hold NUL: refuse it here, for every backend alike.
    if [&new.image_url, &new.model.name, &new.model.sha256]
        .into_iter()
        .chain(new.predictions.iter().map(|p| &p.label))
        .any(|s| s.contains('\0'))
    {
        return Err(AppError::bad_request(
            "text fields must not contain NUL characters",
        ));
    }
    if let Some(p) = new
        .predictions
        .iter()
        .find(|p| p.label.len() > 255 || !p.probability.is_finite())
    {
        return Err(AppError::bad_request(format!(
            "bad prediction {:?}: labels are at most 255 bytes and probabilities finite",
            p.label
        )));
    }
    if let Some(id) = &new.image_id
        && !crate::upload::is_image_id(id)
    {
        return Err(AppError::bad_request(
            "image_id must be the image's SHA-256 (64 lowercase hex digits)",
        ));
    }
    Ok(())
}
