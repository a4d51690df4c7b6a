//! Zero-shot building blocks shared by inference, evaluation and training: prompt templates
//! (one, a list, or the built-in ensemble), filling them with a class name, and class
//! prototypes (the averaged prompt embeddings CLIP classifies against).

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::liteclip::LiteClip;

/// Class prototypes: for each class, the mean of its L2-normalised prompt embeddings
/// (one per template, `{}` replaced by the class name), normalised again (CLIP's recipe).
pub fn class_embeddings(
    model: &LiteClip,
    classes: &[String],
    templates: &[String],
) -> Result<Tensor> {
    if templates.is_empty() {
        return Err(Error::invalid("at least one prompt template is needed"));
    }
    let prompts: Vec<String> = classes
        .iter()
        .flat_map(|c| templates.iter().map(move |t| fill_template(t, c)))
        .collect();
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let emb = model
        .encode_texts(&refs)?
        .f_view([classes.len() as i64, templates.len() as i64, -1])?
        .f_mean_dim([1i64].as_slice(), false, Kind::Float)?;
    Ok(crate::model::l2_normalize(&emb))
}

/// The prompt used when none is given.
pub const DEFAULT_TEMPLATE: &str = "a photo of a {}.";

/// A built-in prompt ensemble in the manner of CLIP's ImageNet templates: several renderings
/// of the same class name whose embeddings are averaged (`templates="ensemble"`).
pub const ENSEMBLE_TEMPLATES: [&str; 18] = [
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a blurry photo of a {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "a good photo of the {}.",
    "a low resolution photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a rendering of a {}.",
    "a drawing of a {}.",
    "a sketch of a {}.",
    "art of the {}.",
    "a toy {}.",
    "itap of a {}.",
];

/// Templates as users give them: none (the default prompt), `["ensemble"]` (the built-in
/// ensemble), or their own.
pub fn resolve_templates(templates: Option<Vec<String>>) -> Vec<String> {
    match templates {
        None => vec![DEFAULT_TEMPLATE.to_owned()],
        Some(t) if t.len() == 1 && t[0] == "ensemble" => {
            ENSEMBLE_TEMPLATES.iter().map(|s| s.to_string()).collect()
        }
        Some(t) => t,
    }
}

/// `"a photo of a {}"` with the class name in place of `{}` (or appended after a space when
/// the template has no `{}`).
pub fn fill_template(template: &str, class: &str) -> String {
    if template.contains("{}") {
        template.replace("{}", class)
    } else {
        format!("{template} {class}")
    }
}
