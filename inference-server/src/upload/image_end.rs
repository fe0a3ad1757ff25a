//! Where an image's bytes end, by format, so that nothing can hide after it (a polyglot: an
//! image that is also a zip, an HTML page or a script, served back with the image's type and
//! immutable caching) and a cut-off upload is told from a whole one.
//!
//! Each format says where it ends in its own structure, walked without decoding a pixel:
//! PNG at its `IEND` chunk, JPEG at the end-of-image marker of its main picture, GIF at its
//! trailer (`;`) after the blocks, WebP at the end its RIFF header gives, BMP at the end of
//! its pixel array (or its RLE stream's end-of-bitmap marker) and of an embedded colour
//! profile. A BMP's own file-size field is not trusted (a polyglot would set it to cover
//! what it appends). Zero bytes after a JPEG or BMP are padding some writers add, not data.

use image::ImageFormat;

/// True when the image's structure runs, whole, to its end (JPEG and PNG, which decoders
/// would otherwise fill with grey when cut short); true for the other formats, whose
/// decoders refuse a cut-off file.
pub fn complete(format: ImageFormat, bytes: &[u8]) -> bool {
    match format {
        ImageFormat::Jpeg => jpeg_complete(bytes),
        ImageFormat::Png => png_complete(bytes),
        _ => true,
    }
}

/// How many bytes follow the end of the image (not counting zero padding after a JPEG or
/// BMP); 0 when the structure cannot say where it ends (then the decoder decides).
pub fn trailing(format: ImageFormat, bytes: &[u8]) -> usize {
    match format {
        ImageFormat::Png => png_trailing(bytes),
        ImageFormat::Jpeg => jpeg_trailing(bytes),
        ImageFormat::Gif => after(bytes, gif_end(bytes)),
        ImageFormat::WebP => after(bytes, webp_end(bytes)),
        ImageFormat::Bmp => bmp_end(bytes).map_or(0, |end| nonzero_after(bytes, end)),
        _ => 0,
    }
}

fn after(bytes: &[u8], end: Option<usize>) -> usize {
    end.map_or(0, |end| bytes.len().saturating_sub(end))
}

fn nonzero_after(bytes: &[u8], end: usize) -> usize {
    bytes
        .get(end..)
        .map_or(0, |rest| rest.iter().filter(|&&b| b != 0).count())
}

fn u16_le(bytes: &[u8], at: usize) -> Option<usize> {
    let b = bytes.get(at..at.checked_add(2)?)?;
    Some(usize::from(u16::from_le_bytes([b[0], b[1]])))
}

fn u32_le(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// After a run of GIF data sub-blocks (a size byte, that many bytes, … a zero size).
fn gif_sub_blocks(bytes: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let size = usize::from(*bytes.get(pos)?);
        pos += 1;
        if size == 0 {
            return Some(pos);
        }
        pos = pos.checked_add(size)?;
    }
}

/// Where the GIF ends: after its trailer, or where something that is no GIF block starts
/// (what follows a GIF missing its trailer). `None` when a block is cut short.
fn gif_end(bytes: &[u8]) -> Option<usize> {
    // Header (6), logical screen descriptor (7), global colour table.
    let packed = *bytes.get(10)?;
    let mut pos = 13usize;
    if packed & 0x80 != 0 {
        pos += 3 << ((packed & 7) + 1);
    }
    loop {
        match bytes.get(pos) {
            None => return (pos <= bytes.len()).then_some(pos),
            // Trailer.
            Some(0x3B) => return Some(pos + 1),
            // Extension: introducer, label, data sub-blocks.
            Some(0x21) => pos = gif_sub_blocks(bytes, pos + 2)?,
            // Image: descriptor (10), local colour table, LZW code size, data sub-blocks.
            Some(0x2C) => {
                let packed = *bytes.get(pos + 9)?;
                pos += 10;
                if packed & 0x80 != 0 {
                    pos += 3 << ((packed & 7) + 1);
                }
                pos = gif_sub_blocks(bytes, pos + 1)?;
            }
            Some(_) => return Some(pos),
        }
    }
}

/// Where the WebP's RIFF container ends, as its header says (a chunk of odd size is padded).
fn webp_end(bytes: &[u8]) -> Option<usize> {
    let size = usize::try_from(u32_le(bytes, 4)?).ok()?;
    8usize.checked_add(size)?.checked_add(size & 1)
}

