//! Fast image checks without decoding: format by magic bytes, dimensions from the header
//! (`imagesize`), and truncation by the format's end marker. This is the default validation of
//! every image, so it must cost microseconds; full decoding is Pillow's job on the Python side.
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    Jpeg,
    Png,
    Gif,
    Webp,
    Bmp,
    Tiff,
}

impl ImageFormat {
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "jpeg",
            ImageFormat::Png => "png",
            ImageFormat::Gif => "gif",
            ImageFormat::Webp => "webp",
            ImageFormat::Bmp => "bmp",
            ImageFormat::Tiff => "tiff",
        }
    }

    /// The member extension readers expect for this format.
    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "jpg",
            other => other.name(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
}

/// Why an image is refused. `code()` is the stable reason name used in reject reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageProblem {
    Empty,
    UnknownFormat,
    UnreadableHeader(String),
    ZeroSize,
    Truncated(&'static str),
}

impl ImageProblem {
    pub fn code(&self) -> &'static str {
        match self {
            ImageProblem::Empty => "image_empty",
            ImageProblem::UnknownFormat => "image_unknown_format",
            ImageProblem::UnreadableHeader(_) => "image_unreadable_header",
            ImageProblem::ZeroSize => "image_zero_size",
            ImageProblem::Truncated(_) => "image_truncated",
        }
    }
}

impl fmt::Display for ImageProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageProblem::Empty => write!(f, "image has no bytes"),
            ImageProblem::UnknownFormat => write!(f, "not a JPEG, PNG, GIF, WebP, BMP or TIFF image (by magic bytes)"),
            ImageProblem::UnreadableHeader(why) => write!(f, "image header cannot be read: {why}"),
            ImageProblem::ZeroSize => write!(f, "image has zero width or height"),
            ImageProblem::Truncated(why) => write!(f, "image is truncated: {why}"),
        }
    }
}

pub fn sniff(data: &[u8]) -> Option<ImageFormat> {
    match data {
        [0xFF, 0xD8, 0xFF, ..] => Some(ImageFormat::Jpeg),
        [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, ..] => Some(ImageFormat::Png),
        [b'G', b'I', b'F', b'8', b'7' | b'9', b'a', ..] => Some(ImageFormat::Gif),
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => Some(ImageFormat::Webp),
        [b'B', b'M', ..] if data.len() >= 26 => Some(ImageFormat::Bmp),
        [b'I', b'I', 0x2A, 0x00, ..] | [b'M', b'M', 0x00, 0x2A, ..] => Some(ImageFormat::Tiff),
        _ => None,
    }
}

fn contains_from_end(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).rev().any(|w| w == needle)
}

/// JPEG: walk the marker segments to the first start-of-scan; an end-of-image marker must
/// follow it. Inside entropy-coded data 0xFF is always stuffed, so FF D9 there is the real EOI,
/// and looking only after the first SOS ignores the EOI of an embedded EXIF thumbnail.
fn jpeg_truncation(data: &[u8]) -> Option<&'static str> {
    let mut i = 2;
    loop {
        while i < data.len() && data[i] == 0xFF && data.get(i + 1) == Some(&0xFF) {
            i += 1; // fill bytes
        }
        if i + 1 >= data.len() {
            return Some("ends inside the header segments");
        }
        if data[i] != 0xFF {
            return Some("header segments are corrupt");
        }
        let marker = data[i + 1];
        if marker == 0xDA {
            break;
        }
        if marker == 0x01 || (0xD0..=0xD8).contains(&marker) {
            i += 2;
            continue;
        }
        if marker == 0xD9 {
            return Some("end-of-image marker before any scan");
        }
        if i + 3 >= data.len() {
            return Some("ends inside the header segments");
        }
        let length = u16::from_be_bytes([data[i + 2], data[i + 3]]) as usize;
        i += 2 + length;
    }
    if contains_from_end(&data[i..], &[0xFF, 0xD9]) {
        None
    } else {
        Some("no end-of-image marker (FF D9) after the scan data")
    }
}

fn truncation(format: ImageFormat, data: &[u8]) -> Option<&'static str> {
    match format {
        ImageFormat::Jpeg => jpeg_truncation(data),
        ImageFormat::Png => (!contains_from_end(data, b"IEND\xaeB`\x82")).then_some("no IEND chunk"),
        ImageFormat::Gif => {
            let last = data.iter().rposition(|&b| b != 0).map(|i| data[i]);
            (last != Some(0x3B)).then_some("no GIF trailer (0x3B)")
        }
        ImageFormat::Webp => {
            let declared = u32::from_le_bytes([data[4], data[5], data[6], data[7]]) as usize + 8;
            (data.len() < declared).then_some("shorter than its RIFF header says")
        }
        ImageFormat::Bmp => {
            let declared = u32::from_le_bytes([data[2], data[3], data[4], data[5]]) as usize;
            (data.len() < declared).then_some("shorter than its BMP header says")
        }
        // TIFF keeps its directory anywhere in the file: only a full decode can tell.
        ImageFormat::Tiff => None,
    }
}

/// Check an encoded image without decoding its pixels.
pub fn inspect_image(data: &[u8]) -> Result<ImageInfo, ImageProblem> {
    if data.is_empty() {
        return Err(ImageProblem::Empty);
    }
    let format = sniff(data).ok_or(ImageProblem::UnknownFormat)?;
    let size = imagesize::blob_size(data).map_err(|e| ImageProblem::UnreadableHeader(e.to_string()))?;
    if size.width == 0 || size.height == 0 {
        return Err(ImageProblem::ZeroSize);
    }
    if let Some(why) = truncation(format, data) {
        return Err(ImageProblem::Truncated(why));
    }
    let dim = |v: usize| u32::try_from(v).map_err(|_| ImageProblem::UnreadableHeader(format!("dimension {v} out of range")));
    Ok(ImageInfo { format, width: dim(size.width)?, height: dim(size.height)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal baseline JPEG structure: SOI, SOF0 (8x4), SOS, one scan byte, EOI.
    fn tiny_jpeg() -> Vec<u8> {
        let mut d = vec![0xFF, 0xD8];
        d.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x0B, 0x08, 0x00, 0x04, 0x00, 0x08, 0x01, 0x01, 0x11, 0x00]);
        d.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x3F, 0x00]);
        d.extend_from_slice(&[0x12, 0xFF, 0x00, 0x34]);
        d.extend_from_slice(&[0xFF, 0xD9]);
        d
    }

    #[test]
    fn jpeg_ok_and_truncated() {
        let jpeg = tiny_jpeg();
        let info = inspect_image(&jpeg).unwrap();
        assert_eq!((info.format, info.width, info.height), (ImageFormat::Jpeg, 8, 4));
        assert_eq!(inspect_image(&jpeg[..jpeg.len() - 2]).unwrap_err().code(), "image_truncated");
        assert_eq!(inspect_image(&jpeg[..12]).unwrap_err().code(), "image_truncated");
        // Trailing bytes after EOI (common in camera files) are fine.
        let mut trailing = jpeg.clone();
        trailing.extend_from_slice(b"junk");
        assert!(inspect_image(&trailing).is_ok());
    }

    #[test]
    fn problems_have_codes() {
        assert_eq!(inspect_image(b"").unwrap_err().code(), "image_empty");
        assert_eq!(inspect_image(b"hello world").unwrap_err().code(), "image_unknown_format");
        assert_eq!(inspect_image(b"\x89PNG\r\n\x1a\n\0\0").unwrap_err().code(), "image_unreadable_header");
        assert_eq!(ImageFormat::Jpeg.extension(), "jpg");
    }
}
