//! The approaches `hone eval` compares ("should I fine-tune?"): the base
//! model as is, with a system prompt, with few-shot examples, with retrieved
//! document chunks, another model, the fine-tune, and the fine-tune with
//! retrieved chunks. [`Baseline`] is what `--baseline SPEC` parses to;
//! [`Approach::check`] reads and checks its inputs before any model loads
//! (prompt file, example pool, documents); [`Checked::finish`] makes it an
//! [`Approach`] ready to run (examples picked, documents embedded), and
//! [`Approach::request`] builds the conversation
//! one case is answered from. Every approach then goes through the same
//! generation path and checks ([`crate::run::run_cases`]).

use std::path::{Path, PathBuf};

use hone_model::constraint::Grammar;
use hone_text::{ChatMessage, Role};
use serde_json::Value;

use hone_retrieve::{CorpusOptions, Documents, Embed};

use crate::case::EvalCase;
use crate::error::{EvalError, Result};
use crate::model::Conversation;
use crate::rag::{read_documents, Retrieved};
use crate::shots::{Picker, RandomPicker, ShotPick, ShotPicker, ShotPool, SimilarPicker};

/// One `--baseline SPEC`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Baseline {
    /// `auto` (the default): the base model under the adapter (the same
    /// loaded weights with the adapter off); nothing without an adapter.
    #[default]
    Auto,
    /// `none`: only the evaluated model.
    None,
    /// `base`: the base model with the messages as given.
    Base,
    /// `fine-tuned`: the adapter. It is always the evaluated model (the first
    /// run) when `--adapter` is given, so naming it adds no run.
    FineTuned,
    /// `prompt:FILE`: the base model with FILE's text as system prompt.
    Prompt(PathBuf),
    /// `few-shot:K[:FILE]`: the base model with K example conversations from
    /// FILE (default: the spec's training file) as prior turns.
    FewShot { k: usize, file: Option<PathBuf> },
    /// `rag:DIR[:K]`: the base model with the top-K chunks of DIR (default
    /// K: [`hone_retrieve::DEFAULT_K`]) in the system message.
    Rag { dir: PathBuf, k: usize },
    /// `fine-tuned+rag:DIR[:K]`: the adapter with the same retrieval.
    FineTunedRag { dir: PathBuf, k: usize },
    /// Another model (an id or a path), without adapter.
    Model(String),
}

impl std::str::FromStr for Baseline {
    type Err = String;

    /// `auto`, `none`, `base`, `fine-tuned`, `prompt:FILE`,
    /// `few-shot:K[:FILE]`, `rag:DIR[:K]`, `fine-tuned+rag:DIR[:K]`, or a
    /// model id or path.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if let Some(file) = s.strip_prefix("prompt:") {
            if file.is_empty() {
                return Err("`prompt:FILE` needs a file".into());
            }
            return Ok(Baseline::Prompt(file.into()));
        }
        if let Some(rest) = s.strip_prefix("few-shot:") {
            return parse_few_shot(rest);
        }
        if let Some(rest) = s.strip_prefix("rag:") {
            let (dir, k) = parse_rag(s, rest)?;
            return Ok(Baseline::Rag { dir, k });
        }
        if let Some(rest) = s.strip_prefix("fine-tuned+rag:") {
            let (dir, k) = parse_rag(s, rest)?;
            return Ok(Baseline::FineTunedRag { dir, k });
        }
        Ok(match s {
            "auto" | "" => Baseline::Auto,
            "none" => Baseline::None,
            "base" => Baseline::Base,
            "fine-tuned" => Baseline::FineTuned,
            other => Baseline::Model(other.to_string()),
        })
    }
}

fn parse_few_shot(rest: &str) -> std::result::Result<Baseline, String> {
    let (k, file) = match rest.split_once(':') {
        Some((k, f)) if !f.is_empty() => (k, Some(PathBuf::from(f))),
        Some((k, _)) => (k, None),
        None => (rest, None),
    };
    match k.parse::<usize>() {
        Ok(k) if k > 0 => Ok(Baseline::FewShot { k, file }),
        _ => Err(format!(
            "few-shot:{rest}: K must be a whole number of examples, at least 1 \
             (few-shot:K or few-shot:K:FILE)"
        )),
    }
}

