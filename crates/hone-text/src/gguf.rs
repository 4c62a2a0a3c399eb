//! Reading tokenizer metadata out of GGUF files. Only the metadata is read;
//! tensors are never touched.

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};

use crate::error::{Error, Result};

/// Reads the header and metadata of a GGUF file (not its tensors).
pub fn read_gguf_content(path: impl AsRef<Path>) -> Result<Content> {
    let path = path.as_ref();
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    Content::read(&mut file).map_err(|e| Error::Gguf {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

pub(crate) fn get<'a>(content: &'a Content, key: &str) -> Result<&'a Value> {
    content
        .metadata
        .get(key)
        .ok_or_else(|| Error::MissingMetadata(key.to_string()))
}

fn bad(key: &str, message: impl Into<String>) -> Error {
    Error::BadMetadata {
        key: key.to_string(),
        message: message.into(),
    }
}

pub(crate) fn get_string<'a>(content: &'a Content, key: &str) -> Result<&'a str> {
    match get(content, key)? {
        Value::String(s) => Ok(s),
        v => Err(bad(
            key,
            format!("expected a string, found {:?}", v.value_type()),
        )),
    }
}

pub(crate) fn get_opt_string<'a>(content: &'a Content, key: &str) -> Result<Option<&'a str>> {
    match content.metadata.get(key) {
        None => Ok(None),
        Some(_) => get_string(content, key).map(Some),
    }
}

/// Any integer type as u32: GGUF writers disagree on the width of ids.
pub(crate) fn value_as_u32(key: &str, v: &Value) -> Result<u32> {
    let n: i128 = match v {
        Value::U8(x) => (*x).into(),
        Value::I8(x) => (*x).into(),
        Value::U16(x) => (*x).into(),
        Value::I16(x) => (*x).into(),
        Value::U32(x) => (*x).into(),
        Value::I32(x) => (*x).into(),
        Value::U64(x) => (*x).into(),
        Value::I64(x) => (*x).into(),
        v => {
            return Err(bad(
                key,
                format!("expected an integer, found {:?}", v.value_type()),
            ))
        }
    };
    u32::try_from(n).map_err(|_| bad(key, format!("{n} does not fit a token id")))
}

pub(crate) fn get_opt_u32(content: &Content, key: &str) -> Result<Option<u32>> {
    match content.metadata.get(key) {
        None => Ok(None),
        Some(v) => value_as_u32(key, v).map(Some),
    }
}

pub(crate) fn get_array<'a>(content: &'a Content, key: &str) -> Result<&'a [Value]> {
    match get(content, key)? {
        Value::Array(a) => Ok(a),
        v => Err(bad(
            key,
            format!("expected an array, found {:?}", v.value_type()),
        )),
    }
}

pub(crate) fn get_string_array(content: &Content, key: &str) -> Result<Vec<String>> {
    get_array(content, key)?
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => Ok(s.clone()),
            v => Err(bad(
                key,
                format!("element {i} is {:?}, not a string", v.value_type()),
            )),
        })
        .collect()
}

pub(crate) fn get_opt_int_array(content: &Content, key: &str) -> Result<Option<Vec<i64>>> {
    if !content.metadata.contains_key(key) {
        return Ok(None);
    }
    get_array(content, key)?
        .iter()
        .map(|v| {
            value_as_u32(key, v).map(i64::from).or_else(|_| match v {
                Value::I32(x) => Ok(i64::from(*x)),
                v => Err(bad(
                    key,
                    format!("expected integers, found {:?}", v.value_type()),
                )),
            })
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}
