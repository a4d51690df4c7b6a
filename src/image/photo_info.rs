//! What a photo file says about itself, for filtering and sorting search results: when it was
//! taken, with which camera, where, and its pixel size. Read from the bytes the indexer has
//! already read (the EXIF block and the image header, not the pixels); a file without EXIF, or
//! with a broken one, still gets a date (its modification time) and its size.

use std::io::Cursor;

use exif::{Exif, In, Tag, Value};
use serde::{Deserialize, Serialize};

/// Where [`PhotoInfo::taken`] came from, most trustworthy first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TakenFrom {
    /// EXIF `DateTimeOriginal`: when the shutter fired.
    ExifOriginal,
    /// EXIF `DateTime`: when the file was last written by the camera or an editor.
    ExifDatetime,
    /// The file's modification time (no usable EXIF date).
    FileTime,
}

/// The metadata an index keeps per photo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhotoInfo {
    /// When the photo was taken, ISO 8601 local time (`2024-07-14T18:03:22`), with the UTC
    /// offset when the camera recorded one (`...T18:03:22+02:00`). EXIF dates are the camera's
    /// local clock; a file time is given in this machine's time zone.
    pub taken: String,
    pub taken_from: TakenFrom,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub make: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Pixel size as the photo is shown: EXIF orientations that turn it by 90 degrees swap the
    /// stored width and height. 0 when the header cannot be read.
    pub width: u32,
    pub height: u32,
    /// `[latitude, longitude]` in degrees (north and east positive), when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gps: Option<[f64; 2]>,
}

impl PhotoInfo {
    /// The camera as one string: the model, prefixed by the make unless the model already
    /// starts with the make's first word ("Canon EOS R6", not "Canon Canon EOS R6"; "NIKON
    /// D750", not "NIKON CORPORATION NIKON D750").
    pub fn camera(&self) -> Option<String> {
        match (&self.make, &self.model) {
            (Some(make), Some(model)) => {
                let brand = make.split_whitespace().next().unwrap_or("").to_lowercase();
                if model.to_lowercase().starts_with(&brand) {
                    Some(model.clone())
                } else {
                    Some(format!("{make} {model}"))
                }
            }
            (Some(one), None) | (None, Some(one)) => Some(one.clone()),
            (None, None) => None,
        }
    }

    /// The calendar day of [`PhotoInfo::taken`], `YYYY-MM-DD`.
    pub fn day(&self) -> &str {
        self.taken.get(..10).unwrap_or(&self.taken)
    }

    /// What can be said of a file whose bytes cannot be read: its modification time.
    pub fn from_file_time(mtime_ns: i64) -> Self {
        PhotoInfo {
            taken: local_time(mtime_ns.div_euclid(1_000_000_000)),
            taken_from: TakenFrom::FileTime,
            make: None,
            model: None,
            width: 0,
            height: 0,
            gps: None,
        }
    }
}

/// Reads the metadata of the encoded image `bytes`, modified at `mtime_ns`. Never fails: what
/// cannot be read is left out.
pub fn read_photo_info(bytes: &[u8], mtime_ns: i64) -> PhotoInfo {
    let mut info = PhotoInfo::from_file_time(mtime_ns);
    if let Ok((width, height)) = super::decode::dimensions(bytes, "") {
        (info.width, info.height) = (width, height);
    }
    let Ok(exif) = exif::Reader::new().read_from_container(&mut Cursor::new(bytes)) else {
        return info;
    };
    if let Some(taken) = exif_time(&exif, Tag::DateTimeOriginal, Tag::OffsetTimeOriginal) {
        (info.taken, info.taken_from) = (taken, TakenFrom::ExifOriginal);
    } else if let Some(taken) = exif_time(&exif, Tag::DateTime, Tag::OffsetTime) {
        (info.taken, info.taken_from) = (taken, TakenFrom::ExifDatetime);
    }
    info.make = ascii(&exif, Tag::Make);
    info.model = ascii(&exif, Tag::Model);
    // Orientations 5 to 8 turn the stored image by 90 degrees.
    let orientation = exif
        .get_field(Tag::Orientation, In::PRIMARY)
        .and_then(|f| f.value.get_uint(0));
    if matches!(orientation, Some(5..=8)) {
        (info.width, info.height) = (info.height, info.width);
    }
    info.gps = gps(&exif);
    info
}