/// `DIR[:K]`: a trailing `:K` that is a number is K (so a directory name
/// may hold colons); K is at least 1.
fn parse_rag(spec: &str, rest: &str) -> std::result::Result<(PathBuf, usize), String> {
    let (dir, k) = match rest.rsplit_once(':') {
        Some((dir, k)) if !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()) => {
            let k =
                k.parse::<usize>().ok().filter(|&k| k > 0).ok_or_else(|| {
                    format!("{spec}: K must be a whole number of chunks, at least 1")
                })?;
            (dir, k)
        }
        _ => (rest, hone_retrieve::DEFAULT_K),
    };
    if dir.is_empty() {
        return Err(format!(
            "{spec}: a directory of .txt/.md documents is needed (rag:DIR or rag:DIR:K)"
        ));
    }
    Ok((PathBuf::from(dir), k))
}

impl Baseline {
    /// The run's label in tables: the spec as written, `base` for `auto`.
    pub fn label(&self) -> String {
        match self {
            Baseline::Auto | Baseline::Base => "base".into(),
            Baseline::None => "none".into(),
            Baseline::FineTuned => "fine-tuned".into(),
            Baseline::Prompt(p) => format!("prompt:{}", file_name(p)),
            Baseline::FewShot { k, file: None } => format!("few-shot:{k}"),
            Baseline::FewShot { k, file: Some(f) } => format!("few-shot:{k}:{}", file_name(f)),
            Baseline::Rag { dir, k } => format!("rag:{}:{k}", file_name(dir)),
            Baseline::FineTunedRag { dir, k } => format!("fine-tuned+rag:{}:{k}", file_name(dir)),
            Baseline::Model(m) => m.clone(),
        }
    }

    /// Whether the baseline needs the embedding model: retrieval always,
    /// few-shot when examples are picked by similarity.
    pub fn needs_embeddings(&self, pick: ShotPick) -> bool {
        match self {
            Baseline::Rag { .. } | Baseline::FineTunedRag { .. } => true,
            Baseline::FewShot { .. } => pick == ShotPick::Similar,
            _ => false,
        }
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// How an approach changes a case's conversation before generation.
#[derive(Debug, Clone)]
pub enum Approach {
    /// The messages as given (the base model, the fine-tune, another model).
    AsGiven,
    /// A system prompt put before the case's own (see [`with_system_prompt`]).
    Prompt(String),
    /// `k` examples per case from `pool`, chosen by `picker`.
    FewShot {
        k: usize,
        pool: ShotPool,
        picker: Picker,
    },
    /// Each case's retrieved chunks in its system message.
    Rag(Retrieved),
}

/// What [`Approach::check`] and [`Checked::finish`] draw on besides the
/// baseline itself.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    pub cases: &'a [EvalCase],
    /// The few-shot pool when `few-shot:K` names no file.
    pub train_file: Option<&'a Path>,
    pub pick: ShotPick,
    /// Seed of random few-shot picks.
    pub seed: u64,
    pub corpus: &'a CorpusOptions,
}

/// A baseline whose inputs are read and checked ([`Approach::check`]), with
/// no model loaded yet; [`Checked::finish`] makes it an [`Approach`], given
/// the embedding model when [`Baseline::needs_embeddings`].
#[derive(Debug)]
pub enum Checked {
    AsGiven,
    Prompt(String),
    FewShot {
        label: String,
        k: usize,
        pool: ShotPool,
    },
    Rag {
        label: String,
        k: usize,
        docs: Documents,
    },
}

impl Approach {
    /// Reads and checks `baseline`'s inputs: its prompt file, its example
    /// pool and K, its documents and K. Nothing here needs a model, so every
    /// problem with what the user gave is reported before any model (the
    /// embedding model included) loads.
    pub fn check(baseline: &Baseline, inputs: &Inputs<'_>) -> Result<Checked> {
        match baseline {
            Baseline::Prompt(file) => Ok(Checked::Prompt(read_prompt(file)?)),
            Baseline::FewShot { k, file } => {
                let file = file.as_deref().or(inputs.train_file).ok_or_else(|| {
                    EvalError::Spec(format!(
                        "--baseline few-shot:{k} takes its examples from the training file: \
                         give --train-file FILE, or few-shot:{k}:FILE"
                    ))
                })?;
                let pool = ShotPool::load(file, inputs.cases)?;
                pool.check_k(*k)?;
                Ok(Checked::FewShot {
                    label: baseline.label(),
                    k: *k,
                    pool,
                })
            }
            Baseline::Rag { dir, k } | Baseline::FineTunedRag { dir, k } => {
                let label = format!("--baseline {}", baseline.label());
                let docs = read_documents(&label, dir, *k, inputs.corpus)?;
                Ok(Checked::Rag { label, k: *k, docs })
            }
            _ => Ok(Checked::AsGiven),
        }
    }
}

impl Checked {
    /// The approach ready to run: few-shot examples picked (by similarity
    /// with `embedder`, or at random) and documents embedded and retrieved.
    /// `embedder` is `None` when no baseline needs one.
    pub fn finish(self, inputs: &Inputs<'_>, embedder: Option<&dyn Embed>) -> Result<Approach> {
        let need = |what: &str| {
            embedder.ok_or_else(|| {
                EvalError::Spec(format!(
                    "{what} needs an embedding model, and none was loaded"
                ))
            })
        };
        Ok(match self {
            Checked::AsGiven => Approach::AsGiven,
            Checked::Prompt(p) => Approach::Prompt(p),
            Checked::FewShot { label, k, pool } => {
                let picker = match inputs.pick {
                    ShotPick::Random => Picker::Random(RandomPicker { seed: inputs.seed }),
                    ShotPick::Similar => {
                        Picker::Similar(SimilarPicker::new(need(&label)?, &pool, inputs.cases)?)
                    }
                };
                Approach::FewShot { k, pool, picker }
            }
            Checked::Rag { label, k, docs } => {
                let embedder = need(&label)?;
                let r = Retrieved::build(&label, docs, k, inputs.cases, embedder, inputs.corpus)?;
                Approach::Rag(r)
            }
        })
    }
}

impl Approach {
    /// What the approach has to say about its inputs (e.g. files skipped),
    /// for the report's warnings.
    pub fn notes(&self) -> &[String] {
        match self {
            Approach::Rag(r) => &r.notes,
            _ => &[],
        }
    }

