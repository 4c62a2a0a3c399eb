//! The one way to open a model, for every front end (`hone chat`, `data`,
//! `train`, `eval`, `serve`, `merge`, `bench`):
//!
//! 1. [`crate::registry::resolve`] turns a spec (id, path, or a model to
//!    fetch) into a [`ResolvedModel`];
//! 2. [`ResolvedModel::open`] reads what the file says about itself — the
//!    configuration, the tokenizer and the chat template — without reading
//!    weights, which is all that token counting (`hone data stats`,
//!    `estimate`, upload checks) needs;
//! 3. [`OpenModel::load`] reads the weights on a [`WeightPath`] and gives a
//!    [`ChatEngine`].
//!
//! Why one door: a model family's metadata is interpreted in one place, so
//! the token counts a user sees before training are those of the model that
//! trains and serves.

use std::path::{Path, PathBuf};

use hone_text::{ChatTokenCounter, ChatTokenizer};

use crate::config::Config;
use crate::engine::ChatEngine;
use crate::error::{text_err, Result};
use crate::family::DecoderSpec;
use crate::llama::WeightPath;
use crate::load::WeightFile;
use crate::registry::{ModelSource, ResolvedModel};

/// How to open a model beyond what its file says: the one place a front end's
/// `--chat-template FILE` is applied, so that `hone data`, `train`, `chat`,
/// `eval` and `serve` render with the same template for the same flag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// A Jinja chat template that replaces the model's own.
    pub chat_template: Option<PathBuf>,
}

/// A model whose configuration, tokenizer and chat template are read, and
/// whose weights are not (yet).
pub struct OpenModel {
    /// The id to show (see [`ResolvedModel::id`]).
    pub id: String,
    pub source: ModelSource,
    /// The sizes, a view of `spec`.
    pub config: Config,
    /// What the model's family switches on ([`crate::family`]).
    pub spec: DecoderSpec,
    pub tokenizer: ChatTokenizer,
    /// The file, header read, kept for [`OpenModel::load`].
    file: WeightFile,
}

impl std::fmt::Debug for OpenModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenModel")
            .field("id", &self.id)
            .field("source", &self.source)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ResolvedModel {
    /// Reads the model's configuration, tokenizer and chat template (a GGUF
    /// file's header, or an HF directory's `config.json` and tokenizer
    /// files), not its weights.
    pub fn open(&self) -> Result<OpenModel> {
        self.open_with(&OpenOptions::default())
    }

    /// [`ResolvedModel::open`] with `options` applied (the chat template
    /// override; `tokenizer.template.origin()` says which template is used).
    pub fn open_with(&self, options: &OpenOptions) -> Result<OpenModel> {
        if let ModelSource::HfDir(dir) = &self.source {
            if crate::embed::is_embedding_model(dir) {
                return Err(crate::embed::refuse_for_chat(&self.id));
            }
        }
        let mut file = WeightFile::open(self.source.path())?;
        let mut tokenizer = match file.gguf_content() {
            Some(content) => ChatTokenizer::from_gguf_content(content),
            None => ChatTokenizer::from_hf_dir(self.source.path()),
        }
        .map_err(text_err)?;
        if let Some(path) = &options.chat_template {
            tokenizer = tokenizer.with_template_file(path).map_err(text_err)?;
        }
        let spec = file.spec()?;
        Ok(OpenModel {
            id: self.id.clone(),
            source: self.source.clone(),
            config: Config::from_spec(&spec),
            spec,
            tokenizer,
            file,
        })
    }
}

impl OpenModel {
    /// Opens a GGUF file or HF directory given by path, with its file or
    /// directory name as id (callers with a spec use
    /// [`crate::registry::resolve`] then [`ResolvedModel::open`]).
    pub fn open_path(path: &Path) -> Result<Self> {
        let source = if path.is_dir() {
            ModelSource::HfDir(path.to_path_buf())
        } else {
            ModelSource::Gguf(path.to_path_buf())
        };
        let id = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        ResolvedModel { id, source }.open()
    }

    /// The longest sequence the model accepts.
    pub fn context_length(&self) -> usize {
        self.config.max_position_embeddings
    }

    /// hone-data's token counter for this model's tokenizer and chat
    /// template: the counts training will see.
    pub fn token_counter(&self) -> ChatTokenCounter {
        ChatTokenCounter {
            chat: self.tokenizer.clone(),
            context_length: self.context_length(),
        }
    }

    /// Reads the weights on `weights` (f32 for training and the reference,
    /// packed for serving) into a ready [`ChatEngine`].
    pub fn load(self, weights: WeightPath) -> Result<ChatEngine> {
        let model = self.file.load(self.spec, weights)?;
        Ok(ChatEngine {
            id: self.id,
            model,
            tokenizer: self.tokenizer,
            grammar: Default::default(),
        })
    }
}

/// The shorthands live here, beside the door they go through, so that
/// `engine.rs` (what a loaded model does) needs nothing from this module.
impl ChatEngine {
    /// Opens a resolved model and loads its weights: shorthand for
    /// [`ResolvedModel::open`] then [`OpenModel::load`].
    pub fn load(resolved: &ResolvedModel, weights: WeightPath) -> Result<Self> {
        resolved.open()?.load(weights)
    }

    /// [`ChatEngine::load`] with `options` applied ([`ResolvedModel::open_with`]).
    pub fn load_with(
        resolved: &ResolvedModel,
        weights: WeightPath,
        options: &OpenOptions,
    ) -> Result<Self> {
        resolved.open_with(options)?.load(weights)
    }

    /// Loads a GGUF file or HF directory given by path.
    pub fn load_path(path: &Path, weights: WeightPath) -> Result<Self> {
        OpenModel::open_path(path)?.load(weights)
    }
}
