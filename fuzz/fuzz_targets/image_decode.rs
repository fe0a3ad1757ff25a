//! Image bytes → sniff → safe decode → resize/normalise, and the upload role's whole-file
//! check (trailing data, polyglots). Any panic, hang or allocation over libFuzzer's RSS
//! limit is a bug: hostile bytes must come back as a `PreprocessError`/`UploadError`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sightline_server::model_config::{Channels, Layout, Preprocess, ResizePolicy};
use sightline_server::preprocess::{DecodeLimits, preprocess};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the preprocessing; the rest is the file.
    let Some((&knobs, bytes)) = data.split_first() else {
        return;
    };
    // Small limits keep each run fast; the limit logic is the same at any size.
    let limits = DecodeLimits {
        max_width: 2048,
        max_height: 2048,
        max_pixels: 1 << 20,
    };
    let p = Preprocess {
        size: 8 + u32::from(knobs & 0x0f),
        layout: if knobs & 0x10 == 0 {
            Layout::Nchw
        } else {
            Layout::Nhwc
        },
        channels: if knobs & 0x20 == 0 {
            Channels::Rgb
        } else {
            Channels::Bgr
        },
        resize: if knobs & 0x40 == 0 {
            ResizePolicy::ShorterSideCrop
        } else {
            ResizePolicy::Stretch
        },
        ..Preprocess::default()
    };
    if let Ok(tensor) = preprocess(bytes, &limits, &p) {
        assert_eq!(tensor.len(), p.tensor_len());
    }
    let _ = sightline_server::upload::check_image(bytes, &limits);
});