    /// Whether the approach adds to the prompt (and so may push a case past
    /// the context).
    pub fn extends_prompt(&self) -> bool {
        !matches!(self, Approach::AsGiven)
    }

    /// The conversation `case` is answered from under this approach.
    pub fn request(&self, case: &EvalCase, grammar: Option<Grammar>) -> Request {
        let messages = match self {
            Approach::AsGiven => case.messages.clone(),
            Approach::Prompt(p) => with_system_prompt(&case.messages, p),
            Approach::FewShot { k, pool, picker } => {
                let picked = picker.pick(case, pool, *k);
                let shots: Vec<&[ChatMessage]> = picked.iter().map(|&i| pool.shot(i)).collect();
                with_shots(&case.messages, &shots)
            }
            Approach::Rag(r) => r.messages(case),
        };
        Request {
            messages,
            tools: case.tools.clone(),
            grammar,
        }
    }
}

/// What one case is answered from: the built conversation and the grammar
/// it is decoded with.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub messages: Vec<ChatMessage>,
    pub tools: Option<Value>,
    pub grammar: Option<Grammar>,
}

impl Request {
    pub fn conversation(&self) -> Conversation<'_> {
        Conversation {
            messages: &self.messages,
            tools: self.tools.as_ref(),
            grammar: self.grammar.as_ref(),
        }
    }
}

/// A `prompt:FILE`'s text; a missing or empty file is an error.
fn read_prompt(file: &Path) -> Result<String> {
    let text = std::fs::read_to_string(file).map_err(|source| EvalError::Io {
        path: file.to_path_buf(),
        source,
    })?;
    let text = text.trim();
    if text.is_empty() {
        return Err(EvalError::Spec(format!(
            "--baseline prompt:{}: the file is empty",
            file.display()
        )));
    }
    Ok(text.to_string())
}

/// `messages` with `prompt` as system prompt. A case's own system message
/// is kept, after the prompt and a blank line, since it may carry what the
/// case needs (prepend, not replace).
pub fn with_system_prompt(messages: &[ChatMessage], prompt: &str) -> Vec<ChatMessage> {
    let mut out = messages.to_vec();
    match out.first_mut() {
        Some(first) if first.role == Role::System => {
            first.content = format!("{prompt}\n\n{}", first.content);
        }
        _ => out.insert(0, ChatMessage::new(Role::System, prompt)),
    }
    out
}

