//! Queries made of several terms, as rclip takes them: `"2:a dog" + beach.jpg - people`. Each
//! term is a text, an image, or a photo already in the index, with a weight (`W:term`, 1 when
//! not given; a term after `-` counts negative). The query vector is the normalised weighted sum
//! of the terms' unit embeddings.

use crate::error::{Error, Result};
use crate::liteclip::{Images, LiteClip};

/// What a term is.
pub enum Term {
    Text(String),
    /// One image (to embed).
    Image(Images),
    /// An indexed photo, by id: its stored row is used, nothing is decoded.
    Indexed(u64),
}

/// A term and its weight.
pub struct Weighted {
    pub term: Term,
    pub weight: f32,
}

/// A term as typed, before it is known to be a text or an image.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub text: String,
    pub weight: f32,
}

/// Splits a query in rclip's form into weighted terms: `+` and `-` (alone, as separate words)
/// join terms, `W:` before a term weights it, and words between operators form one term (so
/// `a red car + beach.jpg` is two terms). A query may start with `-`.
pub fn parse_terms<S: AsRef<str>>(words: &[S]) -> Result<Vec<Token>> {
    let mut tokens = Vec::new();
    let mut sign = 1.0f32;
    let mut current: Vec<&str> = Vec::new();
    let mut expecting_term = true;
    let finish = |current: &mut Vec<&str>, sign: f32, tokens: &mut Vec<Token>| -> Result<()> {
        let joined = current.join(" ");
        current.clear();
        let (weight, text) = split_weight(&joined)?;
        if text.trim().is_empty() {
            return Err(Error::invalid(format!(
                "a query term is empty in {:?}: put a text or an image path between + and -",
                words
                    .iter()
                    .map(|w| w.as_ref())
                    .collect::<Vec<_>>()
                    .join(" ")
            )));
        }
        tokens.push(Token {
            text: text.trim().to_owned(),
            weight: sign * weight,
        });
        Ok(())
    };
    for word in words.iter().map(|w| w.as_ref()) {
        match word {
            "+" | "-" => {
                if !current.is_empty() {
                    finish(&mut current, sign, &mut tokens)?;
                } else if !(tokens.is_empty() && expecting_term && word == "-") {
                    return Err(Error::invalid(format!(
                        "'{word}' must stand between two terms, as in: \"a dog\" {word} \"a cat\""
                    )));
                }
                sign = if word == "-" { -1.0 } else { 1.0 };
                expecting_term = true;
            }
            _ => {
                current.push(word);
                expecting_term = false;
            }
        }
    }
    if current.is_empty() {
        return Err(Error::invalid(
            "the query is empty or ends with + or -: give words to search for, or an image",
        ));
    }
    finish(&mut current, sign, &mut tokens)?;
    Ok(tokens)
}

/// `2:a dog` -> (2, "a dog"); a prefix before ':' that is not a number is part of the text.
fn split_weight(term: &str) -> Result<(f32, &str)> {
    if let Some((head, rest)) = term.split_once(':') {
        if let Ok(weight) = head.trim().parse::<f32>() {
            if !weight.is_finite() {
                return Err(Error::invalid(format!(
                    "the weight of {term:?} is not finite"
                )));
            }
            return Ok((weight, rest));
        }
    }
    Ok((1.0, term))
}

/// Turns image terms that are paths to photos the index holds (`indexed(path)` gives the id)
/// into [`Term::Indexed`]: their stored rows are used, nothing is decoded.
pub fn use_indexed_rows(
    queries: &mut [Vec<Weighted>],
    indexed: &dyn Fn(&std::path::Path) -> Option<u64>,
) {
    for w in queries.iter_mut().flatten() {
        if let Term::Image(Images::Inputs(items)) = &w.term {
            if let [crate::image::ImageInput::Path(path)] = items.as_slice() {
                let absolute = std::path::absolute(path).unwrap_or_else(|_| path.clone());
                if let Some(id) = indexed(&absolute) {
                    w.term = Term::Indexed(id);
                }
            }
        }
    }
}

