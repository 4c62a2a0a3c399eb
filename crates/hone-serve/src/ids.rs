//! Object ids and fine-tuned model names.
//!
//! Ids are a prefix plus 24 random base62 characters (about 143 bits), so
//! they are unguessable and never collide in practice. Fine-tuned model
//! names follow OpenAI: `ft:<base>:<org>:<suffix>:<8 chars>`, and a
//! checkpoint model adds `:ckpt-step-<N>`.

use std::fmt;

use rand::Rng;

use crate::error::ApiError;

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `n` random base62 characters from the thread-local CSPRNG.
pub fn base62(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| BASE62[rng.random_range(0..BASE62.len())] as char)
        .collect()
}

/// `file-<24>`.
pub fn file_id() -> String {
    format!("file-{}", base62(24))
}

/// `ftjob-<24>`.
pub fn job_id() -> String {
    format!("ftjob-{}", base62(24))
}

/// `ftevent-<24>`.
pub fn event_id() -> String {
    format!("ftevent-{}", base62(24))
}

/// `ftckpt_<24>` (OpenAI uses an underscore here).
pub fn checkpoint_id() -> String {
    format!("ftckpt_{}", base62(24))
}

/// `chatcmpl-<24>`.
pub fn chat_completion_id() -> String {
    format!("chatcmpl-{}", base62(24))
}

/// `req_<24>`, sent as `x-request-id`.
pub fn request_id() -> String {
    format!("req_{}", base62(24))
}

/// Checks a user's suffix: `[a-z0-9._-]{1,64}`, so that it is safe in a
/// model name (no `:`) and in a path.
pub fn validate_suffix(suffix: &str) -> Result<(), ApiError> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c);
    if suffix.is_empty() || suffix.len() > 64 || !suffix.chars().all(ok_char) {
        return Err(ApiError::invalid(
            "suffix",
            format!(
                "Invalid suffix '{suffix}': use 1 to 64 characters from a-z, 0-9, '.', '_' and '-'."
            ),
        ));
    }
    Ok(())
}

/// The base model `model` trains or serves on: itself for a base model id, and the
/// `<base>` of a fine-tuned name, which every model of a chain shares (a job that
/// continues `ft:<base>:…` names its model after the same base).
pub fn base_model_id(model: &str) -> String {
    FineTunedName::parse(model).map_or_else(|| model.to_string(), |n| n.base)
}

/// A parsed fine-tuned model name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FineTunedName {
    pub base: String,
    pub org: String,
    /// Empty when the job had no suffix (`ft:base:org::abcd1234`).
    pub suffix: String,
    /// The 8-character unique part.
    pub unique: String,
    /// `Some(N)` for a checkpoint model (`…:ckpt-step-N`).
    pub checkpoint_step: Option<u64>,
}

impl FineTunedName {
    /// A fresh name for a job's final model.
    pub fn new(base: &str, org: &str, suffix: Option<&str>) -> Self {
        FineTunedName {
            base: base.to_string(),
            org: org.to_string(),
            suffix: suffix.unwrap_or("").to_string(),
            unique: base62(8),
            checkpoint_step: None,
        }
    }

    /// The checkpoint model of this name at `step`.
    pub fn at_step(&self, step: u64) -> Self {
        FineTunedName {
            checkpoint_step: Some(step),
            ..self.clone()
        }
    }

    /// The name without any checkpoint part.
    pub fn final_model(&self) -> Self {
        FineTunedName {
            checkpoint_step: None,
            ..self.clone()
        }
    }

    /// Parses `ft:<base>:<org>:<suffix>:<8>[:ckpt-step-N]`; `None` for
    /// anything else (a base model id, say).
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix("ft:")?;
        let parts: Vec<&str> = rest.split(':').collect();
        let (core, step) = match parts.len() {
            4 => (&parts[..], None),
            5 => {
                let n = parts[4].strip_prefix("ckpt-step-")?.parse::<u64>().ok()?;
                (&parts[..4], Some(n))
            }
            _ => return None,
        };
        let (base, org, suffix, unique) = (core[0], core[1], core[2], core[3]);
        let base62_ok = unique.len() == 8 && unique.bytes().all(|b| b.is_ascii_alphanumeric());
        if base.is_empty() || org.is_empty() || !base62_ok {
            return None;
        }
        if !suffix.is_empty() && validate_suffix(suffix).is_err() {
            return None;
        }
        Some(FineTunedName {
            base: base.into(),
            org: org.into(),
            suffix: suffix.into(),
            unique: unique.into(),
            checkpoint_step: step,
        })
    }
}

impl fmt::Display for FineTunedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ft:{}:{}:{}:{}",
            self.base, self.org, self.suffix, self.unique
        )?;
        if let Some(n) = self.checkpoint_step {
            write!(f, ":ckpt-step-{n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_base62(s: &str) -> bool {
        s.bytes().all(|b| b.is_ascii_alphanumeric())
    }

    #[test]
    fn ids_have_their_prefix_and_24_base62_chars() {
        for (id, prefix) in [
            (file_id(), "file-"),
            (job_id(), "ftjob-"),
            (event_id(), "ftevent-"),
            (checkpoint_id(), "ftckpt_"),
            (chat_completion_id(), "chatcmpl-"),
        ] {
            let rest = id.strip_prefix(prefix).unwrap();
            assert_eq!(rest.len(), 24, "{id}");
            assert!(is_base62(rest), "{id}");
        }
        assert_ne!(file_id(), file_id());
    }

    #[test]
    fn suffix_rule() {
        for ok in ["a", "my-model_v1.2", &"x".repeat(64)] {
            assert!(validate_suffix(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Upper",
            "has:colon",
            "sp ace",
            "slash/",
            &"x".repeat(65),
            "é",
        ] {
            let e = validate_suffix(bad).unwrap_err();
            assert_eq!(e.param().as_deref(), Some("suffix"));
            assert!(e.to_string().contains("a-z"), "{e}");
        }
    }

    #[test]
    fn fine_tuned_names_round_trip() {
        let n = FineTunedName::new("smollm2-135m-instruct", "org", Some("sfx"));
        let s = n.to_string();
        assert!(s.starts_with("ft:smollm2-135m-instruct:org:sfx:"));
        assert_eq!(FineTunedName::parse(&s), Some(n.clone()));
        let c = n.at_step(30);
        assert!(c.to_string().ends_with(":ckpt-step-30"));
        assert_eq!(FineTunedName::parse(&c.to_string()), Some(c.clone()));
        assert_eq!(c.final_model(), n);
        let no_suffix = FineTunedName::new("b", "o", None);
        assert_eq!(
            FineTunedName::parse(&no_suffix.to_string()),
            Some(no_suffix)
        );
    }

    #[test]
    fn non_fine_tuned_names_do_not_parse() {
        for s in [
            "smollm2-135m-instruct",
            "ft:b:o:s",
            "ft:b:o:s:short",
            "ft:b:o:s:abcd1234:step-3",
            "ft:b:o:s:abcd1234:ckpt-step-x",
            "ft::o:s:abcd1234",
        ] {
            assert_eq!(FineTunedName::parse(s), None, "{s}");
        }
    }
}
