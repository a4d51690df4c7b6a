//! The built-in data set: coloured shapes on textured backgrounds, with several caption
//! phrasings, generated deterministically from a seed. It needs nothing from outside, trains
//! `liteclip-nano` to a useful model on a CPU in minutes, and has classes (colour x shape) for
//! zero-shot checks with prompt templates the model never saw in training.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::fsio::{self, write_atomically};
use crate::rng::Rng;

pub const COLORS: [(&str, [u8; 3]); 6] = [
    ("red", [215, 35, 35]),
    ("green", [40, 165, 55]),
    ("blue", [40, 80, 220]),
    ("yellow", [235, 205, 30]),
    ("purple", [140, 55, 185]),
    ("orange", [245, 135, 25]),
];

pub const SHAPES: [&str; 4] = ["circle", "square", "triangle", "cross"];

/// Caption phrasings used for training; `{size}`, `{color}`, `{shape}` are filled in.
pub const TRAIN_TEMPLATES: [&str; 5] = [
    "a {color} {shape}",
    "a photo of a {color} {shape}",
    "a {size} {color} {shape} on a grey background",
    "there is a {color} {shape} in the picture",
    "{color} {shape}, {size}",
];

/// A phrasing that no training caption uses, for zero-shot evaluation; `{}` is the class name.
pub const HELD_OUT_TEMPLATE: &str = "a drawing of a {}";

/// The class names, `"{color} {shape}"`, in a fixed order.
pub fn class_names() -> Vec<String> {
    COLORS
        .iter()
        .flat_map(|(c, _)| SHAPES.iter().map(move |s| format!("{c} {s}")))
        .collect()
}

/// How the generated files are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Flickr8k: `Images/*.png` and `captions.txt` (CSV `image,caption`, five rows per image).
    Captions,
    /// ImageFolder: one sub-folder per class (`"red circle/00001.png"`), for zero-shot tests.
    Folders,
}

/// One generated image and what it shows.
pub struct ShapeImage {
    pub pixels: RgbImage,
    pub color: usize,
    pub shape: usize,
    pub large: bool,
}

fn inside(shape: usize, dx: f64, dy: f64, r: f64) -> bool {
    match shape {
        0 => dx * dx + dy * dy <= r * r,
        1 => dx.abs() <= 0.85 * r && dy.abs() <= 0.85 * r,
        2 => {
            // Upward triangle: apex (0, -r), base at y = 0.8 r from -r to r.
            let t = (dy + r) / (1.8 * r);
            (0.0..=1.0).contains(&t) && dx.abs() <= t * r
        }
        _ => {
            let arm = 0.3 * r;
            (dx.abs() <= arm && dy.abs() <= r) || (dy.abs() <= arm && dx.abs() <= r)
        }
    }
}

/// Draws image number `index` of the data set of `seed`.
pub fn draw(seed: u64, index: u64, size: u32) -> ShapeImage {
    let mut rng = Rng::derive(seed, 0x5348_4150, index);
    let color = rng.below(COLORS.len());
    let shape = rng.below(SHAPES.len());
    let large = rng.uniform() < 0.5;
    let s = f64::from(size);
    let r = s * if large {
        rng.range(0.26, 0.36)
    } else {
        rng.range(0.14, 0.2)
    };
    let cx = rng.range(r + 1.0, s - r - 1.0);
    let cy = rng.range(r + 1.0, s - r - 1.0);
    let background = rng.range(95.0, 185.0);
    let tint = [
        rng.range(-12.0, 12.0),
        rng.range(-12.0, 12.0),
        rng.range(-12.0, 12.0),
    ];
    let fg = COLORS[color].1;
    let mut noise = Rng::derive(seed, 0x4e4f_4953, index);
    let pixels = RgbImage::from_fn(size, size, |x, y| {
        // 2x2 supersampling for smooth edges.
        let mut cover = 0.0;
        for (ox, oy) in [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)] {
            if inside(shape, f64::from(x) + ox - cx, f64::from(y) + oy - cy, r) {
                cover += 0.25;
            }
        }
        let jitter = noise.range(-10.0, 10.0);
        let px = |c: usize| {
            let bg = background + tint[c] + jitter;
            let v = cover * (f64::from(fg[c]) + 0.5 * jitter) + (1.0 - cover) * bg;
            v.round().clamp(0.0, 255.0) as u8
        };
        Rgb([px(0), px(1), px(2)])
    });
    ShapeImage {
        pixels,
        color,
        shape,
        large,
    }
}