/// Where the BMP's data ends: its pixel array (from the header's offset, size and bit
/// depth; for RLE, at the end-of-bitmap marker) and, for a version 5 header, an embedded
/// colour profile, whichever ends last. `None` when the header does not say.
fn bmp_end(bytes: &[u8]) -> Option<usize> {
    let offset = usize::try_from(u32_le(bytes, 10)?).ok()?;
    let header = usize::try_from(u32_le(bytes, 14)?).ok()?;
    let (width, height, bits, compression) = if header == 12 {
        // OS/2 BITMAPCOREHEADER: 16-bit sizes, no compression.
        (
            u16_le(bytes, 18)?,
            u16_le(bytes, 20)?,
            u16_le(bytes, 24)?,
            0,
        )
    } else {
        let width = i32::from_le_bytes(u32_le(bytes, 18)?.to_le_bytes());
        let height = i32::from_le_bytes(u32_le(bytes, 22)?.to_le_bytes());
        (
            usize::try_from(width.unsigned_abs()).ok()?,
            usize::try_from(height.unsigned_abs()).ok()?,
            u16_le(bytes, 28)?,
            u32_le(bytes, 30)?,
        )
    };
    let pixels_end = match compression {
        // RGB, BITFIELDS, ALPHABITFIELDS: rows of whole 32-bit words.
        0 | 3 | 6 => {
            let row = width.checked_mul(bits)?.checked_add(31)? / 32 * 4;
            offset.checked_add(row.checked_mul(height)?)?
        }
        // RLE8, RLE4.
        1 | 2 => rle_end(bytes, offset, compression == 2)?,
        _ => return None,
    };
    let profile_end = if header >= 124 && u32_le(bytes, 14 + 56)? == 0x4D42_4544 {
        // An embedded profile ('MBED'): its offset from the header's start, and its size.
        let at = usize::try_from(u32_le(bytes, 14 + 112)?).ok()?;
        let size = usize::try_from(u32_le(bytes, 14 + 116)?).ok()?;
        14usize.checked_add(at)?.checked_add(size)?
    } else {
        0
    };
    Some(pixels_end.max(profile_end))
}

/// After a BMP's RLE stream: pairs (count, colour), or escapes — end of line, end of bitmap
/// (where it ends), a delta, or an absolute run padded to a 16-bit boundary.
fn rle_end(bytes: &[u8], mut pos: usize, four_bit: bool) -> Option<usize> {
    loop {
        let (count, code) = (*bytes.get(pos)?, *bytes.get(pos + 1)?);
        pos += 2;
        match (count, code) {
            (0, 0) => {}
            (0, 1) => return Some(pos),
            (0, 2) => pos += 2,
            (0, n) => {
                let n = usize::from(n);
                let len = if four_bit { n.div_ceil(2) } else { n };
                pos += len + (len & 1);
            }
            _ => {}
        }
    }
}

/// Where the PNG's `IEND` chunk ends, when its chunks run, whole, up to it.
fn png_end(bytes: &[u8]) -> Option<usize> {
    let mut pos: usize = 8;
    while let Some(header) = bytes.get(pos..pos.saturating_add(8)) {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        // Length, type, data, CRC.
        let end = pos.saturating_add(12).saturating_add(len);
        if end > bytes.len() {
            return None;
        }
        if &header[4..8] == b"IEND" {
            return Some(end);
        }
        pos = end;
    }
    None
}

/// True when the PNG's chunks run, whole, up to its `IEND` chunk.
pub fn png_complete(bytes: &[u8]) -> bool {
    png_end(bytes).is_some()
}

/// The position of the first 0xFF byte at or after `pos`.
fn next_ff(bytes: &[u8], pos: usize) -> Option<usize> {
    let rest = bytes.get(pos..)?;
    rest.iter().position(|&b| b == 0xFF).map(|at| pos + at)
}

/// True when the JPEG's marker segments and entropy-coded scans run up to the
/// end-of-image marker of its main picture. Segments are skipped by their length, so the
/// thumbnail inside an Exif segment (which has its own end marker) does not count.
pub fn jpeg_complete(bytes: &[u8]) -> bool {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return false;
    }
    let mut pos = 2;
    loop {
        // The next marker: 0xFF, any fill bytes, then the marker's code. Stray bytes
        // between segments are passed over, as lenient decoders do.
        let Some(next) = next_ff(bytes, pos) else {
            return false;
        };
        pos = next;
        while bytes.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        let Some(&marker) = bytes.get(pos) else {
            return false;
        };
        pos += 1;
        match marker {
            0xD9 => return true,
            // Markers without a length: TEM, RSTn, a stray SOI; 0x00 is no marker.
            0x00 | 0x01 | 0xD0..=0xD8 => continue,
            _ => {}
        }
        let Some(len) = bytes
            .get(pos..pos + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        else {
            return false;
        };
        if len < 2 || pos + len > bytes.len() {
            return false;
        }
        pos += len;
        if marker == 0xDA {
            // A scan's entropy-coded data: runs until a marker other than a stuffed zero
            // (0xFF 0x00) or a restart marker.
            loop {
                let Some(next) = next_ff(bytes, pos) else {
                    return false;
                };
                pos = next;
                match bytes.get(pos + 1) {
                    None => return false,
                    Some(0x00 | 0xD0..=0xD7) => pos += 2,
                    Some(0xFF) => pos += 1,
                    Some(_) => break,
                }
            }
        }
    }
}

