//! Which indexed photos a search may return, and in what order: dates, folder, camera, a
//! minimum score, paging. Filters look at what each entry recorded when it was indexed
//! ([`crate::image::photo_info`]).

use super::store::{is_plain_relative, Entry};
use crate::error::{Error, Result};

/// How results are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortBy {
    /// Most similar first.
    #[default]
    Score,
    /// Newest first, over every photo that passes the filters and scores at least
    /// [`SearchOptions::min_score`] (required for this order: without it every photo passing
    /// the filters would be listed, whatever the query).
    Date,
}

impl SortBy {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "score" => Ok(SortBy::Score),
            "date" => Ok(SortBy::Date),
            other => Err(Error::invalid(format!(
                "sort must be 'score' or 'date', not {other:?}"
            ))),
        }
    }
}

/// Everything about a search but its query.
#[derive(Debug, Clone, Default)]
pub struct SearchOptions {
    /// Results wanted (a page).
    pub top_k: usize,
    /// Results skipped before them: the page is results `offset .. offset + top_k`.
    pub offset: usize,
    pub filter: PhotoFilter,
    /// Cosine similarity below which nothing is returned.
    pub min_score: Option<f32>,
    pub sort: SortBy,
}

impl SearchOptions {
    /// Checks what a caller can get wrong, with messages saying how to put it right.
    pub fn check(&self) -> Result<()> {
        if self.top_k == 0 {
            return Err(Error::invalid("k (--top-k) must be at least 1"));
        }
        if let Some(s) = self.min_score {
            if !(-1.0..=1.0).contains(&s) {
                return Err(Error::invalid(format!(
                    "min_score is a cosine similarity, between -1 and 1; got {s}"
                )));
            }
        }
        if self.sort == SortBy::Date && self.min_score.is_none() {
            return Err(Error::invalid(
                "sort='date' lists every photo scoring at least min_score, newest first: give \
                 min_score (--min-score) to say how close a photo must be to the query (look at \
                 the scores of a search sorted by score to pick it)",
            ));
        }
        if let (Some(after), Some(before)) = (&self.filter.after, &self.filter.before) {
            if after > before {
                return Err(Error::invalid(format!(
                    "after ({after}) is later than before ({before}): no photo can match"
                )));
            }
        }
        Ok(())
    }
}

/// Conditions on the photo itself. An empty filter lets everything through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PhotoFilter {
    /// Taken on or after this day, `YYYY-MM-DD`.
    pub after: Option<String>,
    /// Taken on or before this day, `YYYY-MM-DD`.
    pub before: Option<String>,
    /// Under this folder, relative to the indexed root, '/'-separated.
    pub under: Option<String>,
    /// Case-insensitive part of the camera's make or model (stored lower case).
    pub camera: Option<String>,
}

impl PhotoFilter {
    /// A filter from what a user typed: dates as `YYYY-MM-DD`, a folder relative to the root.
    pub fn new(
        after: Option<&str>,
        before: Option<&str>,
        under: Option<&str>,
        camera: Option<&str>,
    ) -> Result<Self> {
        let under = match under.map(|u| u.trim_matches('/')) {
            None => None,
            Some("" | ".") => None,
            Some(folder) if is_plain_relative(folder) => Some(folder.to_owned()),
            Some(folder) => {
                return Err(Error::invalid(format!(
                    "under={folder:?}: give a folder relative to the indexed folder, such as \
                     '2024/holidays' (no '..')"
                )))
            }
        };
        Ok(PhotoFilter {
            after: after.map(|d| parse_day("after", d)).transpose()?,
            before: before.map(|d| parse_day("before", d)).transpose()?,
            under,
            camera: camera
                .map(|c| c.trim().to_lowercase())
                .filter(|c| !c.is_empty()),
        })
    }

    pub fn is_empty(&self) -> bool {
        *self == PhotoFilter::default()
    }

    /// Whether the entry passes. An entry without recorded metadata passes no date or camera
    /// condition (nothing says it matches).
    pub fn allows(&self, entry: &Entry) -> bool {
        if let Some(folder) = &self.under {
            if !super::scan::covers(folder, &entry.path) {
                return false;
            }
        }
        if self.after.is_none() && self.before.is_none() && self.camera.is_none() {
            return true;
        }
        let Some(info) = &entry.info else {
            return false;
        };
        let day = info.day();
        if self.after.as_deref().is_some_and(|after| day < after) {
            return false;
        }
        if self.before.as_deref().is_some_and(|before| day > before) {
            return false;
        }
        if let Some(camera) = &self.camera {
            let names = [info.make.clone(), info.model.clone(), info.camera()];
            if !names
                .iter()
                .flatten()
                .any(|n| n.to_lowercase().contains(camera.as_str()))
            {
                return false;
            }
        }
        true
    }
}

/// `text` as a checked `YYYY-MM-DD` day.
fn parse_day(what: &str, text: &str) -> Result<String> {
    let text = text.trim();
    let b = text.as_bytes();
    let well_formed = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    let valid = well_formed && {
        let month: u32 = text[5..7].parse().unwrap_or(0);
        let day: u32 = text[8..10].parse().unwrap_or(0);
        (1..=12).contains(&month) && (1..=31).contains(&day)
    };
    if !valid {
        return Err(Error::invalid(format!(
            "{what}={text:?}: give a day as YYYY-MM-DD, such as 2024-07-14"
        )));
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::photo_info::PhotoInfo;

    fn entry(path: &str, taken: &str, model: Option<&str>) -> Entry {
        let mut info = PhotoInfo::from_file_time(0);
        info.taken = taken.into();
        info.model = model.map(str::to_owned);
        Entry {
            id: 0,
            path: path.into(),
            size: 1,
            mtime_ns: 0,
            hash: String::new(),
            info: Some(info),
        }
    }

    #[test]
    fn dates_are_inclusive_days() {
        let f = PhotoFilter::new(Some("2024-07-14"), Some("2024-07-15"), None, None).unwrap();
        assert!(f.allows(&entry("a.jpg", "2024-07-14T00:00:00", None)));
        assert!(f.allows(&entry("a.jpg", "2024-07-15T23:59:59+02:00", None)));
        assert!(!f.allows(&entry("a.jpg", "2024-07-13T23:59:59", None)));
        assert!(!f.allows(&entry("a.jpg", "2024-07-16T00:00:00", None)));
    }

    #[test]
    fn folder_and_camera() {
        let f = PhotoFilter::new(None, None, Some("trips/"), Some(" eos ")).unwrap();
        assert!(f.allows(&entry(
            "trips/a.jpg",
            "2024-01-01T00:00:00",
            Some("Canon EOS R6")
        )));
        assert!(!f.allows(&entry("tripsx/a.jpg", "2024-01-01T00:00:00", Some("EOS"))));
        assert!(!f.allows(&entry(
            "trips/a.jpg",
            "2024-01-01T00:00:00",
            Some("Pixel 7")
        )));
        assert!(!f.allows(&entry("trips/a.jpg", "2024-01-01T00:00:00", None)));
    }

    #[test]
    fn bad_input_is_refused_with_the_form_to_use() {
        for day in ["2024-7-14", "14.07.2024", "2024-13-01", "2024-07-14x"] {
            let e = PhotoFilter::new(Some(day), None, None, None).unwrap_err();
            assert!(e.to_string().contains("YYYY-MM-DD"), "{e}");
        }
        assert!(PhotoFilter::new(None, None, Some("../x"), None).is_err());
        let no_min = SearchOptions {
            top_k: 1,
            sort: SortBy::Date,
            ..Default::default()
        };
        assert!(no_min.check().is_err());
    }
}
