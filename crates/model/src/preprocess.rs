//! Image bytes → model input tensor: sniff, decode safely, resize, normalise.
//!
//! Pure functions over bytes and buffers (no I/O, no async), so they are easy to test and
//! to run on the blocking pool. The resize uses `fast_image_resize` (SIMD convolution with
//! the same bilinear filter and sample positions as PIL), and the crop is folded into the
//! resize: the centre square is cut out of the source at sub-pixel precision instead of
//! resizing the whole picture and then cropping it, which gives the same samples for less
//! work. `models/preprocess_reference.py` is the NumPy/PIL reference it is tested against.
//!
//! Large JPEGs (phone photos of 12 MP) are decoded at a reduced DCT scale (1/2, 1/4 or 1/8,
//! with `jpeg-decoder`'s scaled IDCT) whenever the reduced picture still has at least as
//! many pixels as the resize needs: the shorter side stays at least `size / crop_fraction`
//! for `shorter-side-crop`, both sides at least `size` for `stretch` ([`jpeg_reduction`]).
//! A 4032×3024 photo is then decoded straight to 504×378, never to 12 megapixels. Only JPEGs
//! of at least [`REDUCED_DECODE_MIN_PIXELS`] take this path: below that the full-size
//! decoder (`zune-jpeg`, through `image`) is as fast or faster (BENCHMARKS.md).
//! [`preprocess`] does this (what the server runs); [`preprocess_full`] always decodes at
//! full size (what the PIL reference does).

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

use crate::model_config::{Channels, Layout, Preprocess, ResizePolicy};

/// A decoded picture on its way to the model: the pixels, maybe at a reduced scale, and the
/// size of the whole picture they stand for (both after the EXIF orientation).
#[derive(Debug, Clone)]
pub struct Decoded {
    pub image: RgbImage,
    /// 1 at full size; 2, 4 or 8 when a JPEG was decoded at that fraction of its size.
    pub reduction: u32,
    pub full_width: u32,
    pub full_height: u32,
}

impl Decoded {
    fn full(image: RgbImage) -> Decoded {
        let (full_width, full_height) = image.dimensions();
        Decoded {
            image,
            reduction: 1,
            full_width,
            full_height,
        }
    }
}

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
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
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

/// JPEGs smaller than this are decoded at full size even when a reduction is allowed:
/// `jpeg-decoder`'s entropy decoding is slower than `zune-jpeg`'s, which eats the gain on
/// small pictures (measured: a 1024×768 JPEG at 1/2 took 3.2 ms against 2.4 ms at full size;
/// a 4032×3024 one at 1/8 18.7 ms against 45.6 ms).
pub const REDUCED_DECODE_MIN_PIXELS: u64 = 1_500_000;

/// The largest JPEG DCT reduction (8, 4 or 2; 1 for none) after which a `width × height`
/// picture still covers what `p` resizes to: for `shorter-side-crop` the shorter side stays
/// at least `size / crop_fraction` (the size it is resized to before the crop), for
/// `stretch` both sides stay at least `size`. So the resize only ever shrinks.
pub fn jpeg_reduction(width: u32, height: u32, p: &Preprocess) -> u32 {
    let fits = |r: u32| match p.resize {
        ResizePolicy::ShorterSideCrop => {
            let short_target = (f64::from(p.size) / f64::from(p.crop_fraction))
                .round_ties_even()
                .max(f64::from(p.size));
            f64::from(width.min(height) / r) >= short_target
        }
        ResizePolicy::Stretch => width / r >= p.size && height / r >= p.size,
    };
    [8, 4, 2].into_iter().find(|&r| fits(r)).unwrap_or(1)
}

/// Decodes as much of the picture as `p` needs: a JPEG of at least
/// [`REDUCED_DECODE_MIN_PIXELS`] at a reduced DCT scale when [`jpeg_reduction`] allows it,
/// anything else (and any JPEG the reduced decoder cannot
/// read) at full size with [`decode`]. The header's dimensions are checked against `limits`
/// before any pixel is decoded, on both paths.
pub fn decode_for(
    bytes: &[u8],
    limits: &DecodeLimits,
    p: &Preprocess,
) -> Result<Decoded, PreprocessError> {
    if sniff(bytes)? == ImageFormat::Jpeg
        && let Some(decoded) = decode_jpeg_reduced(bytes, limits, p)?
    {
        return Ok(decoded);
    }
    decode(bytes, limits).map(Decoded::full)
}

