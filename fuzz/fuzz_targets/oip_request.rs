//! The Open Inference Protocol request parser: the binary-extension body split
//! (`Inference-Header-Content-Length`), the JSON request, and the input checks against a
//! model's input shape (fixed or with dynamic dimensions). Hostile requests must be a 400,
//! never a panic, an overflow or a huge allocation.
#![no_main]

use axum::http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sightline_server::http::oip::{HEADER_LENGTH, InferRequest, read_input, split_body};

fuzz_target!(|data: &[u8]| {
    // Bytes 0..4 describe the model and the header; the rest is the body.
    if data.len() < 4 {
        return;
    }
    let (knobs, body) = data.split_at(4);
    let dim = |b: u8| -> i64 {
        match b % 8 {
            0 => -1,
            n => i64::from(n),
        }
    };
    let expected = [-1, 3, dim(knobs[0]), dim(knobs[0] >> 3)];
    let max_rows = usize::from(knobs[1] % 16);
    let mut headers = HeaderMap::new();
    if knobs[2] & 1 == 1 {
        let n = usize::from(knobs[3]) + usize::from(knobs[2] >> 1) * 256;
        headers.insert(HEADER_LENGTH, HeaderValue::from(n));
    }
    let Ok((json, binary)) = split_body(&headers, body) else {
        return;
    };
    let Ok(request) = serde_json::from_slice::<InferRequest>(json) else {
        return;
    };
    if let Ok((rows, values)) = read_input(&request, binary, "input", &expected, max_rows) {
        assert!(rows >= 1 && rows <= max_rows);
        assert!(values.iter().all(|v| v.is_finite()));
        assert_eq!(values.len() % rows, 0);
    }
});