/// The unit query vector of each query: texts of all queries in one model pass, images in
/// another, indexed photos from `stored` (their rows in the index).
pub fn query_vectors(
    model: &LiteClip,
    queries: &[Vec<Weighted>],
    stored: &mut dyn FnMut(u64) -> Result<Option<Vec<f32>>>,
) -> Result<Vec<Vec<f32>>> {
    let terms: Vec<&Weighted> = queries.iter().flatten().collect();
    let mut vectors: Vec<Vec<f32>> = vec![Vec::new(); terms.len()];
    let texts: Vec<(usize, &str)> = terms
        .iter()
        .enumerate()
        .filter_map(|(i, w)| match &w.term {
            Term::Text(t) => Some((i, t.as_str())),
            _ => None,
        })
        .collect();
    if !texts.is_empty() {
        let strs: Vec<&str> = texts.iter().map(|(_, t)| *t).collect();
        let rows = model.encode_texts(&strs)?;
        for (row, (i, _)) in texts.iter().enumerate() {
            vectors[*i] = Vec::<f32>::try_from(&rows.f_get(row as i64)?)?;
        }
    }
    embed_image_terms(model, &terms, &mut vectors)?;
    for (i, w) in terms.iter().enumerate() {
        if let Term::Indexed(id) = w.term {
            vectors[i] = stored(id)?.ok_or_else(|| {
                Error::invalid(format!("photo {id} is not in the index (any more)"))
            })?;
        }
    }
    let mut out = Vec::with_capacity(queries.len());
    let mut next = 0;
    for query in queries {
        let parts = &vectors[next..next + query.len()];
        let weights = query.iter().map(|w| w.weight);
        out.push(combine(parts, weights)?);
        next += query.len();
    }
    Ok(out)
}

/// Embeds the image terms: files, bytes and pixel arrays in one pass, tensors in another.
fn embed_image_terms(
    model: &LiteClip,
    terms: &[&Weighted],
    vectors: &mut [Vec<f32>],
) -> Result<()> {
    let mut inputs = Vec::new();
    let mut pixels = Vec::new();
    for (i, w) in terms.iter().enumerate() {
        match &w.term {
            Term::Image(Images::Inputs(items)) => inputs.extend(items.iter().map(|x| (i, x))),
            Term::Image(Images::Pixels(t)) => pixels.push((i, t)),
            _ => {}
        }
    }
    if !inputs.is_empty() {
        let batch: Vec<_> = inputs.iter().map(|(_, x)| (*x).clone()).collect();
        let rows = model.encode(&Images::Inputs(batch))?;
        for (row, (i, _)) in inputs.iter().enumerate() {
            vectors[*i] = Vec::<f32>::try_from(&rows.f_get(row as i64)?)?;
        }
    }
    if !pixels.is_empty() {
        let batch: Vec<&tch::Tensor> = pixels.iter().map(|(_, t)| *t).collect();
        let rows = model.encode(&Images::Pixels(tch::Tensor::f_cat(&batch, 0)?))?;
        for (row, (i, _)) in pixels.iter().enumerate() {
            vectors[*i] = Vec::<f32>::try_from(&rows.f_get(row as i64)?)?;
        }
    }
    Ok(())
}

/// The normalised weighted sum of unit vectors.
fn combine(parts: &[Vec<f32>], weights: impl Iterator<Item = f32>) -> Result<Vec<f32>> {
    let dim = parts.first().map_or(0, Vec::len);
    let mut sum = vec![0f32; dim];
    for (part, weight) in parts.iter().zip(weights) {
        for (s, v) in sum.iter_mut().zip(part) {
            *s += weight * v;
        }
    }
    let norm = sum.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm.is_nan() || norm <= 1e-6 {
        return Err(Error::invalid(
            "the query's terms cancel out (their weighted sum is zero): change a weight or a term",
        ));
    }
    Ok(sum.into_iter().map(|v| v / norm).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(q: &str) -> Vec<(String, f32)> {
        let words: Vec<&str> = q.split_whitespace().collect();
        parse_terms(&words)
            .unwrap()
            .into_iter()
            .map(|t| (t.text, t.weight))
            .collect()
    }

    #[test]
    fn terms_operators_and_weights() {
        assert_eq!(parsed("a dog"), vec![("a dog".into(), 1.0)]);
        assert_eq!(
            parsed("2:a dog + beach.jpg - 0.5:people"),
            vec![
                ("a dog".into(), 2.0),
                ("beach.jpg".into(), 1.0),
                ("people".into(), -0.5)
            ]
        );
        assert_eq!(parsed("- rain"), vec![("rain".into(), -1.0)]);
        // A colon that follows no number is text.
        assert_eq!(parsed("note: a cat"), vec![("note: a cat".into(), 1.0)]);
    }

    #[test]
    fn misplaced_operators_are_refused() {
        for q in ["", "a dog +", "a + + b", "+ a"] {
            let words: Vec<&str> = q.split_whitespace().collect();
            assert!(parse_terms(&words).is_err(), "{q:?}");
        }
    }

    #[test]
    fn combine_normalises_and_refuses_cancelling_terms() {
        let v = combine(&[vec![1.0, 0.0], vec![0.0, 1.0]], [1.0, 1.0].into_iter()).unwrap();
        assert!((v[0] - 0.5f32.sqrt()).abs() < 1e-6 && (v[1] - v[0]).abs() < 1e-6);
        assert!(combine(&[vec![1.0, 0.0], vec![1.0, 0.0]], [1.0, -1.0].into_iter()).is_err());
    }
}
