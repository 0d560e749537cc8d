//! Binding values from `data` (§7.8, C5): each JSON value becomes the text PostgreSQL's input
//! function for the column's type parses, so a value of the wrong type is the record's own
//! rejection, never a failed batch. Integral floats for integer columns, 0/1 for booleans,
//! JSON arrays (or JSON text of one) for array columns, objects for json columns, `\x`-hex or
//! base64 for bytea.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::Value;

use crate::registry::{Column, LogicalType};

/// Converts one JSON value to the text PostgreSQL parses for `column` (C5); `Err` = invalid data.
pub(super) fn to_sql_text(column: &Column, value: &Value) -> Result<Option<String>, String> {
    let logical = column.logical;
    let is_array = column.db_type.ends_with("[]");
    Ok(match value {
        Value::Null => None,
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => {
            let text = n.to_string();
            match logical {
                // Integral values written as 12.0 are accepted for integer columns.
                Some(LogicalType::Int | LogicalType::Int64) if text.contains(['.', 'e', 'E']) => match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Some(format!("{}", f as i64)),
                    _ => return Err(format!("{} expects an integer, got {text}", column.name)),
                },
                Some(LogicalType::Boolean) => match text.as_str() {
                    "0" | "1" => Some(text),
                    _ => return Err(format!("{} expects a boolean, got {text}", column.name)),
                },
                _ => Some(text),
            }
        }
        Value::String(s) if is_array && s.trim_start().starts_with('[') => {
            let parsed: Value = serde_json::from_str(s).map_err(|_| format!("{} expects a JSON array", column.name))?;
            Some(pg_array_literal(&parsed).ok_or_else(|| format!("{} expects a JSON array", column.name))?)
        }
        Value::String(s) if logical == Some(LogicalType::Bytes) => {
            if s.starts_with("\\x") {
                Some(s.clone())
            } else {
                let bytes =
                    STANDARD.decode(s).map_err(|_| format!("{} expects \\x-hex or base64 bytes", column.name))?;
                Some(format!("\\x{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()))
            }
        }
        Value::String(s) => Some(s.clone()),
        Value::Array(_) if is_array => {
            Some(pg_array_literal(value).ok_or_else(|| format!("{} expects an array", column.name))?)
        }
        Value::Array(_) | Value::Object(_) if logical == Some(LogicalType::Json) => Some(value.to_string()),
        _ => return Err(format!("{} cannot take {value}", column.name)),
    })
}

/// A JSON array as a PostgreSQL array literal (`{"a","b c",NULL}`, nested for dimensions).
fn pg_array_literal(v: &Value) -> Option<String> {
    let Value::Array(items) = v else { return None };
    let mut out = String::from("{");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match item {
            Value::Null => out.push_str("NULL"),
            Value::Array(_) => out.push_str(&pg_array_literal(item)?),
            Value::String(s) => out.push_str(&quote_element(s)),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Number(n) => out.push_str(&n.to_string()),
            Value::Object(_) => out.push_str(&quote_element(&item.to_string())),
        }
    }
    out.push('}');
    Some(out)
}

fn quote_element(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_values_become_postgresql_text() {
        let col = |name: &str, db_type: &str, logical| Column {
            name: name.into(),
            db_type: db_type.into(),
            type_oid: crate::types::Oid(0),
            render_oid: crate::types::Oid(0),
            element_type: None,
            nullable: true,
            default_sql: String::new(),
            logical: Some(logical),
            excluded: false,
        };
        let int = col("n", "integer", LogicalType::Int);
        assert_eq!(to_sql_text(&int, &serde_json::json!(12.0)).unwrap(), Some("12".into()));
        assert_eq!(to_sql_text(&int, &serde_json::json!(12)).unwrap(), Some("12".into()));
        assert!(to_sql_text(&int, &serde_json::json!(12.5)).is_err());
        let arr = col("tags", "text[]", LogicalType::Json);
        assert_eq!(
            to_sql_text(&arr, &serde_json::json!(r#"["a","b \"c\"",null]"#)).unwrap(),
            Some(r#"{"a","b \"c\"",NULL}"#.into())
        );
        assert_eq!(to_sql_text(&arr, &serde_json::json!([[1, 2], [3, 4]])).unwrap(), Some("{{1,2},{3,4}}".into()));
        let bytes = col("b", "bytea", LogicalType::Bytes);
        assert_eq!(to_sql_text(&bytes, &serde_json::json!("\\x0102")).unwrap(), Some("\\x0102".into()));
        assert_eq!(to_sql_text(&bytes, &serde_json::json!("AQI=")).unwrap(), Some("\\x0102".into()));
        assert!(to_sql_text(&bytes, &serde_json::json!("!!")).is_err());
        let json = col("j", "jsonb", LogicalType::Json);
        assert_eq!(to_sql_text(&json, &serde_json::json!({"a": 1})).unwrap(), Some(r#"{"a":1}"#.into()));
        assert_eq!(to_sql_text(&json, &serde_json::json!("{\"a\":1}")).unwrap(), Some(r#"{"a":1}"#.into()));
        let b = col("done", "boolean", LogicalType::Boolean);
        assert_eq!(to_sql_text(&b, &serde_json::json!(1)).unwrap(), Some("1".into()));
        assert!(to_sql_text(&b, &serde_json::json!(2)).is_err());
        let text = col("t", "text", LogicalType::String);
        assert!(to_sql_text(&text, &serde_json::json!({"x": 1})).is_err());
        assert_eq!(to_sql_text(&text, &Value::Null).unwrap(), None);
    }
}
