//! Rows of a view as bytes: CSV (RFC 4180) and NDJSON, one row per line, appended to a buffer
//! so that the export stream and the synchronous `$viewdefinition-run` write the same bytes.

use std::borrow::Borrow;

use serde_json::Value;

/// The output formats of a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TabularFormat {
    /// Comma-separated values with a header line (RFC 4180).
    Csv,
    /// One JSON object per line, keys in column order.
    Ndjson,
    /// One JSON array of row objects (`$viewdefinition-run` only).
    Json,
    /// Apache Parquet files (`$viewdefinition-export` only: a file is written whole).
    Parquet,
}

impl TabularFormat {
    /// The format a `_format` code names (`csv`, `ndjson`, `json`, or their media types).
    pub fn parse(code: &str) -> Option<Self> {
        match code.trim().to_ascii_lowercase().as_str() {
            "csv" | "text/csv" => Some(TabularFormat::Csv),
            "ndjson"
            | "application/x-ndjson"
            | "application/ndjson"
            | "application/fhir+ndjson" => Some(TabularFormat::Ndjson),
            "json" | "application/json" => Some(TabularFormat::Json),
            "parquet" | "application/vnd.apache.parquet" => Some(TabularFormat::Parquet),
            _ => None,
        }
    }

    /// The `_format` code of this format.
    pub fn code(self) -> &'static str {
        match self {
            TabularFormat::Csv => "csv",
            TabularFormat::Ndjson => "ndjson",
            TabularFormat::Json => "json",
            TabularFormat::Parquet => "parquet",
        }
    }

    /// The media type of a response in this format.
    pub fn media_type(self) -> &'static str {
        match self {
            TabularFormat::Csv => "text/csv; charset=utf-8",
            TabularFormat::Ndjson => "application/x-ndjson",
            TabularFormat::Json => "application/json",
            TabularFormat::Parquet => "application/vnd.apache.parquet",
        }
    }
}

/// Appends the CSV header line: the column names.
pub fn csv_header<S: AsRef<str>>(names: &[S], out: &mut Vec<u8>) {
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        csv_field(name.as_ref(), out);
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends one CSV row: empty for null, text as is, numbers and booleans as their JSON text,
/// and collections (arrays, objects) as JSON text; quoted when needed.
pub fn csv_row<V: Borrow<Value>>(values: &[V], out: &mut Vec<u8>) {
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let value: &Value = value.borrow();
        match value {
            Value::Null => {}
            Value::String(text) => csv_field(text, out),
            Value::Bool(_) | Value::Number(_) => {
                out.extend_from_slice(value.to_string().as_bytes())
            }
            Value::Array(_) | Value::Object(_) => csv_field(&value.to_string(), out),
        }
    }
    out.extend_from_slice(b"\r\n");
}

fn csv_field(text: &str, out: &mut Vec<u8>) {
    if text.bytes().any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r')) {
        out.push(b'"');
        for byte in text.bytes() {
            if byte == b'"' {
                out.push(b'"');
            }
            out.push(byte);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(text.as_bytes());
    }
}

/// Appends one row as a JSON object with the keys in column order (no newline).
pub fn json_object<S: AsRef<str>, V: Borrow<Value>>(names: &[S], values: &[V], out: &mut Vec<u8>) {
    out.push(b'{');
    for (i, (name, value)) in names.iter().zip(values).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Serialising a string or a `Value` to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, name.as_ref());
        out.push(b':');
        let _ = serde_json::to_writer(&mut *out, value.borrow());
    }
    out.push(b'}');
}

/// Appends one NDJSON line.
pub fn ndjson_row<S: AsRef<str>, V: Borrow<Value>>(names: &[S], values: &[V], out: &mut Vec<u8>) {
    json_object(names, values, out);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn csv_quotes_what_needs_it_and_writes_collections_as_json() {
        let mut out = Vec::new();
        csv_header(&["id", "name, full", "n"], &mut out);
        csv_row(&[json!("p1"), json!("Smith, \"Jo\"\nJr"), json!(1.50)], &mut out);
        csv_row(&[json!(null), json!(["a", "b"]), json!(true)], &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap_or_default(),
            "id,\"name, full\",n\r\np1,\"Smith, \"\"Jo\"\"\nJr\",1.5\r\n,\"[\"\"a\"\",\"\"b\"\"]\",true\r\n"
        );
    }

    #[test]
    fn ndjson_keeps_the_column_order() {
        let mut out = Vec::new();
        ndjson_row(&["z", "a"], &[json!(1), json!(null)], &mut out);
        assert_eq!(String::from_utf8(out).unwrap_or_default(), "{\"z\":1,\"a\":null}\n");
        assert_eq!(TabularFormat::parse("text/csv"), Some(TabularFormat::Csv));
        assert_eq!(TabularFormat::parse("parquet"), Some(TabularFormat::Parquet));
        assert_eq!(TabularFormat::parse("xlsx"), None);
    }
}
