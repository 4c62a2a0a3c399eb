//! `hone keys`: a key is printed once, stored only as its digest, listed
//! without its secret, and revoked by id.

use std::path::Path;
use std::process::{Command, Output};

use hone_serve::auth::key_digest;
use hone_serve::store::{SqliteStore, Store};

fn hone_keys(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hone"))
        .arg("keys")
        .args(args)
        .arg("--home")
        .arg(home)
        .env_remove("HONE_HOME")
        .output()
        .expect("run hone keys")
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// Every byte under `dir` (the database and its WAL).
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            out.extend(std::fs::read(p).unwrap());
        }
    }
    out
}

#[test]
fn created_keys_are_stored_as_digests_listed_without_secret_and_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let key = stdout(&hone_keys(home, &["create", "--project", "alpha"]))
        .trim()
        .to_string();
    assert!(key.starts_with("sk-hone-") && key.len() == 48, "{key}");
    let admin = stdout(&hone_keys(home, &["create", "--project", "ops", "--admin"]));
    assert_ne!(admin.trim(), key);

    let bytes = all_bytes(home);
    let secret = &key.as_bytes()[8..];
    assert!(
        !bytes.windows(secret.len()).any(|w| w == secret),
        "the key is not in hone.db in plain text"
    );
    let id = {
        let store = SqliteStore::open(&home.join("hone.db")).unwrap();
        let keys = store.active_keys().unwrap();
        assert_eq!(keys.len(), 2);
        let alpha = keys.iter().find(|k| k.project == "alpha").unwrap();
        assert_eq!(alpha.digest, key_digest(&key));
        assert!(!alpha.admin && keys.iter().any(|k| k.project == "ops" && k.admin));
        alpha.id.clone()
    };

    let listed = stdout(&hone_keys(home, &["list", "--project", "alpha"]));
    assert!(
        listed.contains(&id) && listed.contains("active"),
        "{listed}"
    );
    assert!(listed.contains(&key[key.len() - 4..]), "{listed}");
    assert!(
        !listed.contains(&key) && !listed.contains("ops"),
        "{listed}"
    );

    let wrong = hone_keys(home, &["revoke", &id, "--project", "ops"]);
    assert!(!wrong.status.success());
    stdout(&hone_keys(home, &["revoke", &id, "--project", "alpha"]));
    let listed = stdout(&hone_keys(home, &["list"]));
    assert!(listed.contains("revoked"), "{listed}");
    let store = SqliteStore::open(&home.join("hone.db")).unwrap();
    assert!(store.active_keys().unwrap().iter().all(|k| k.id != id));
}

#[test]
fn a_project_name_that_cannot_be_in_a_model_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let o = hone_keys(dir.path(), &["create", "--project", "a:b"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("invalid project name 'a:b'"), "{err}");
    let o = hone_keys(dir.path(), &["revoke", "key_nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("key_nope"));
}
