use super::*;

#[test]
fn migrations_set_user_version_and_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hone.db");
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as u32);
    drop(s);
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as u32);
}

#[test]
fn rows_from_before_projects_belong_to_the_default_project() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hone.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(MIGRATIONS[0]).unwrap();
    conn.pragma_update(None, "user_version", 1).unwrap();
    let file = serde_json::json!({"id": "file-old", "object": "file", "bytes": 1,
        "created_at": 1, "filename": "a.jsonl", "purpose": "fine-tune", "status": "processed"});
    conn.execute(
        "INSERT INTO files (id, purpose, sha256, body) VALUES ('file-old', 'fine-tune', 'x', ?1)",
        [file.to_string()],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO jobs (id, status, body) VALUES ('ftjob-old', 'queued', ?1)",
        [serde_json::json!({"organization_id": "hone"}).to_string()],
    )
    .unwrap();
    drop(conn);
    let s = SqliteStore::open(&path).unwrap();
    s.adopt_unowned("hone").unwrap();
    let own = Scope::Project("hone".into());
    let other = Scope::Project("other".into());
    assert_eq!(s.get_file(&own, "file-old").unwrap().project, "hone");
    assert!(matches!(
        s.get_file(&other, "file-old"),
        Err(StoreError::NotFound { .. })
    ));
    let page = PageRequest::first(10);
    assert_eq!(s.list_files(&own, None, &page).unwrap().data.len(), 1);
    assert!(s.list_files(&other, None, &page).unwrap().data.is_empty());
    let project: String = s
        .lock()
        .query_row("SELECT project FROM jobs WHERE id = 'ftjob-old'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(project, "hone");
}

#[test]
fn keys_are_stored_as_digests_and_revoked_at_once() {
    let s = SqliteStore::in_memory().unwrap();
    let (rec, key) = crate::auth::create_key(&s, "alpha", false).unwrap();
    assert!(key.starts_with(crate::auth::KEY_PREFIX));
    let raw: Vec<u8> = s
        .lock()
        .query_row("SELECT digest FROM api_keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(raw, crate::auth::key_digest(&key));
    assert!(!String::from_utf8_lossy(&raw).contains(&key[8..]));
    assert_eq!(s.active_keys().unwrap(), vec![rec.clone()]);
    assert_eq!(s.list_keys(Some("beta")).unwrap(), vec![]);
    s.revoke_key(&rec.id).unwrap();
    assert!(s.active_keys().unwrap().is_empty());
    assert_eq!(s.list_keys(None).unwrap().len(), 1, "kept, as revoked");
    assert!(matches!(
        s.revoke_key("key_nope"),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hone.db");
    let conn = Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = SqliteStore::open(&path).err().unwrap();
    assert!(err.to_string().contains("newer"), "{err}");
}