/// `messages` with the example conversations `shots` as prior turns: after
/// the case's leading system message(s), before its own turns.
pub fn with_shots(messages: &[ChatMessage], shots: &[&[ChatMessage]]) -> Vec<ChatMessage> {
    let n_system = messages
        .iter()
        .take_while(|m| m.role == Role::System)
        .count();
    let mut out = messages[..n_system].to_vec();
    for shot in shots {
        out.extend(shot.iter().cloned());
    }
    out.extend(messages[n_system..].iter().cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: Role, c: &str) -> ChatMessage {
        ChatMessage::new(role, c)
    }

    #[test]
    fn specs_parse() {
        let p = |s: &str| s.parse::<Baseline>();
        assert_eq!(p("base"), Ok(Baseline::Base));
        assert_eq!(p("auto"), Ok(Baseline::Auto));
        assert_eq!(p("none"), Ok(Baseline::None));
        assert_eq!(p("fine-tuned"), Ok(Baseline::FineTuned));
        assert_eq!(p("prompt:sys.txt"), Ok(Baseline::Prompt("sys.txt".into())));
        assert_eq!(p("few-shot:5"), Ok(Baseline::FewShot { k: 5, file: None }));
        assert_eq!(
            p("few-shot:2:ex.jsonl"),
            Ok(Baseline::FewShot {
                k: 2,
                file: Some("ex.jsonl".into())
            })
        );
        assert_eq!(
            p("smollm2-135m-instruct"),
            Ok(Baseline::Model("smollm2-135m-instruct".into()))
        );
        for bad in ["few-shot:0", "few-shot:x", "few-shot:", "prompt:"] {
            assert!(p(bad).is_err(), "{bad}");
        }
        let k = hone_retrieve::DEFAULT_K;
        assert_eq!(
            p("rag:docs"),
            Ok(Baseline::Rag {
                dir: "docs".into(),
                k
            })
        );
        assert_eq!(
            p("rag:docs:3"),
            Ok(Baseline::Rag {
                dir: "docs".into(),
                k: 3
            })
        );
        assert_eq!(
            p("rag:a:b"),
            Ok(Baseline::Rag {
                dir: "a:b".into(),
                k
            })
        );
        assert_eq!(
            p("fine-tuned+rag:x/docs:2"),
            Ok(Baseline::FineTunedRag {
                dir: "x/docs".into(),
                k: 2
            })
        );
        assert_eq!(
            p("fine-tuned+rag:x/docs:2").unwrap().label(),
            "fine-tuned+rag:docs:2"
        );
        assert_eq!(p("rag:docs").unwrap().label(), format!("rag:docs:{k}"));
        for bad in ["rag:", "rag::3", "rag:docs:0", "fine-tuned+rag:"] {
            assert!(p(bad).is_err(), "{bad}");
        }
        assert!(p("rag:docs:0").unwrap_err().contains("at least 1"));
        assert_eq!(
            p("few-shot:2:dir/ex.jsonl").unwrap().label(),
            "few-shot:2:ex.jsonl"
        );
        assert_eq!(p("prompt:a/sys.txt").unwrap().label(), "prompt:sys.txt");
    }

    #[test]
    fn system_prompt_is_added_or_prepended() {
        let plain = [msg(Role::User, "q")];
        let out = with_system_prompt(&plain, "Be brief.");
        assert_eq!(
            out,
            vec![msg(Role::System, "Be brief."), msg(Role::User, "q")]
        );
        let with_sys = [msg(Role::System, "Case rules."), msg(Role::User, "q")];
        let out = with_system_prompt(&with_sys, "Be brief.");
        assert_eq!(
            out,
            vec![
                msg(Role::System, "Be brief.\n\nCase rules."),
                msg(Role::User, "q")
            ]
        );
    }

    #[test]
    fn shots_go_after_the_system_message_and_before_the_case() {
        let case = [msg(Role::System, "S"), msg(Role::User, "q")];
        let a = [msg(Role::User, "u1"), msg(Role::Assistant, "a1")];
        let b = [msg(Role::User, "u2"), msg(Role::Assistant, "a2")];
        let out = with_shots(&case, &[&a, &b]);
        let got: Vec<(Role, &str)> = out.iter().map(|m| (m.role, m.content.as_str())).collect();
        assert_eq!(
            got,
            vec![
                (Role::System, "S"),
                (Role::User, "u1"),
                (Role::Assistant, "a1"),
                (Role::User, "u2"),
                (Role::Assistant, "a2"),
                (Role::User, "q"),
            ]
        );
        let no_sys = with_shots(&case[1..], &[&a]);
        assert_eq!(no_sys.len(), 3);
        assert_eq!(no_sys[0].content, "u1");
        assert_eq!(no_sys[2].content, "q");
    }

    #[test]
    fn prompt_file_must_exist_and_say_something() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.txt");
        let corpus = CorpusOptions::default();
        let inputs = Inputs {
            cases: &[],
            train_file: None,
            pick: ShotPick::Random,
            seed: 0,
            corpus: &corpus,
        };
        let e = Approach::check(&Baseline::Prompt(missing.clone()), &inputs).unwrap_err();
        assert!(e.to_string().contains("nope.txt"), "{e}");
        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, " \n").unwrap();
        let e = Approach::check(&Baseline::Prompt(empty), &inputs).unwrap_err();
        assert!(e.to_string().contains("the file is empty"), "{e}");
        let e = Approach::check(&Baseline::FewShot { k: 1, file: None }, &inputs).unwrap_err();
        assert!(e.to_string().contains("--train-file"), "{e}");
    }
}
