//! Image bytes → model input tensor: sniff, decode safely, resize, normalise.
//!
//! Pure functions over bytes and buffers (no I/O, no async), so they are easy to test and
//! to run on the blocking pool. The resize uses `fast_image_resize` (SIMD convolution with
//! the same bilinear filter and sample positions as PIL), and the crop is folded into the
//! resize: the centre square is cut out of the source at sub-pixel precision instead of
//! resizing the whole picture and then cropping it, which gives the same samples for less
//! work. `models/preprocess_reference.py` is the NumPy/PIL reference it is tested against.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

use crate::model_config::{Channels, Layout, Preprocess, ResizePolicy};

/// Bounds on what a decoder may be asked to do. Checked against the header before any
/// pixel is decoded, so a small file that claims a huge canvas costs nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    pub max_width: u32,
    pub max_height: u32,
    /// Largest `width × height` accepted.
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    /// 40 megapixels, at most 16384 on a side: every camera photo, no decompression bomb
    /// (40 MP of RGBA is 160 MiB, the most one decode may allocate).
    fn default() -> Self {
        DecodeLimits {
            max_width: 16_384,
            max_height: 16_384,
            max_pixels: 40_000_000,
        }
    }
}

/// Why an image was refused. Every variant is the client's fault (a 4xx).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PreprocessError {
    #[error("the image is empty (0 bytes)")]
    Empty,
    #[error("not a supported image: the bytes are not JPEG, PNG, WebP, GIF or BMP")]
    UnsupportedFormat,
    #[error(
        "image is {width}×{height} pixels, over the limit of {max_width}×{max_height} and {max_pixels} pixels"
    )]
    TooLarge {
        width: u32,
        height: u32,
        max_width: u32,
        max_height: u32,
        max_pixels: u64,
    },
    #[error("image has zero width or height")]
    ZeroSized,
    #[error("the image could not be decoded: {0}")]
    Decode(String),
}

impl PreprocessError {
    /// A fixed, low-cardinality name for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            PreprocessError::Empty => "empty",
            PreprocessError::UnsupportedFormat => "unsupported_format",
            PreprocessError::TooLarge { .. } => "too_large",
            PreprocessError::ZeroSized => "zero_sized",
            PreprocessError::Decode(_) => "decode_error",
        }
    }
}

/// The formats accepted, recognised by their magic bytes (never by a file name).
pub fn sniff(bytes: &[u8]) -> Result<ImageFormat, PreprocessError> {
    if bytes.is_empty() {
        return Err(PreprocessError::Empty);
    }
    match image::guess_format(bytes) {
        Ok(
            format @ (ImageFormat::Jpeg
            | ImageFormat::Png
            | ImageFormat::WebP
            | ImageFormat::Gif
            | ImageFormat::Bmp),
        ) => Ok(format),
        _ => Err(PreprocessError::UnsupportedFormat),
    }
}

/// Decodes to 8-bit RGB, honouring EXIF orientation, after checking the header's
/// dimensions against `limits`.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, PreprocessError> {
    let format = sniff(bytes)?;
    // The header alone: cheap, and lets the error name the claimed size.
    let (width, height) = ImageReader::with_format(std::io::Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| map_image_error(e, limits))?;
    check_dimensions(width, height, limits)?;

    let mut reader = ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_image_width = Some(limits.max_width);
    decoder_limits.max_image_height = Some(limits.max_height);
    // RGBA16 is the widest buffer a decoder produces: 8 bytes a pixel.
    decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8));
    reader.limits(decoder_limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| map_image_error(e, limits))?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| map_image_error(e, limits))?;
    image.apply_orientation(orientation);
    Ok(image.into_rgb8())
}

fn check_dimensions(width: u32, height: u32, limits: &DecodeLimits) -> Result<(), PreprocessError> {
    if width == 0 || height == 0 {
        return Err(PreprocessError::ZeroSized);
    }
    if width > limits.max_width
        || height > limits.max_height
        || u64::from(width) * u64::from(height) > limits.max_pixels
    {
        return Err(PreprocessError::TooLarge {
            width,
            height,
            max_width: limits.max_width,
            max_height: limits.max_height,
            max_pixels: limits.max_pixels,
        });
    }
    Ok(())
}

