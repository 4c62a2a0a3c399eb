//! Which files of a hub repo to fetch (a GGUF, or a safetensors model's config, tokenizer
//! and shards) and how a downloaded file is checked against the repo's listing. Kept apart
//! from `hub.rs`, which talks to the hub, so the choice can be tested without one.

use std::fs;
use std::path::Path;

use serde::Deserialize;

use super::hub_error::HubError;
use super::{sha256_file, DEFAULT_GGUF_QUANT};

/// What a safetensors repo needs for hone to load it, as errors say it.
const SAFETENSORS_REQUIRED: &str =
    "config.json + tokenizer.json + model.safetensors (or model.safetensors.index.json and its shards)";

/// The index of a sharded safetensors model.
const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";

/// Fetched with a safetensors model when the repo has them.
const SAFETENSORS_OPTIONAL: [&str; 3] = [
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
];

/// The repo listing from `/api/models/{repo}/revision/{rev}?blobs=true`.
#[derive(Debug, Deserialize)]
pub(super) struct RepoListing {
    pub(super) sha: String,
    pub(super) siblings: Vec<Sibling>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Sibling {
    pub(super) rfilename: String,
    pub(super) size: Option<u64>,
    pub(super) lfs: Option<LfsInfo>,
}

#[derive(Debug, Deserialize)]
pub(super) struct LfsInfo {
    pub(super) sha256: String,
    pub(super) size: u64,
}

/// What to download from a repo, and the format it will be registered as.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Selection {
    Gguf(String),
    Safetensors(Vec<String>),
}

/// `Err((expected, actual))` when the file's size or sha256 is not the
/// listed one. The sha256 comes from the listing's LFS entry, else from the
/// blob's name when hf-hub named it after a sha256 etag (`x-linked-etag`).
pub(super) fn check_file(
    blob: &Path,
    sibling: Option<&Sibling>,
) -> std::result::Result<(), (String, String)> {
    let size = fs::metadata(blob).map(|m| m.len()).unwrap_or(0);
    let listed_size = sibling.and_then(|s| s.lfs.as_ref().map(|l| l.size).or(s.size));
    if let Some(expected) = listed_size {
        if expected != size {
            return Err((format!("{expected} bytes"), format!("{size} bytes")));
        }
    }
    let etag = blob
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| n.len() == 64 && n.chars().all(|c| c.is_ascii_hexdigit()));
    let expected = sibling
        .and_then(|s| s.lfs.as_ref().map(|l| l.sha256.to_lowercase()))
        .or(etag);
    if let Some(expected) = expected {
        let actual =
            sha256_file(blob).map_err(|e| (format!("sha256 {expected}"), e.to_string()))?;
        if actual != expected {
            return Err((format!("sha256 {expected}"), format!("sha256 {actual}")));
        }
    }
    Ok(())
}

/// Picks what to download: `file` when given; else the safetensors set when
/// the repo has it; else its one GGUF file, or the [`DEFAULT_GGUF_QUANT`]
/// one among several.
pub(super) fn select_files(
    repo: &str,
    siblings: &[Sibling],
    file: Option<&str>,
) -> std::result::Result<Selection, HubError> {
    let has = |f: &str| siblings.iter().any(|s| s.rfilename == f);
    let ggufs: Vec<&str> = siblings
        .iter()
        .map(|s| s.rfilename.as_str())
        .filter(|f| is_loadable_gguf(f))
        .collect();
    if let Some(f) = file {
        if !has(f) {
            return Err(HubError::NoSuchFile {
                repo: repo.into(),
                file: f.into(),
                files: list_or_none(&ggufs),
            });
        }
        return Ok(Selection::Gguf(f.into()));
    }
    if let Some(mut files) = safetensors_files(siblings) {
        files.extend(
            SAFETENSORS_OPTIONAL
                .iter()
                .filter(|f| has(f))
                .map(|f| f.to_string()),
        );
        return Ok(Selection::Safetensors(files));
    }
    match ggufs.as_slice() {
        [one] => return Ok(Selection::Gguf(one.to_string())),
        [] => {}
        several => {
            let q = DEFAULT_GGUF_QUANT.to_ascii_lowercase();
            let matching: Vec<&&str> = several
                .iter()
                .filter(|f| f.to_ascii_lowercase().contains(&q))
                .collect();
            return match matching.as_slice() {
                [one] => {
                    eprintln!(
                        "{repo} has {} GGUF files; using {one} (the {DEFAULT_GGUF_QUANT} one; \
                         pick another with --file NAME)",
                        several.len()
                    );
                    Ok(Selection::Gguf(one.to_string()))
                }
                _ => Err(HubError::AmbiguousGguf {
                    repo: repo.into(),
                    files: several.join(", "),
                }),
            };
        }
    }
    let all: Vec<&str> = siblings.iter().map(|s| s.rfilename.as_str()).collect();
    Err(HubError::NoUsableFiles {
        repo: repo.into(),
        required: SAFETENSORS_REQUIRED.into(),
        files: list_or_none(&all),
    })
}

