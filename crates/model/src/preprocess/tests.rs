use super::*;

fn png(width: u32, height: u32, rgb: [u8; 3]) -> Vec<u8> {
    let img = RgbImage::from_pixel(width, height, image::Rgb(rgb));
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, ImageFormat::Png)
        .expect("encode png");
    buf.into_inner()
}

#[test]
fn sniffs_by_magic_bytes_not_names() {
    assert_eq!(sniff(&png(2, 2, [0, 0, 0])), Ok(ImageFormat::Png));
    assert_eq!(
        sniff(b"hello, I am text"),
        Err(PreprocessError::UnsupportedFormat)
    );
    assert_eq!(sniff(b""), Err(PreprocessError::Empty));
    // TIFF and friends decode with `image` but are not accepted.
    assert_eq!(sniff(b"II*\0rest"), Err(PreprocessError::UnsupportedFormat));
}

#[test]
fn a_uniform_image_normalises_to_constants() {
    let p = Preprocess::default();
    let t = preprocess(&png(300, 200, [255, 0, 128]), &DecodeLimits::default(), &p)
        .expect("preprocess");
    let plane = 224 * 224;
    let expect = |c: usize, v: f32| (v / 255.0 - p.mean[c]) / p.std[c];
    assert!((t[0] - expect(0, 255.0)).abs() < 1e-5);
    assert!((t[plane + 77] - expect(1, 0.0)).abs() < 1e-5);
    assert!((t[2 * plane + 5000] - expect(2, 128.0)).abs() < 1e-5);
}

#[test]
fn bgr_and_nhwc_reorder() {
    let p = Preprocess {
        size: 4,
        layout: Layout::Nhwc,
        channels: Channels::Bgr,
        resize: ResizePolicy::Stretch,
        scale: 1.0,
        mean: [0.0; 3],
        std: [1.0; 3],
        ..Preprocess::default()
    };
    let t = preprocess(&png(8, 8, [10, 20, 30]), &DecodeLimits::default(), &p).expect("ok");
    assert_eq!(&t[0..3], &[30.0, 20.0, 10.0]);
    assert_eq!(t.len(), 4 * 4 * 3);
}

#[test]
fn header_dimensions_are_checked_before_decoding() {
    let limits = DecodeLimits {
        max_width: 100,
        max_height: 100,
        max_pixels: 5000,
    };
    let err = decode(&png(101, 10, [0, 0, 0]), &limits).expect_err("too wide");
    assert!(
        matches!(err, PreprocessError::TooLarge { width: 101, .. }),
        "{err:?}"
    );
    let err = decode(&png(80, 80, [0, 0, 0]), &limits).expect_err("too many pixels");
    assert!(matches!(err, PreprocessError::TooLarge { .. }));
}

#[test]
fn truncated_images_are_decode_errors() {
    let bytes = png(64, 64, [1, 2, 3]);
    let err = decode(&bytes[..bytes.len() / 2], &DecodeLimits::default()).expect_err("cut");
    assert!(matches!(err, PreprocessError::Decode(_)), "{err:?}");
}

/// A `width × height` JPEG of smooth gradients (quality 90).
fn jpeg(width: u32, height: u32) -> Vec<u8> {
    let img = RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([
            (x * 255 / width) as u8,
            (y * 255 / height) as u8,
            ((x + y) * 127 / (width + height)) as u8,
        ])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&img)
        .expect("encode jpeg");
    out
}

/// `jpeg` with an Exif segment saying `orientation` (1-8) right after SOI.
fn with_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"II*\0".to_vec();
    tiff.extend_from_slice(&8u32.to_le_bytes()); // first IFD
    tiff.extend_from_slice(&1u16.to_le_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_le_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// Mean and largest difference of two tensors, in 8-bit levels.
fn levels(a: &[f32], b: &[f32], p: &Preprocess) -> (f32, f32) {
    let plane = a.len() / 3;
    let mut max = 0.0f32;
    let mut sum = 0.0f32;
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let d = (x - y).abs() * p.std[i / plane] / p.scale;
        max = max.max(d);
        sum += d;
    }
    (sum / a.len() as f32, max)
}