fn map_image_error(error: image::ImageError, limits: &DecodeLimits) -> PreprocessError {
    match error {
        image::ImageError::Limits(_) => PreprocessError::TooLarge {
            width: 0,
            height: 0,
            max_width: limits.max_width,
            max_height: limits.max_height,
            max_pixels: limits.max_pixels,
        },
        image::ImageError::Unsupported(_) => PreprocessError::UnsupportedFormat,
        other => PreprocessError::Decode(other.to_string()),
    }
}

/// The source rectangle `(left, top, width, height)` that becomes the model's square input.
///
/// For `shorter-side-crop` this follows torchvision's `Resize(round(size / crop_fraction))`
/// + `CenterCrop(size)` on PIL images: the shorter side is scaled to `s`, the longer to
///   `floor(long × s / short)`, and the crop starts at `round((resized - size) / 2)` (ties to even, as Python rounds); the
///   rectangle is that crop mapped back into source pixels.
pub fn source_rect(width: u32, height: u32, p: &Preprocess) -> (f64, f64, f64, f64) {
    let (w, h) = (f64::from(width), f64::from(height));
    match p.resize {
        ResizePolicy::Stretch => (0.0, 0.0, w, h),
        ResizePolicy::ShorterSideCrop => {
            let size = f64::from(p.size);
            let short_target = (size / f64::from(p.crop_fraction))
                .round_ties_even()
                .max(size);
            let (rw, rh) = if width <= height {
                (short_target, (short_target * h / w).floor())
            } else {
                ((short_target * w / h).floor(), short_target)
            };
            let left = ((rw - size) / 2.0).round_ties_even().max(0.0);
            let top = ((rh - size) / 2.0).round_ties_even().max(0.0);
            let (sx, sy) = (w / rw, h / rh);
            (left * sx, top * sy, size.min(rw) * sx, size.min(rh) * sy)
        }
    }
}

/// Resizes `image` as `p` says and writes the normalised tensor for one image into `out`
/// (`p.tensor_len()` values, in `p.layout`).
pub fn to_tensor(image: &RgbImage, p: &Preprocess, out: &mut [f32]) -> Result<(), PreprocessError> {
    let size = p.size;
    let plane = size as usize * size as usize;
    if out.len() != 3 * plane {
        return Err(PreprocessError::Decode(format!(
            "internal: tensor buffer holds {} values, expected {}",
            out.len(),
            3 * plane
        )));
    }
    let (width, height) = image.dimensions();
    let src = ImageRef::new(width, height, image.as_raw(), PixelType::U8x3)
        .map_err(|e| PreprocessError::Decode(e.to_string()))?;
    let mut dst = Image::new(size, size, PixelType::U8x3);
    let (left, top, w, h) = source_rect(width, height, p);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop(left, top, w, h);
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(|e| PreprocessError::Decode(e.to_string()))?;

    // value = (sample × scale − mean) / std, as one multiply-add per sample via a table.
    let lut = channel_tables(p);
    let order: [usize; 3] = match p.channels {
        Channels::Rgb => [0, 1, 2],
        Channels::Bgr => [2, 1, 0],
    };
    let pixels = dst.buffer();
    match p.layout {
        Layout::Nchw => {
            for (i, px) in pixels.chunks_exact(3).enumerate() {
                for (c, &src_c) in order.iter().enumerate() {
                    out[c * plane + i] = lut[c][usize::from(px[src_c])];
                }
            }
        }
        Layout::Nhwc => {
            for (px, o) in pixels.chunks_exact(3).zip(out.chunks_exact_mut(3)) {
                for (c, &src_c) in order.iter().enumerate() {
                    o[c] = lut[c][usize::from(px[src_c])];
                }
            }
        }
    }
    Ok(())
}

/// For each output channel, the normalised value of every 8-bit sample.
fn channel_tables(p: &Preprocess) -> [[f32; 256]; 3] {
    let mut tables = [[0.0f32; 256]; 3];
    for (c, table) in tables.iter_mut().enumerate() {
        for (v, slot) in table.iter_mut().enumerate() {
            *slot = (v as f32 * p.scale - p.mean[c]) / p.std[c];
        }
    }
    tables
}

/// Bytes in, tensor out: [`decode`] then [`to_tensor`].
pub fn preprocess(
    bytes: &[u8],
    limits: &DecodeLimits,
    p: &Preprocess,
) -> Result<Vec<f32>, PreprocessError> {
    let image = tracing::debug_span!("decode").in_scope(|| decode(bytes, limits))?;
    let _span = tracing::debug_span!("resize_normalise").entered();
    let mut out = vec![0.0; p.tensor_len()];
    to_tensor(&image, p, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
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
}