/// The files of a safetensors model in the repo: config, tokenizer and the
/// weights, either one `model.safetensors` or the index with every top-level
/// `.safetensors` shard (the loader then checks each tensor is in the shard
/// the index names). `None` when a required file is missing.
fn safetensors_files(siblings: &[Sibling]) -> Option<Vec<String>> {
    let has = |f: &str| siblings.iter().any(|s| s.rfilename == f);
    if !has("config.json") || !has("tokenizer.json") {
        return None;
    }
    let mut files = vec!["config.json".to_string()];
    if has("model.safetensors") {
        files.push("model.safetensors".into());
    } else if has(SAFETENSORS_INDEX) {
        files.push(SAFETENSORS_INDEX.into());
        files.extend(
            siblings
                .iter()
                .map(|s| s.rfilename.as_str())
                .filter(|f| !f.contains('/') && f.ends_with(".safetensors"))
                .map(str::to_string),
        );
    } else {
        return None;
    }
    files.push("tokenizer.json".into());
    Some(files)
}

/// A `.gguf` file hone can open on its own: not one shard of a split GGUF
/// (`-00001-of-00003.gguf`) and not a vision projector (`mmproj`).
fn is_loadable_gguf(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let Some(stem) = lower.strip_suffix(".gguf") else {
        return false;
    };
    // `…-00001-of-00003`: five digits on both sides of "-of-".
    let digits = |s: &[u8]| s.len() == 5 && s.iter().all(u8::is_ascii_digit);
    let split = stem.rsplit_once("-of-").is_some_and(|(a, b)| {
        let a = a.as_bytes();
        a.len() > 6 && a[a.len() - 6] == b'-' && digits(&a[a.len() - 5..]) && digits(b.as_bytes())
    });
    !split && !lower.contains("mmproj")
}

fn list_or_none(files: &[&str]) -> String {
    if files.is_empty() {
        "none".into()
    } else {
        files.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::HubSpec;

    fn sib(name: &str) -> Sibling {
        Sibling {
            rfilename: name.into(),
            size: Some(1),
            lfs: None,
        }
    }

    #[test]
    fn specs_parse_and_map_to_slash_free_ids() {
        let s = HubSpec::parse("hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF")
            .unwrap()
            .unwrap();
        assert_eq!(s.repo, "Qwen/Qwen2.5-0.5B-Instruct-GGUF");
        assert_eq!(s.revision, None);
        assert_eq!(s.model_id(), "hf--Qwen--Qwen2.5-0.5B-Instruct-GGUF");
        let s = HubSpec::parse("hf:a/b@refs/pr/1").unwrap().unwrap();
        assert_eq!(s.revision.as_deref(), Some("refs/pr/1"));
        assert_eq!(s.model_id(), "hf--a--b--refs-pr-1");
        assert!(HubSpec::parse("smollm2-135m-instruct").is_none());
        for bad in [
            "hf:",
            "hf:noslash",
            "hf:a/b/c",
            "hf:a/",
            "hf:../x",
            "hf:a/b@",
            "hf:a b/c",
        ] {
            assert!(
                matches!(HubSpec::parse(bad), Some(Err(HubError::BadSpec(_)))),
                "{bad}"
            );
        }
    }

    #[test]
    fn one_gguf_is_taken_and_several_need_the_default_or_a_file() {
        let one = [sib("README.md"), sib("m-q8_0.gguf")];
        assert_eq!(
            select_files("r", &one, None).unwrap(),
            Selection::Gguf("m-q8_0.gguf".into())
        );
        let several = [
            sib("m-q8_0.gguf"),
            sib("m-Q4_K_M.gguf"),
            sib("mmproj-m-q4_k_m.gguf"),
            sib("big-q4_k_m-00001-of-00002.gguf"),
            sib("aéééé-of-00002.gguf"),
        ];
        assert_eq!(
            select_files("r", &several, None).unwrap(),
            Selection::Gguf("m-Q4_K_M.gguf".into())
        );
        assert_eq!(
            select_files("r", &several, Some("m-q8_0.gguf")).unwrap(),
            Selection::Gguf("m-q8_0.gguf".into())
        );
        assert!(matches!(
            select_files("r", &several, Some("nope.gguf")),
            Err(HubError::NoSuchFile { .. })
        ));
        let no_default = [sib("m-q8_0.gguf"), sib("m-f16.gguf")];
        let err = select_files("r", &no_default, None).unwrap_err();
        assert!(err.to_string().contains("--file"), "{err}");
    }

    #[test]
    fn a_safetensors_repo_takes_the_required_and_present_optional_files() {
        let repo = [
            sib("config.json"),
            sib("model.safetensors"),
            sib("tokenizer.json"),
            sib("generation_config.json"),
            sib("README.md"),
        ];
        assert_eq!(
            select_files("r", &repo, None).unwrap(),
            Selection::Safetensors(vec![
                "config.json".into(),
                "model.safetensors".into(),
                "tokenizer.json".into(),
                "generation_config.json".into(),
            ])
        );
        let sharded = [
            sib("config.json"),
            sib("model.safetensors.index.json"),
            sib("model-00001-of-00002.safetensors"),
            sib("model-00002-of-00002.safetensors"),
            sib("onnx/model.safetensors"),
            sib("tokenizer.json"),
        ];
        assert_eq!(
            select_files("r", &sharded, None).unwrap(),
            Selection::Safetensors(vec![
                "config.json".into(),
                "model.safetensors.index.json".into(),
                "model-00001-of-00002.safetensors".into(),
                "model-00002-of-00002.safetensors".into(),
                "tokenizer.json".into(),
            ])
        );
        let nothing = [sib("README.md"), sib("config.json")];
        let err = select_files("r", &nothing, None).unwrap_err();
        assert!(matches!(err, HubError::NoUsableFiles { .. }), "{err}");
        assert!(err.to_string().contains("README.md"), "{err}");
    }
}