#[test]
fn reduction_keeps_enough_pixels_for_the_resize() {
    let p = Preprocess::default(); // 224 of a 256 shorter side
    assert_eq!(jpeg_reduction(4032, 3024, &p), 8, "378 ≥ 256");
    assert_eq!(jpeg_reduction(3024, 4032, &p), 8);
    assert_eq!(jpeg_reduction(2048, 1536, &p), 4, "192 < 256 ≤ 384");
    assert_eq!(jpeg_reduction(600, 512, &p), 2, "exactly 256");
    assert_eq!(jpeg_reduction(600, 511, &p), 1);
    assert_eq!(jpeg_reduction(451, 300, &p), 1);
    let stretch = Preprocess {
        size: 32,
        resize: ResizePolicy::Stretch,
        ..Preprocess::default()
    };
    assert_eq!(jpeg_reduction(256, 300, &stretch), 8, "both sides ≥ 32");
    assert_eq!(
        jpeg_reduction(1000, 63, &stretch),
        1,
        "the short side decides"
    );
    assert_eq!(jpeg_reduction(1000, 64, &stretch), 2);
}

#[test]
fn a_large_jpeg_is_decoded_small_and_gives_nearly_the_same_tensor() {
    let p = Preprocess::default();
    let bytes = jpeg(1600, 1200);
    let decoded = decode_for(&bytes, &DecodeLimits::default(), &p).expect("decode");
    assert_eq!(decoded.reduction, 4);
    assert_eq!(decoded.image.dimensions(), (400, 300));
    assert_eq!((decoded.full_width, decoded.full_height), (1600, 1200));
    let fast = preprocess(&bytes, &DecodeLimits::default(), &p).expect("reduced");
    let full = preprocess_full(&bytes, &DecodeLimits::default(), &p).expect("full");
    let (mean, max) = levels(&fast, &full, &p);
    assert!(mean < 1.0 && max < 6.0, "mean {mean} / max {max} levels");
    // Small JPEGs and other formats: the full decode.
    let small = decode_for(&jpeg(300, 200), &DecodeLimits::default(), &p).expect("small");
    assert_eq!(small.reduction, 1);
    // Reducible (1/2), but under REDUCED_DECODE_MIN_PIXELS: faster at full size.
    let mid = decode_for(&jpeg(1024, 768), &DecodeLimits::default(), &p).expect("mid");
    assert_eq!(mid.reduction, 1);
    let png = decode_for(&png(1600, 1200, [1, 2, 3]), &DecodeLimits::default(), &p).expect("png");
    assert_eq!(png.reduction, 1);
}

#[test]
fn the_reduced_decode_turns_the_picture_as_exif_says() {
    let p = Preprocess::default();
    let bytes = with_orientation(&jpeg(1600, 1200), 6); // rotate 90° clockwise
    let decoded = decode_for(&bytes, &DecodeLimits::default(), &p).expect("decode");
    assert_eq!(decoded.reduction, 4);
    assert_eq!(decoded.image.dimensions(), (300, 400));
    assert_eq!((decoded.full_width, decoded.full_height), (1200, 1600));
    let full = decode(&bytes, &DecodeLimits::default()).expect("full");
    assert_eq!(full.dimensions(), (1200, 1600), "both paths turn it");
    let fast = preprocess(&bytes, &DecodeLimits::default(), &p).expect("reduced");
    let full = preprocess_full(&bytes, &DecodeLimits::default(), &p).expect("full");
    let (mean, max) = levels(&fast, &full, &p);
    assert!(mean < 1.0 && max < 6.0, "mean {mean} / max {max} levels");
}

#[test]
fn the_reduced_decode_checks_the_header_first() {
    let limits = DecodeLimits {
        max_width: 16_384,
        max_height: 16_384,
        max_pixels: 1_000_000,
    };
    let err =
        decode_for(&jpeg(1600, 1200), &limits, &Preprocess::default()).expect_err("1.92 MP > 1 MP");
    assert!(
        matches!(
            err,
            PreprocessError::TooLarge {
                width: 1600,
                height: 1200,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn source_rect_matches_resize_then_centre_crop() {
    let p = Preprocess::default(); // 224 of a 256 shorter side
    // 512×256: resized to 512×256 exactly, crop at left 144, top 16.
    let (l, t, w, h) = source_rect(512, 256, &p);
    assert_eq!((l, t, w, h), (144.0, 16.0, 224.0, 224.0));
    // Portrait 100×200: resized to 256×512, crop (16, 144) → source scale 100/256.
    let (l, t, w, h) = source_rect(100, 200, &p);
    let s = 100.0 / 256.0;
    assert!((l - 16.0 * s).abs() < 1e-9 && (t - 144.0 * s).abs() < 1e-9);
    assert!((w - 224.0 * s).abs() < 1e-9 && (h - 224.0 * s).abs() < 1e-9);
    let stretch = Preprocess {
        resize: ResizePolicy::Stretch,
        ..p
    };
    assert_eq!(source_rect(7, 9, &stretch), (0.0, 0.0, 7.0, 9.0));
}
