//! How retrieved chunks reach the model: one system message in one format,
//! shared by `hone chat --rag` and `hone eval`'s `rag:DIR[:K]` and
//! `fine-tuned+rag:DIR[:K]` baselines (docs/eval.md documents it), so what
//! is measured is what is served.

use crate::corpus::{Hit, LoadReport};

/// Chunks retrieved per question when the caller does not say
/// (`hone chat --rag-k`, `rag:DIR` without `:K`).
pub const DEFAULT_K: usize = 4;

/// The first line of every retrieved context.
pub const CONTEXT_HEADER: &str =
    "Use the following excerpts from the documents to answer when they are relevant.";

/// The retrieved chunks, best first, numbered and named by file and part:
///
/// ```text
/// Use the following excerpts from the documents to answer when they are relevant.
///
/// [1] guide/setup.md (part 3)
/// <chunk text>
///
/// [2] faq.txt (part 1)
/// <chunk text>
/// ```
pub fn format_context(hits: &[Hit<'_>]) -> String {
    let mut out = format!("{CONTEXT_HEADER}\n");
    for (i, hit) in hits.iter().enumerate() {
        out += &format!(
            "\n[{}] {} (part {})\n{}\n",
            i + 1,
            hit.chunk.source.display(),
            hit.chunk.index + 1,
            hit.chunk.text
        );
    }
    out
}

/// The system message a question is answered from: the caller's own system
/// text (`--system`, or an eval case's system message) first, a blank line,
/// then the context of [`format_context`]. The caller's text comes first
/// because it sets the task; the excerpts are material for it.
pub fn system_with_context(system: Option<&str>, context: &str) -> String {
    match system.map(str::trim).filter(|s| !s.is_empty()) {
        Some(s) => format!("{s}\n\n{context}"),
        None => context.to_string(),
    }
}

impl LoadReport {
    /// What the caller should tell the user about a corpus it loaded: files
    /// skipped as binary (by name) and chunks embedded from their beginning
    /// only. Empty when nothing was left out.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if !self.skipped_binary.is_empty() {
            let names: Vec<String> = self
                .skipped_binary
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            notes.push(format!(
                "skipped {} binary file(s): {}",
                names.len(),
                names.join(", ")
            ));
        }
        if self.truncated_chunks > 0 {
            notes.push(format!(
                "{} chunk(s) longer than the embedding model's window were embedded from their \
                 beginning only (they are still shown whole)",
                self.truncated_chunks
            ));
        }
        notes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn own_system_text_comes_first() {
        let ctx = format!("{CONTEXT_HEADER}\n\n[1] a.md (part 1)\nx\n");
        assert_eq!(system_with_context(None, &ctx), ctx);
        assert_eq!(system_with_context(Some("  "), &ctx), ctx);
        assert_eq!(
            system_with_context(Some("Be brief.\n"), &ctx),
            format!("Be brief.\n\n{ctx}")
        );
    }

    #[test]
    fn notes_name_binary_files_and_count_cut_chunks() {
        assert!(LoadReport::default().notes().is_empty());
        let r = LoadReport {
            skipped_binary: vec![PathBuf::from("a.md"), PathBuf::from("d/b.txt")],
            truncated_chunks: 3,
            ..LoadReport::default()
        };
        let n = r.notes();
        assert_eq!(n[0], "skipped 2 binary file(s): a.md, d/b.txt");
        assert!(n[1].starts_with("3 chunk(s) longer than"), "{}", n[1]);
    }
}
