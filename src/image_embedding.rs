//! Embedding many images, the one way: threads on all cores read, decode and transform the
//! items ahead of the model ([`prefetch`]'s bounded window), the model embeds each batch of the
//! items that could be used, and the caller gets every item's outcome in input order, with the
//! embeddings of the good ones. An item that cannot be used never makes the batch decode again.
//!
//! `LiteClip::encode_images` (stops at the first bad image), `embed_folder` (skips and reports
//! bad images) and the photo index (skips them, and keeps each file's hash) are all this.

use tch::Tensor;

use crate::cancel;
use crate::error::Result;
use crate::liteclip::LiteClip;
use crate::prefetch;

/// One batch's outcome: `items[i]` is what `prepare` kept of the batch's i-th item, or why it
/// could not be used; `rows` holds the embeddings of the good items, in order: `(good, dim)`
/// float32 on the CPU, rows of unit length.
pub struct EmbeddedBatch<T, E> {
    /// Index (in the whole list) of the batch's first item.
    pub start: usize,
    pub items: Vec<std::result::Result<T, E>>,
    pub rows: Tensor,
}

/// Embeds `items`, `batch` at a time. `prepare` runs on worker threads: it turns one item into
/// the model's input (`(3, S, S)` floats at the model's image size) and anything the caller
/// wants to keep with it, or says why the item cannot be used. `sink` gets each batch in order;
/// an error from it stops the work. [`cancel::check`] is polled between batches.
pub fn embed_each<I, T, E, P, S>(
    model: &LiteClip,
    items: &[I],
    batch: usize,
    prepare: P,
    mut sink: S,
) -> Result<()>
where
    I: Sync,
    T: Send,
    E: Send,
    P: Fn(&I) -> std::result::Result<(T, Vec<f32>), E> + Sync,
    S: FnMut(EmbeddedBatch<T, E>) -> Result<()>,
{
    let size = model.config().image_size;
    prefetch::map_in_order(items, batch, prepare, |start, prepared| {
        cancel::check()?;
        let good = prepared.iter().filter(|p| p.is_ok()).count();
        let mut pixels = Vec::with_capacity(good * (3 * size * size) as usize);
        let mut kept = Vec::with_capacity(prepared.len());
        for item in prepared {
            kept.push(item.map(|(keep, data)| {
                pixels.extend_from_slice(&data);
                keep
            }));
        }
        let rows = if good == 0 {
            Tensor::f_zeros(
                [0, model.config().embed_dim],
                (tch::Kind::Float, tch::Device::Cpu),
            )?
        } else {
            let input = Tensor::f_from_slice(&pixels)?.f_view([good as i64, 3, size, size])?;
            model.encode_pixels(&input)?
        };
        sink(EmbeddedBatch {
            start,
            items: kept,
            rows,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LiteClipConfig;
    use crate::image::ImageInput;

    /// Items 0..n: odd ones cannot be used; even ones are images of different colours.
    #[test]
    fn every_item_gets_its_outcome_in_order_and_good_rows_are_the_models() {
        let model = {
            let _rng = crate::torch_rng_lock();
            tch::manual_seed(0);
            LiteClip::new(LiteClipConfig::nano(), tch::Device::Cpu).unwrap()
        };
        let (size, decode) = (model.config().image_size as u32, model.decode());
        let image = |i: usize| {
            ImageInput::Pixels(image::RgbImage::from_fn(40, 30, move |x, y| {
                image::Rgb([(i * 20) as u8, x as u8 * 3, y as u8 * 5])
            }))
        };
        let items: Vec<usize> = (0..11).collect();
        let mut seen = Vec::new();
        let mut rows = Vec::new();
        embed_each(
            &model,
            &items,
            4,
            |&i| match i % 2 {
                0 => Ok((i, image(i).preprocess(size, decode).unwrap())),
                _ => Err(format!("item {i} is bad")),
            },
            |batch| {
                assert_eq!(batch.start, seen.len());
                let good = batch.items.iter().filter(|r| r.is_ok()).count() as i64;
                assert_eq!(batch.rows.size()[0], good);
                seen.extend(batch.items);
                rows.push(batch.rows);
                Ok(())
            },
        )
        .unwrap();
        for (i, outcome) in seen.iter().enumerate() {
            match outcome {
                Ok(kept) => assert_eq!(*kept, i),
                Err(reason) => assert_eq!(reason, &format!("item {i} is bad")),
            }
        }
        let got = Tensor::cat(&rows, 0);
        let good: Vec<ImageInput> = (0..11).step_by(2).map(image).collect();
        let want = model
            .encode(&crate::liteclip::Images::Inputs(good))
            .unwrap();
        assert!(got.allclose(&want, 1e-5, 1e-5, false));
    }
}