/// Fills a caption template for an image.
pub fn caption(template: &str, image: &ShapeImage) -> String {
    template
        .replace("{color}", COLORS[image.color].0)
        .replace("{shape}", SHAPES[image.shape])
        .replace("{size}", if image.large { "large" } else { "small" })
}

/// Writes `n_images` generated images (side `size`) under `root` in the given layout and
/// returns the paths written. Files are written atomically; re-running with the same arguments
/// reproduces the same bytes.
pub fn generate(
    root: &Path,
    n_images: usize,
    seed: u64,
    size: u32,
    layout: Layout,
) -> Result<Vec<PathBuf>> {
    if n_images == 0 {
        return Err(Error::invalid("n_images must be at least 1"));
    }
    if size < 16 {
        return Err(Error::invalid(format!(
            "image size must be at least 16, got {size}"
        )));
    }
    let images_dir = match layout {
        Layout::Captions => root.join("Images"),
        Layout::Folders => root.to_owned(),
    };
    std::fs::create_dir_all(&images_dir).map_err(|e| Error::io(&images_dir, e))?;
    // Images are independent: draw and write them in parallel, then the captions in order.
    let written: Vec<(PathBuf, String)> = (0..n_images)
        .into_par_iter()
        .map(|i| write_one(&images_dir, seed, i, size, layout))
        .collect::<Result<_>>()?;
    if layout == Layout::Captions {
        let csv = String::from("image,caption\n")
            + &written
                .iter()
                .map(|(_, rows)| rows.as_str())
                .collect::<String>();
        let captions = root.join("captions.txt");
        fsio::write_bytes(&captions, csv.as_bytes())?;
    }
    Ok(written.into_iter().map(|(path, _)| path).collect())
}

/// Draws and writes image `i`; returns its path and its caption rows.
fn write_one(
    images_dir: &Path,
    seed: u64,
    i: usize,
    size: u32,
    layout: Layout,
) -> Result<(PathBuf, String)> {
    let image = draw(seed, i as u64, size);
    let name = format!("shape_{i:05}.png");
    let path = match layout {
        Layout::Captions => images_dir.join(&name),
        Layout::Folders => {
            let class = format!("{} {}", COLORS[image.color].0, SHAPES[image.shape]);
            let dir = images_dir.join(class);
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            dir.join(&name)
        }
    };
    write_atomically(&path, |tmp| {
        image
            .pixels
            .save_with_format(tmp, image::ImageFormat::Png)
            .map_err(|e| Error::invalid(format!("{}: cannot write PNG: {e}", tmp.display())))
    })?;
    let rows: String = TRAIN_TEMPLATES
        .iter()
        .map(|t| format!("{name},{}\n", csv_field(&caption(t, &image))))
        .collect();
    Ok((path, rows))
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_varied() {
        let a = draw(3, 10, 48);
        let b = draw(3, 10, 48);
        assert_eq!(a.pixels, b.pixels);
        let kinds: std::collections::HashSet<(usize, usize)> = (0..200)
            .map(|i| {
                let d = draw(3, i, 32);
                (d.color, d.shape)
            })
            .collect();
        assert_eq!(kinds.len(), COLORS.len() * SHAPES.len());
    }

    #[test]
    fn shape_has_its_colour() {
        // The centre of a large shape is the shape's colour (up to the noise).
        let img = (0..50)
            .map(|i| draw(1, i, 64))
            .find(|d| d.large && d.shape != 3)
            .unwrap();
        let counts = img
            .pixels
            .pixels()
            .filter(|p| {
                let c = COLORS[img.color].1;
                (0..3).all(|k| (i32::from(p[k]) - i32::from(c[k])).abs() <= 8)
            })
            .count();
        assert!(counts > 64 * 64 / 20, "{counts}");
    }

    #[test]
    fn writes_a_flickr_layout_readable_as_a_dataset() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), 12, 0, 32, Layout::Captions).unwrap();
        let data = crate::data::Dataset::open(dir.path(), &Default::default()).unwrap();
        assert_eq!(data.num_images(), 12);
        assert_eq!(data.num_captions(), 12 * TRAIN_TEMPLATES.len());
        assert!(!HELD_OUT_TEMPLATE.is_empty());
        for e in &data.entries {
            assert!(e.captions.iter().all(|c| !c.starts_with("a drawing")));
        }
    }
}
