//! What makes `hone data generate` resumable: the output file, and beside
//! it `<out>.progress`, a journal with one line per finished task (its key,
//! and whether its example was written or dropped and why).
//!
//! A task's example is appended to the output and synced first, then its
//! journal line. So after a crash or Ctrl-C, the journal's count of written
//! tasks is never above the output's lines; extra output lines (the crash
//! fell between the two writes, or mid-line) are cut off on resume and
//! their tasks done again. Nothing is lost and nothing is written twice.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use hone_data::gate::LineGate;
use serde::{Deserialize, Serialize};

/// One finished task, as journaled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub key: String,
    /// `None` when the example was written; else why it was dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<String>,
}

/// The output and its journal, open for appending.
pub struct Journal {
    out: File,
    log: File,
    /// Keys of finished tasks (written or dropped).
    pub done: HashSet<String>,
    /// Lines in the output.
    pub written: usize,
}

/// `<out>.progress`.
pub fn journal_path(out: &Path) -> PathBuf {
    let mut p = out.as_os_str().to_owned();
    p.push(".progress");
    PathBuf::from(p)
}

/// Complete (newline-ended) lines of `path` and the byte length they
/// span; a missing file has none.
fn complete_lines(path: &Path) -> anyhow::Result<(Vec<String>, u64)> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut r = BufReader::new(f);
    let (mut lines, mut len) = (Vec::new(), 0u64);
    loop {
        let mut buf = Vec::new();
        let n = r.read_until(b'\n', &mut buf)?;
        if n == 0 || buf.last() != Some(&b'\n') {
            return Ok((lines, len));
        }
        len += n as u64;
        buf.pop();
        let s =
            String::from_utf8(buf).with_context(|| format!("{} is not UTF-8", path.display()))?;
        lines.push(s);
    }
}

/// Cuts `path` to `len` bytes (dropping what a crash left half written).
fn truncate(path: &Path, len: u64) -> anyhow::Result<()> {
    if std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) > len {
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(len)?;
        f.sync_all()?;
    }
    Ok(())
}

fn append(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {} for appending", path.display()))
}

impl Journal {
    /// Opens `out` and its journal, repairing what a crash left, and feeds
    /// the examples already written into `gate` (for the duplicate rule).
    pub fn open(out: &Path, gate: &mut LineGate) -> anyhow::Result<Self> {
        let log_path = journal_path(out);
        let (entries, log_len) = complete_lines(&log_path)?;
        let (lines, _) = complete_lines(out)?;
        let out_exists = std::fs::metadata(out).map(|m| m.len() > 0).unwrap_or(false);
        if entries.is_empty() && out_exists && !log_path.exists() {
            bail!(
                "{} exists and has no {}: it was not written by `hone data generate`; \
                 choose another --out (or delete it)",
                out.display(),
                log_path.display()
            );
        }
        let mut done = HashSet::new();
        let mut written = 0;
        for (i, e) in entries.iter().enumerate() {
            let e: Entry = serde_json::from_str(e).with_context(|| {
                format!(
                    "line {} of {} is not a journal entry",
                    i + 1,
                    log_path.display()
                )
            })?;
            written += usize::from(e.dropped.is_none());
            done.insert(e.key);
        }
        if lines.len() < written {
            bail!(
                "{} has {} examples but {} says {written} were written; was it edited? \
                 Delete both to start again.",
                out.display(),
                lines.len(),
                log_path.display()
            );
        }
        let keep: u64 = lines[..written].iter().map(|l| l.len() as u64 + 1).sum();
        for (i, l) in lines[..written].iter().enumerate() {
            if let Err(r) = gate.admit(l) {
                bail!(
                    "line {} of {} is refused ({r}); was it edited?",
                    i + 1,
                    out.display()
                );
            }
        }
        truncate(out, keep)?;
        truncate(&log_path, log_len)?;
        Ok(Journal {
            out: append(out)?,
            log: append(&log_path)?,
            done,
            written,
        })
    }

    /// Appends `line` to the output, then records `key` as written.
    pub fn write(&mut self, key: &str, line: &str) -> anyhow::Result<()> {
        self.out.write_all(format!("{line}\n").as_bytes())?;
        self.out.sync_data()?;
        self.written += 1;
        self.record(Entry {
            key: key.into(),
            dropped: None,
        })
    }

    /// Records `key` as finished without an example, for `reason`.
    pub fn drop_task(&mut self, key: &str, reason: &str) -> anyhow::Result<()> {
        self.record(Entry {
            key: key.into(),
            dropped: Some(reason.into()),
        })
    }

    fn record(&mut self, e: Entry) -> anyhow::Result<()> {
        self.log
            .write_all(format!("{}\n", serde_json::to_string(&e)?).as_bytes())?;
        self.log.sync_data()?;
        self.done.insert(e.key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hone_data::Method;

    fn ex(i: usize) -> String {
        serde_json::json!({"messages": [
            {"role": "user", "content": format!("question {i}")},
            {"role": "assistant", "content": format!("answer number {i}")}
        ]})
        .to_string()
    }

    #[test]
    fn a_crash_between_the_two_writes_is_repaired_on_resume() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("gen.jsonl");
        let mut j = Journal::open(&out, &mut LineGate::new(Method::Sft)).unwrap();
        j.write("a", &ex(1)).unwrap();
        j.drop_task("b", "near_duplicate").unwrap();
        drop(j);
        // A crash after the example of "c" but before its journal line, and
        // half a line after it.
        let mut f = append(&out).unwrap();
        f.write_all(format!("{}\n{{\"messa", ex(2)).as_bytes())
            .unwrap();
        let mut gate = LineGate::new(Method::Sft);
        let j = Journal::open(&out, &mut gate).unwrap();
        assert_eq!(j.written, 1);
        assert_eq!(j.done, HashSet::from(["a".to_string(), "b".to_string()]));
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            format!("{}\n", ex(1))
        );
        assert_eq!(gate.accepted(), 1);
    }

    #[test]
    fn a_foreign_or_shortened_output_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("mine.jsonl");
        std::fs::write(&out, format!("{}\n", ex(1))).unwrap();
        let e = Journal::open(&out, &mut LineGate::new(Method::Sft))
            .err()
            .unwrap();
        assert!(e.to_string().contains("no "), "{e}");
        std::fs::write(&out, "").unwrap();
        std::fs::write(journal_path(&out), "{\"key\":\"a\"}\n").unwrap();
        let e = Journal::open(&out, &mut LineGate::new(Method::Sft))
            .err()
            .unwrap();
        assert!(e.to_string().contains("edited"), "{e}");
    }
}
