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

/// Resizes `image` as `p` says; the normalised tensor for one image (`p.tensor_len()`
/// values, in `p.layout`).
pub fn to_tensor(image: &RgbImage, p: &Preprocess) -> Result<Vec<f32>, PreprocessError> {
    let (width, height) = image.dimensions();
    resize_normalise(image, source_rect(width, height, p), p)
}

/// [`to_tensor`] for a picture decoded at a reduced scale: the crop is worked out on the
/// whole picture, then mapped onto the reduced pixels (pixel `i` of a 1/`r` decode covers
/// source pixels `r·i … r·i + r`, so source position `x` is at `x / r`).
pub fn decoded_to_tensor(decoded: &Decoded, p: &Preprocess) -> Result<Vec<f32>, PreprocessError> {
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
    resize_normalise(&decoded.image, rect, p)
}

fn resize_normalise(
    image: &RgbImage,
    (left, top, w, h): (f64, f64, f64, f64),
    p: &Preprocess,
) -> Result<Vec<f32>, PreprocessError> {
    let size = p.size;
    let plane = size as usize * size as usize;
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
    // Filled in order, never zeroed first (zeroing 600 KB was 1 % of a request's CPU).
    let mut out = Vec::with_capacity(3 * plane);
    match p.layout {
        Layout::Nchw => {
            for (table, &src_c) in lut.iter().zip(&order) {
                out.extend(
                    pixels
                        .chunks_exact(3)
                        .map(|px| table[usize::from(px[src_c])]),
                );
            }
        }
        Layout::Nhwc => {
            for px in pixels.chunks_exact(3) {
                out.extend(
                    lut.iter()
                        .zip(&order)
                        .map(|(table, &src_c)| table[usize::from(px[src_c])]),
                );
            }
        }
    }
    if out.len() != 3 * plane {
        return Err(PreprocessError::Decode(format!(
            "internal: the tensor holds {} values, expected {}",
            out.len(),
            3 * plane
        )));
    }
    Ok(out)
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
    decoded_to_tensor(&decoded, p)
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
    to_tensor(&image, p)
}

#[cfg(test)]
mod tests;