/// An EXIF ASCII field, trimmed of padding; None when absent or empty.
fn ascii(exif: &Exif, tag: Tag) -> Option<String> {
    let field = exif.get_field(tag, In::PRIMARY)?;
    let Value::Ascii(parts) = &field.value else {
        return None;
    };
    let text = String::from_utf8_lossy(parts.first()?);
    let text = text.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!text.is_empty()).then(|| text.to_owned())
}

/// An EXIF date (`YYYY:MM:DD HH:MM:SS`) as ISO 8601, with the offset from `offset_tag` when
/// present. Dates cameras write when their clock was never set (`0000:00:00 ...`) and
/// malformed ones count as absent.
fn exif_time(exif: &Exif, tag: Tag, offset_tag: Tag) -> Option<String> {
    let raw = ascii(exif, tag)?;
    let b = raw.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = raw.get(range)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    if b.len() < 19 || b[4] != b':' || b[7] != b':' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if year == 0 || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut iso = format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}");
    if let Some(offset) = ascii(exif, offset_tag) {
        let o = offset.as_bytes();
        if o.len() == 6 && (o[0] == b'+' || o[0] == b'-') && o[3] == b':' {
            iso.push_str(&offset);
        }
    }
    Some(iso)
}

/// Latitude and longitude in degrees, when both are recorded and in range.
fn gps(exif: &Exif) -> Option<[f64; 2]> {
    let degrees = |tag: Tag, reference: Tag, negative: &str| -> Option<f64> {
        let field = exif.get_field(tag, In::PRIMARY)?;
        let Value::Rational(parts) = &field.value else {
            return None;
        };
        if parts.len() < 3 || parts.iter().any(|r| r.denom == 0) {
            return None;
        }
        let value = parts[0].to_f64() + parts[1].to_f64() / 60.0 + parts[2].to_f64() / 3600.0;
        let sign = match ascii(exif, reference) {
            Some(r) if r.eq_ignore_ascii_case(negative) => -1.0,
            _ => 1.0,
        };
        Some(sign * value)
    };
    let lat = degrees(Tag::GPSLatitude, Tag::GPSLatitudeRef, "S")?;
    let lon = degrees(Tag::GPSLongitude, Tag::GPSLongitudeRef, "W")?;
    ((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)).then_some([lat, lon])
}

/// Seconds since the epoch as ISO 8601 in this machine's time zone.
fn local_time(seconds: i64) -> String {
    let t = seconds as libc::time_t;
    // SAFETY: localtime_r writes only into `tm`, which lives for the call.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if !ok {
        return "1970-01-01T00:00:00".into();
    }
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_exif_is_dated_by_its_time() {
        let info = read_photo_info(b"not an image", 86_400 * 1_000_000_000 * 365);
        assert_eq!(info.taken_from, TakenFrom::FileTime);
        assert_eq!((info.width, info.height), (0, 0));
        assert!(info.taken.starts_with("1970-12-3") || info.taken.starts_with("1971-01-01"));
    }

    #[test]
    fn camera_names_the_make_once() {
        let mut info = PhotoInfo::from_file_time(0);
        (info.make, info.model) = (Some("Canon".into()), Some("Canon EOS R6".into()));
        assert_eq!(info.camera().as_deref(), Some("Canon EOS R6"));
        info.model = Some("iPhone 12".into());
        info.make = Some("Apple".into());
        assert_eq!(info.camera().as_deref(), Some("Apple iPhone 12"));
        (info.make, info.model) = (Some("NIKON CORPORATION".into()), Some("NIKON D750".into()));
        assert_eq!(info.camera().as_deref(), Some("NIKON D750"));
    }
}