/// The reduced-scale JPEG decode. `Ok(None)` when it does not apply (a small picture, CMYK,
/// 16-bit or lossless JPEGs) or this decoder cannot read the file: the full-size decoder
/// then decides (and names the error, if any).
fn decode_jpeg_reduced(
    bytes: &[u8],
    limits: &DecodeLimits,
    p: &Preprocess,
) -> Result<Option<Decoded>, PreprocessError> {
    use image::metadata::Orientation::{self, Rotate90, Rotate90FlipH, Rotate270, Rotate270FlipH};
    use jpeg_decoder::{CodingProcess, PixelFormat};
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    if decoder.read_info().is_err() {
        return Ok(None);
    }
    let Some(info) = decoder.info() else {
        return Ok(None);
    };
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    check_dimensions(width, height, limits)?;
    if !matches!(info.pixel_format, PixelFormat::RGB24 | PixelFormat::L8)
        || info.coding_process == CodingProcess::Lossless
    {
        return Ok(None);
    }
    let reduction = jpeg_reduction(width, height, p);
    if reduction == 1 || u64::from(width) * u64::from(height) < REDUCED_DECODE_MIN_PIXELS {
        return Ok(None);
    }
    // Both sides are at most 16384 (checked above), so they fit the decoder's u16.
    let (want_w, want_h) = (width.div_ceil(reduction), height.div_ceil(reduction));
    let (Ok(req_w), Ok(req_h)) = (u16::try_from(want_w), u16::try_from(want_h)) else {
        return Ok(None);
    };
    match decoder.scale(req_w, req_h) {
        Ok((w, h)) if (u32::from(w), u32::from(h)) == (want_w, want_h) => {}
        _ => return Ok(None),
    }
    let channels = info.pixel_format.pixel_bytes();
    let buffer = (want_w as usize)
        .saturating_mul(want_h as usize)
        .saturating_mul(channels);
    decoder.set_max_decoding_buffer_size(buffer);
    let Ok(pixels) = decoder.decode() else {
        return Ok(None);
    };
    let image = match info.pixel_format {
        PixelFormat::RGB24 => {
            RgbImage::from_raw(want_w, want_h, pixels).map(DynamicImage::ImageRgb8)
        }
        _ => image::GrayImage::from_raw(want_w, want_h, pixels).map(DynamicImage::ImageLuma8),
    };
    let Some(mut image) = image else {
        return Ok(None);
    };
    let orientation = decoder
        .exif_data()
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    image.apply_orientation(orientation);
    let turned = matches!(
        orientation,
        Rotate90 | Rotate90FlipH | Rotate270 | Rotate270FlipH
    );
    let (full_width, full_height) = if turned {
        (height, width)
    } else {
        (width, height)
    };
    Ok(Some(Decoded {
        image: image.into_rgb8(),
        reduction,
        full_width,
        full_height,
    }))
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
    let (width, height) = image.dimensions();
    resize_normalise(image, source_rect(width, height, p), p, out)
}

/// [`to_tensor`] for a picture decoded at a reduced scale: the crop is worked out on the
/// whole picture, then mapped onto the reduced pixels (pixel `i` of a 1/`r` decode covers
/// source pixels `r·i … r·i + r`, so source position `x` is at `x / r`).
pub fn decoded_to_tensor(
    decoded: &Decoded,
    p: &Preprocess,
    out: &mut [f32],
) -> Result<(), PreprocessError> {
    let (left, top, w, h) = source_rect(decoded.full_width, decoded.full_height, p);
    let r = f64::from(decoded.reduction.max(1));
    let (iw, ih) = decoded.image.dimensions();
    // Within the reduced picture (its last row and column may hold a partial block).
    let (left, top) = (left / r, top / r);
    let rect = (
        left,
        top,
        (w / r).min(f64::from(iw) - left),
        (h / r).min(f64::from(ih) - top),
    );
    resize_normalise(&decoded.image, rect, p, out)
}

fn resize_normalise(
    image: &RgbImage,
    (left, top, w, h): (f64, f64, f64, f64),
    p: &Preprocess,
    out: &mut [f32],
) -> Result<(), PreprocessError> {
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

/// Bytes in, tensor out, as the server does it: [`decode_for`] (a large JPEG at a reduced
/// DCT scale) then [`decoded_to_tensor`].
pub fn preprocess(
    bytes: &[u8],
    limits: &DecodeLimits,
    p: &Preprocess,
) -> Result<Vec<f32>, PreprocessError> {
    let decoded = tracing::debug_span!("decode").in_scope(|| decode_for(bytes, limits, p))?;
    let _span = tracing::debug_span!("resize_normalise").entered();
    let mut out = vec![0.0; p.tensor_len()];
    decoded_to_tensor(&decoded, p, &mut out)?;
    Ok(out)
}

/// Bytes in, tensor out, always decoding at full size: [`decode`] then [`to_tensor`] (the
/// definition `models/preprocess_reference.py` matches; [`preprocess`] differs from it only
/// for JPEGs large enough to decode at a reduced scale).
pub fn preprocess_full(
    bytes: &[u8],
    limits: &DecodeLimits,
    p: &Preprocess,
) -> Result<Vec<f32>, PreprocessError> {
    let image = decode(bytes, limits)?;
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
        let png =
            decode_for(&png(1600, 1200, [1, 2, 3]), &DecodeLimits::default(), &p).expect("png");
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
        let err = decode_for(&jpeg(1600, 1200), &limits, &Preprocess::default())
            .expect_err("1.92 MP > 1 MP");
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
}
