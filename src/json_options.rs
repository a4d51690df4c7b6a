//! Options objects read from JSON (what the Python keyword arguments of `train` and `evaluate`
//! become), with errors that name the field at fault.

use crate::error::{Error, Result};

/// Deserialises a JSON object, naming the field at fault in the error.
pub fn from_json_named<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    let mut de = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        // serde_json appends " at line L column C": meaningless to a caller who passed keywords.
        let message = message
            .rsplit_once(" at line ")
            .map_or(message.as_str(), |(m, _)| m)
            .to_string();
        let message = if field.is_empty() || field == "." {
            message
        } else {
            format!("{field}: {message}")
        };
        if message.contains("invalid type") {
            Error::InvalidType(message)
        } else {
            Error::invalid(message)
        }
    })
}
