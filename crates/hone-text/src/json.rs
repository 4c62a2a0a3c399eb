//! Python's `json.dumps(value, ensure_ascii=False, indent=..., sort_keys=...)`
//! over minijinja values, so tool schemas render byte-for-byte as they do in
//! transformers.

use minijinja::value::{Value, ValueKind};
use minijinja::{Error, ErrorKind};

/// Serialises like Python's `json.dumps` with `ensure_ascii=False`.
pub(crate) fn python_json(
    value: &Value,
    indent: Option<usize>,
    sort_keys: bool,
) -> Result<String, Error> {
    let mut w = Writer {
        out: String::new(),
        indent,
        sort_keys,
    };
    w.value(value, 0)?;
    Ok(w.out)
}

struct Writer {
    out: String,
    indent: Option<usize>,
    sort_keys: bool,
}

impl Writer {
    fn value(&mut self, v: &Value, depth: usize) -> Result<(), Error> {
        match v.kind() {
            ValueKind::Undefined | ValueKind::None => self.out.push_str("null"),
            ValueKind::Bool => self
                .out
                .push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => self.number(v)?,
            ValueKind::String => self.string(v.as_str().unwrap_or_default()),
            ValueKind::Map => self.map(v, depth)?,
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                self.seq(&items, depth)?
            }
            kind => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: cannot serialise a value of kind {kind}"),
                ))
            }
        }
        Ok(())
    }

    fn number(&mut self, v: &Value) -> Result<(), Error> {
        if v.is_integer() {
            self.out.push_str(&v.to_string());
            return Ok(());
        }
        let f = f64::try_from(v.clone())?;
        let text = if !f.is_finite() {
            // Python writes NaN/Infinity (not valid JSON, but it is what it does).
            match f {
                f if f.is_nan() => "NaN".to_string(),
                f if f > 0.0 => "Infinity".to_string(),
                _ => "-Infinity".to_string(),
            }
        } else if f.fract() == 0.0 && f.abs() < 1e16 {
            format!("{f:.1}")
        } else {
            format!("{f}")
        };
        self.out.push_str(&text);
        Ok(())
    }

    fn string(&mut self, s: &str) {
        self.out.push('"');
        for c in s.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '\r' => self.out.push_str("\\r"),
                '\t' => self.out.push_str("\\t"),
                '\u{08}' => self.out.push_str("\\b"),
                '\u{0c}' => self.out.push_str("\\f"),
                c if (c as u32) < 0x20 => self.out.push_str(&format!("\\u{:04x}", c as u32)),
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }

    fn newline(&mut self, depth: usize) {
        if let Some(n) = self.indent {
            self.out.push('\n');
            self.out.push_str(&" ".repeat(n * depth));
        }
    }

    fn separator(&mut self) {
        self.out
            .push_str(if self.indent.is_some() { "," } else { ", " });
    }

    fn seq(&mut self, items: &[Value], depth: usize) -> Result<(), Error> {
        if items.is_empty() {
            self.out.push_str("[]");
            return Ok(());
        }
        self.out.push('[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                self.separator();
            }
            self.newline(depth + 1);
            self.value(item, depth + 1)?;
        }
        self.newline(depth);
        self.out.push(']');
        Ok(())
    }

    fn map(&mut self, v: &Value, depth: usize) -> Result<(), Error> {
        let mut keys: Vec<Value> = v.try_iter()?.collect();
        if keys.is_empty() {
            self.out.push_str("{}");
            return Ok(());
        }
        if self.sort_keys {
            keys.sort_by_key(|k| k.to_string());
        }
        self.out.push('{');
        for (i, key) in keys.iter().enumerate() {
            if i > 0 {
                self.separator();
            }
            self.newline(depth + 1);
            match key.as_str() {
                Some(s) => self.string(s),
                None => self.string(&key.to_string()),
            }
            self.out.push_str(": ");
            self.value(&v.get_item(key)?, depth + 1)?;
        }
        self.newline(depth);
        self.out.push('}');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::json_to_value;

    fn dumps(json: &str, indent: Option<usize>) -> String {
        let v = json_to_value(&serde_json::from_str(json).unwrap());
        python_json(&v, indent, false).unwrap()
    }

    #[test]
    fn matches_python_default_separators_and_no_html_escaping() {
        assert_eq!(
            dumps(r#"{"a": [1, 2.5, true, null], "b": "<x> & 'y' é\n"}"#, None),
            r#"{"a": [1, 2.5, true, null], "b": "<x> & 'y' é\n"}"#
        );
    }

    #[test]
    fn matches_python_indent_layout() {
        assert_eq!(
            dumps(r#"{"a": [1, {}], "b": []}"#, Some(2)),
            "{\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": []\n}"
        );
    }

    #[test]
    fn integral_floats_keep_their_decimal_point() {
        assert_eq!(dumps("[1.0, 3]", None), "[1.0, 3]");
    }
}