/// Bytes after the PNG `IEND` chunk.
fn png_trailing(bytes: &[u8]) -> usize {
    png_end(bytes).map_or(0, |end| bytes.len() - end)
}

/// Bytes after the last JPEG end-of-image marker, not counting zero padding (some cameras
/// pad their files).
fn jpeg_trailing(bytes: &[u8]) -> usize {
    let Some(eoi) = bytes.windows(2).rposition(|w| w == [0xFF, 0xD9]) else {
        return 0;
    };
    bytes[eoi + 2..].iter().filter(|&&b| b != 0).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(format: ImageFormat) -> Vec<u8> {
        let img = image::RgbImage::from_fn(7, 5, |x, y| image::Rgb([x as u8 * 30, y as u8, 9]));
        let mut out = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut out, format)
            .expect("encode");
        out.into_inner()
    }

    #[test]
    fn every_format_ends_where_its_structure_says() {
        for format in [
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::Gif,
            ImageFormat::WebP,
            ImageFormat::Bmp,
        ] {
            let whole = encode(format);
            assert_eq!(trailing(format, &whole), 0, "{format:?}");
            let mut appended = whole.clone();
            let zip = b"PK\x03\x04 a zip";
            appended.extend_from_slice(zip);
            assert_eq!(trailing(format, &appended), zip.len(), "{format:?}");
        }
    }

    #[test]
    fn zero_padding_after_a_bmp_is_not_data_and_its_size_field_is_not_trusted() {
        let mut padded = encode(ImageFormat::Bmp);
        padded.extend_from_slice(&[0, 0, 0]);
        assert_eq!(trailing(ImageFormat::Bmp, &padded), 0);
        // A file-size field stretched over what follows changes nothing.
        let mut stretched = encode(ImageFormat::Bmp);
        let claimed = (stretched.len() as u32 + 8).to_le_bytes();
        stretched[2..6].copy_from_slice(&claimed);
        stretched.extend_from_slice(b"<script>");
        assert_eq!(trailing(ImageFormat::Bmp, &stretched), 8);
    }

    #[test]
    fn a_gif_without_its_trailer_still_ends_where_its_blocks_do() {
        let whole = encode(ImageFormat::Gif);
        assert_eq!(whole.last(), Some(&0x3B));
        let mut no_trailer = whole[..whole.len() - 1].to_vec();
        assert_eq!(trailing(ImageFormat::Gif, &no_trailer), 0);
        no_trailer.extend_from_slice(b"<html>");
        assert_eq!(trailing(ImageFormat::Gif, &no_trailer), 6);
    }

    #[test]
    fn an_rle8_bmp_ends_at_its_end_of_bitmap_marker() {
        // 2×2, 8 bits, RLE8, a 2-entry palette: two runs of two, end of line, end of bitmap.
        let pixels: &[u8] = &[2, 1, 0, 0, 2, 0, 0, 1];
        let offset = 14 + 40 + 8;
        let mut bmp = b"BM".to_vec();
        bmp.extend_from_slice(&((offset + pixels.len()) as u32).to_le_bytes());
        bmp.extend_from_slice(&[0; 4]);
        bmp.extend_from_slice(&(offset as u32).to_le_bytes());
        bmp.extend_from_slice(&40u32.to_le_bytes());
        bmp.extend_from_slice(&2i32.to_le_bytes());
        bmp.extend_from_slice(&2i32.to_le_bytes());
        bmp.extend_from_slice(&1u16.to_le_bytes());
        bmp.extend_from_slice(&8u16.to_le_bytes());
        bmp.extend_from_slice(&1u32.to_le_bytes());
        bmp.extend_from_slice(&(pixels.len() as u32).to_le_bytes());
        bmp.extend_from_slice(&[0; 16]);
        bmp.extend_from_slice(&[0, 0, 0, 0, 255, 255, 255, 0]);
        bmp.extend_from_slice(pixels);
        assert_eq!(trailing(ImageFormat::Bmp, &bmp), 0);
        bmp.extend_from_slice(b"zip!");
        assert_eq!(trailing(ImageFormat::Bmp, &bmp), 4);
    }
}
