//! Crash-safe writes of the files users take away (adapters, checkpoints, merged models,
//! exports), with the permissions a plain `File::create` would give.
//!
//! A file is written to a temporary sibling, fsynced, given mode `0666 & !umask` (0644
//! under the usual umask 022), renamed over its final name, and the directory fsynced:
//! after a crash the final name holds the old file or the complete new one, never a torn
//! one. The explicit mode matters because temp-file helpers create with 0600 (and temp
//! directories with 0700), which would leave weights unreadable by another user or a
//! service account once renamed into place. Directories that are staged whole and
//! renamed (a merged model, a checkpoint) get `0777 & !umask` the same way.
//!
//! This is the one implementation; hone-train's checkpoints, hone-model's merge, export
//! and adapter writers (through `hone_model::atomic_file`), the data splits and the
//! CLI's data and bench outputs all call it. It lives in hone-data, the crate every
//! other one depends on, so that the data writers need no model dependency.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically (see the module doc).
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_with(
        path,
        |tmp| {
            let mut f = File::create(tmp)?;
            f.write_all(bytes)
        },
        |e| e,
    )
}

/// As [`write`], for a writer that creates the file itself (e.g. a safetensors or GGUF
/// serializer): `fill` gets the temporary path and must create and fill it; `on_io`
/// turns this function's own I/O errors into the caller's error type.
pub fn write_with<E>(
    path: &Path,
    fill: impl FnOnce(&Path) -> Result<(), E>,
    on_io: impl Fn(io::Error) -> E,
) -> Result<(), E> {
    let dir = parent_of(path);
    fs::create_dir_all(&dir).map_err(&on_io)?;
    let tmp = unique_sibling(path, "tmp");
    let result = fill(&tmp).and_then(|()| {
        finish_file(&tmp)
            .and_then(|()| fs::rename(&tmp, path))
            .and_then(|()| fsync(&dir))
            .map_err(&on_io)
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// For a file written inside a staging directory that is renamed as a whole: fsyncs it
/// and sets its mode to `0666 & !umask`.
pub fn finish_file(path: &Path) -> io::Result<()> {
    set_mode(path, 0o666)?;
    fsync(path)
}

/// Creates an empty staging directory beside `dest` (a unique hidden name), to be
/// filled and then moved into place with [`publish_dir`].
pub fn staging_dir(dest: &Path) -> io::Result<PathBuf> {
    fs::create_dir_all(parent_of(dest))?;
    for _ in 0..100 {
        let tmp = unique_sibling(dest, "tmp");
        match fs::create_dir(&tmp) {
            Ok(()) => return Ok(tmp),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "could not create a staging directory beside {}",
        dest.display()
    )))
}

/// Sets the staged directory's mode to `0777 & !umask`, fsyncs it, renames it to `dest`
/// and fsyncs the parent. Its files must have been finished ([`finish_file`]).
pub fn publish_dir(staged: &Path, dest: &Path) -> io::Result<()> {
    set_mode(staged, 0o777)?;
    fsync(staged)?;
    fs::rename(staged, dest)?;
    fsync(&parent_of(dest))
}

/// fsyncs a file or a directory (so that a rename that follows is durable).
pub fn fsync(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// The process's umask (from `/proc/self/status` on Linux; 022 where it cannot be
/// read). Read, never set: setting it to read it would race with other threads.
pub fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

#[cfg(unix)]
fn set_mode(path: &Path, base: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(base & !umask()))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _base: u32) -> io::Result<()> {
    Ok(())
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `.<name>.<pid>.<n>.<suffix>` beside `path`: unique within and across processes.
fn unique_sibling(path: &Path, suffix: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let n = N.fetch_add(1, Ordering::Relaxed);
    parent_of(path).join(format!(".{name}.{}.{n}.{suffix}", std::process::id()))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn files_and_directories_get_the_umask_mode_not_the_temp_files() {
        let want_file = 0o666 & !umask();
        let want_dir = 0o777 & !umask();
        if umask() == 0o022 {
            assert_eq!((want_file, want_dir), (0o644, 0o755));
        }
        let root = tempfile::tempdir().unwrap();
        let f = root.path().join("sub/a.bin");
        write(&f, b"abc").unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"abc");
        assert_eq!(mode(&f), want_file);

        // A writer that creates a 0600 file (as temp-file helpers do) still ends 0644.
        let g = root.path().join("b.bin");
        write_with(
            &g,
            |tmp| -> io::Result<()> {
                let t = tempfile::NamedTempFile::new_in(root.path())?;
                fs::write(t.path(), b"x")?;
                assert_eq!(mode(t.path()), 0o600);
                t.persist(tmp).map_err(|e| e.error)?;
                Ok(())
            },
            |e| e,
        )
        .unwrap();
        assert_eq!(mode(&g), want_file);

        let dest = root.path().join("model");
        let staged = staging_dir(&dest).unwrap();
        fs::set_permissions(&staged, fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(staged.join("w"), b"w").unwrap();
        finish_file(&staged.join("w")).unwrap();
        publish_dir(&staged, &dest).unwrap();
        assert_eq!(mode(&dest), want_dir);
        assert_eq!(mode(&dest.join("w")), want_file);
        // Nothing is left behind but the two results.
        let mut names: Vec<_> = fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["b.bin", "model", "sub"]);
    }

    #[test]
    fn a_failed_writer_leaves_the_old_file_and_no_temp_file() {
        let root = tempfile::tempdir().unwrap();
        let f = root.path().join("a.json");
        write(&f, b"old").unwrap();
        let err = write_with(
            &f,
            |tmp| -> io::Result<()> {
                fs::write(tmp, b"half")?;
                Err(io::Error::other("disk full"))
            },
            |e| e,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert_eq!(fs::read(&f).unwrap(), b"old");
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 1);
    }
}
