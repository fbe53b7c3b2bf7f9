//! Documents read and written by the offline subcommands: one YAML or JSON object from a file
//! (bounded in size), printed back as JSON or YAML.

use std::{
    io::{self, Read},
    path::Path,
};

use clap::ValueEnum;
use serde_json::Value;

use super::{CliError, Result, input};
use crate::webhook;

/// A document format, read or written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Json,
    Yaml,
}

/// The file's text and how to name it in messages. At most [`webhook::BODY_LIMIT`] bytes are
/// read (the largest AdmissionReview the webhook accepts), so `-f /dev/zero` ends.
pub(super) fn read_input(path: &Path) -> Result<(String, String)> {
    let (reader, shown): (Box<dyn Read>, String) = if path == Path::new("-") {
        (Box::new(io::stdin().lock()), "stdin".into())
    } else {
        let shown = path.display().to_string();
        let file =
            std::fs::File::open(path).map_err(|e| input(format!("cannot read {shown}: {e}")))?;
        (Box::new(file), shown)
    };
    let mut text = String::new();
    reader
        .take(webhook::BODY_LIMIT as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|e| input(format!("cannot read {shown}: {e}")))?;
    if text.len() > webhook::BODY_LIMIT {
        return Err(input(format!(
            "{shown}: larger than {} bytes, the largest AdmissionReview the webhook accepts",
            webhook::BODY_LIMIT
        )));
    }
    Ok((text, shown))
}

/// Parses JSON (text starting with `{` or `[`) or YAML (one document) into a JSON value.
pub fn parse_document(text: &str, shown: &str) -> Result<(Value, Format)> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let value =
            serde_json::from_str(text).map_err(|e| input(format!("{shown}: invalid JSON: {e}")))?;
        return Ok((value, Format::Json));
    }
    let value: Value = serde_saphyr::from_str_with_options(text, crate::config::yaml_options())
        .map_err(|e| input(format!("{shown}: invalid YAML: {e}")))?;
    Ok((value, Format::Yaml))
}

/// `apiVersion` and `kind` of a document that must be a Kubernetes object.
pub(super) fn type_of(document: &Value, shown: &str) -> Result<(String, String)> {
    let Value::Object(map) = document else {
        return Err(input(format!(
            "{shown}: expected a Kubernetes object, found {}",
            value_type(document)
        )));
    };
    let field = |name: &str| match map.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(input(format!("{shown}: the object has no {name}"))),
    };
    Ok((field("apiVersion")?, field("kind")?))
}

fn value_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "an empty document",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Writes a value as pretty JSON or YAML, ending with a newline.
pub fn render_value(value: &Value, format: Format) -> Result<String> {
    match format {
        Format::Json => serde_json::to_string_pretty(value)
            .map(|s| s + "\n")
            .map_err(|e| CliError::Output(e.to_string())),
        Format::Yaml => serde_saphyr::to_string(value).map_err(|e| CliError::Output(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn yaml_and_json_documents_parse() {
        let (v, f) = parse_document("apiVersion: v1\nkind: Pod\n", "t").unwrap();
        assert_eq!(
            (v, f),
            (json!({"apiVersion": "v1", "kind": "Pod"}), Format::Yaml)
        );
        let (v, f) = parse_document(" {\"kind\": \"Pod\"}", "t").unwrap();
        assert_eq!((v, f), (json!({"kind": "Pod"}), Format::Json));
        for bad in ["{not json", "a: [1", "a: 1\n---\nb: 2\n"] {
            let error = parse_document(bad, "f.yaml").unwrap_err().to_string();
            assert!(error.starts_with("f.yaml: invalid"), "{error}");
            assert!(!error.contains('\n'), "{error}");
        }
    }

    #[test]
    fn input_is_read_up_to_the_largest_review() {
        let error = read_input(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(
            error.starts_with("/dev/zero: larger than 19922944 bytes"),
            "{error}"
        );
    }
}
