//! The retrieval baselines (`rag:DIR[:K]`, `fine-tuned+rag:DIR[:K]`): each
//! case's question retrieves the top-K chunks of DIR, which go into its
//! system message through hone-retrieve's [`system_with_context`] — the
//! format `hone chat --rag` serves — so what is measured is what is served.
//!
//! Everything that could change what is measured is refused before any
//! generation: a missing or empty DIR, fewer chunks than K. Binary files are
//! skipped and named in the report's warnings.

use std::collections::HashMap;
use std::path::Path;

use hone_retrieve::{format_context, system_with_context, Corpus, CorpusOptions, Documents, Embed};
use hone_text::{ChatMessage, Role};

use crate::case::EvalCase;
use crate::error::{EvalError, Result};
use crate::shots::question;

/// Each case's retrieved context (by the case's line), ready to go into
/// its system message.
#[derive(Debug, Clone, Default)]
pub struct Retrieved {
    contexts: HashMap<usize, String>,
    /// Said about the corpus (files skipped as binary, cut chunks), for the
    /// report's warnings.
    pub notes: Vec<String>,
}

/// Reads and chunks `dir` for a retrieval baseline and checks that it holds
/// at least `k` chunks, without the embedding model: every problem with the
/// documents is found before any model loads. `spec` names the baseline in
/// errors.
pub fn read_documents(
    spec: &str,
    dir: &Path,
    k: usize,
    options: &CorpusOptions,
) -> Result<Documents> {
    let docs = Documents::read(dir, &options.chunking)
        .map_err(|e| EvalError::Spec(format!("{spec}: {e}")))?;
    let available = docs.chunk_count();
    if k > available {
        return Err(EvalError::Spec(format!(
            "{spec}: K is {k}, but {} holds only {available} chunk(s); lower K (a \
             smaller K than asked would change what is measured)",
            dir.display()
        )));
    }
    Ok(docs)
}

impl Retrieved {
    /// Embeds `docs` (read by [`read_documents`]; cached vectors reused),
    /// then retrieves `k` chunks for every case. `spec` names the baseline
    /// in errors.
    pub fn build(
        spec: &str,
        docs: Documents,
        k: usize,
        cases: &[EvalCase],
        embedder: &dyn Embed,
        options: &CorpusOptions,
    ) -> Result<Self> {
        let bad = |e: hone_retrieve::RetrieveError| EvalError::Spec(format!("{spec}: {e}"));
        let corpus = Corpus::embed(docs, embedder, options).map_err(bad)?;
        let mut contexts = HashMap::new();
        for case in cases {
            let hits = corpus
                .top_k(embedder, question(&case.messages), k)
                .map_err(bad)?;
            contexts.insert(case.line, format_context(&hits.hits));
        }
        let notes = corpus
            .report
            .notes()
            .into_iter()
            .map(|n| format!("{spec}: {n}"))
            .collect();
        Ok(Retrieved { contexts, notes })
    }

    /// `case`'s messages with its retrieved context in the system message:
    /// after the case's own system text, or as a new first message.
    pub fn messages(&self, case: &EvalCase) -> Vec<ChatMessage> {
        let context = self.contexts.get(&case.line).map_or("", String::as_str);
        let mut out = case.messages.clone();
        match out.first_mut() {
            Some(first) if first.role == Role::System => {
                first.content = system_with_context(Some(&first.content), context);
            }
            _ => out.insert(0, ChatMessage::new(Role::System, context)),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case::parse_cases;
    use hone_retrieve::fake::FakeEmbedder;

    fn options() -> CorpusOptions {
        CorpusOptions {
            cache_dir: None,
            ..CorpusOptions::default()
        }
    }

    fn docs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cats.md"), "Cats purr and sleep.").unwrap();
        std::fs::write(dir.path().join("ships.txt"), "Ships sail the sea.").unwrap();
        std::fs::write(dir.path().join("blob.md"), b"\x00\xffbin").unwrap();
        dir
    }

    fn cases() -> Vec<EvalCase> {
        parse_cases(concat!(
            r#"{"messages": [{"role": "user", "content": "Do cats purr?"}], "expected_patterns": ["x"]}"#,
            "\n",
            r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where do ships sail?"}], "expected_patterns": ["x"]}"#,
        ))
        .unwrap()
    }

    #[test]
    fn each_case_gets_its_own_chunks_in_the_chat_format() {
        let dir = docs();
        let e = FakeEmbedder::new("fake");
        let cs = cases();
        let docs = read_documents("rag:docs:1", dir.path(), 1, &options()).unwrap();
        assert_eq!(e.embedded.get(), 0, "reading embeds nothing");
        let r = Retrieved::build("rag:docs:1", docs, 1, &cs, &e, &options()).unwrap();
        let m = r.messages(&cs[0]);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].role, Role::System);
        assert_eq!(
            m[0].content,
            format!(
                "{}\n\n[1] cats.md (part 1)\nCats purr and sleep.\n",
                hone_retrieve::CONTEXT_HEADER
            )
        );
        let m = r.messages(&cs[1]);
        assert_eq!(
            m.len(),
            2,
            "the case's own system message is kept, not doubled"
        );
        assert!(
            m[0].content.starts_with("Be brief.\n\n"),
            "{}",
            m[0].content
        );
        assert!(m[0]
            .content
            .contains("ships.txt (part 1)\nShips sail the sea."));
        assert_eq!(r.notes, ["rag:docs:1: skipped 1 binary file(s): blob.md"]);
    }

    #[test]
    fn bad_dirs_and_k_beyond_the_chunks_are_refused() {
        let dir = docs();
        let err = read_documents("rag:docs:3", dir.path(), 3, &options())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("rag:docs:3: K is 3, but") && err.contains("only 2 chunk(s)"),
            "{err}"
        );
        let missing = dir.path().join("nope");
        let err = read_documents("rag:nope", &missing, 1, &options())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not exist or is not a directory"),
            "{err}"
        );
        let empty = tempfile::tempdir().unwrap();
        std::fs::write(empty.path().join("only.md"), b"\x00").unwrap();
        let err = read_documents("rag:empty", empty.path(), 1, &options())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no text to retrieve from") && err.contains("1 binary"),
            "{err}"
        );
    }
}
