//! A job's data files: parsed and validated with hone-data ([`TrainData::read`]), then
//! tokenised with the base model's chat template ([`TrainData::tokenize`]), noting what
//! tokenisation cut ([`DataNote`]). Errors say which file and why ([`DataFileError`]),
//! with hone-data's full report for a rejected file, so each front end can show it its
//! own way (the CLI prints it, the server turns it into an API error).

use std::fmt;
use std::path::{Path, PathBuf};

use hone_data::{DataError, Method, PreferenceExample, SftExample};
use hone_text::{ChatTokenizer, EncodedChat};

use crate::dpo::{tokenize_dpo, TokenizedPair};
use crate::error::TrainError;
use crate::sft::tokenize_sft;

/// Which of a job's two files something is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFile {
    Training,
    Validation,
}

impl DataFile {
    /// "training" or "validation".
    pub fn as_str(self) -> &'static str {
        match self {
            DataFile::Training => "training",
            DataFile::Validation => "validation",
        }
    }
}

impl fmt::Display for DataFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A data file that cannot be trained on, and why.
#[derive(Debug, thiserror::Error)]
#[error("{file} file {}: {problem}", path.display())]
pub struct DataFileError {
    pub file: DataFile,
    pub path: PathBuf,
    /// Boxed: a report is large, and errors travel by value.
    pub problem: Box<DataProblem>,
}

/// Why a data file cannot be trained on.
#[derive(Debug, thiserror::Error)]
pub enum DataProblem {
    /// hone-data rejected it; `DataError::Invalid` carries the full report.
    #[error(transparent)]
    Rejected(DataError),
    /// An example does not render or tokenise with the model's template.
    #[error("example {index} cannot be tokenised: {message}")]
    Tokenize { index: usize, message: String },
    /// Tokenisation failed otherwise.
    #[error(transparent)]
    Train(TrainError),
    /// Every example loses all its trained tokens at `max_seq_len`.
    #[error(
        "max_seq_len {max_seq_len} leaves no trained token in any example \
         (every answer starts beyond it); raise max_seq_len"
    )]
    NothingToTrain { max_seq_len: usize },
}

impl DataProblem {
    /// What a user should read: hone-data's full report (every problem, by line) for a
    /// rejected file, else the one-line message.
    pub fn detail(&self) -> String {
        match self {
            DataProblem::Rejected(DataError::Invalid(report)) => {
                hone_data::render::render_report(report)
            }
            other => other.to_string(),
        }
    }
}

/// Parsed examples of one file.
#[derive(Debug, Clone)]
enum Examples {
    Sft(Vec<SftExample>),
    Dpo(Vec<PreferenceExample>),
}

/// One parsed file and where it came from.
#[derive(Debug, Clone)]
struct DataSet {
    path: PathBuf,
    examples: Examples,
}

/// A job's parsed and validated data, before tokenisation (which needs the model).
#[derive(Debug, Clone)]
pub struct TrainData {
    method: Method,
    training: DataSet,
    validation: Option<DataSet>,
}

impl TrainData {
    /// Parses both files in `method`'s format with hone-data. A validation file may
    /// hold fewer examples than the minimum a training file needs.
    pub fn read(
        method: Method,
        training: &Path,
        validation: Option<&Path>,
    ) -> std::result::Result<Self, DataFileError> {
        Ok(TrainData {
            method,
            training: read_file(method, DataFile::Training, training)?,
            validation: validation
                .map(|p| read_file(method, DataFile::Validation, p))
                .transpose()?,
        })
    }

    pub fn method(&self) -> Method {
        self.method
    }

    /// Preference data as SFT data on its preferred answers (each prompt followed by
    /// its chosen answer as the assistant turn): the first stage of `sft+dpo`. `None`
    /// for data that is already SFT.
    pub fn preferred_as_sft(&self) -> Option<TrainData> {
        let to_sft = |d: &DataSet| match &d.examples {
            Examples::Dpo(pairs) => Some(DataSet {
                path: d.path.clone(),
                examples: Examples::Sft(
                    pairs
                        .iter()
                        .map(|p| SftExample {
                            messages: p.input.iter().chain([&p.preferred]).cloned().collect(),
                            tools: p.tools.clone(),
                            parallel_tool_calls: None,
                        })
                        .collect(),
                ),
            }),
            Examples::Sft(_) => None,
        };
        Some(TrainData {
            method: Method::Sft,
            training: to_sft(&self.training)?,
            validation: match &self.validation {
                Some(v) => Some(to_sft(v)?),
                None => None,
            },
        })
    }
}

fn read_file(
    method: Method,
    file: DataFile,
    path: &Path,
) -> std::result::Result<DataSet, DataFileError> {
    let parsed = match (method, file) {
        (Method::Sft, DataFile::Training) => hone_data::parse_sft_file(path).map(Examples::Sft),
        (Method::Sft, DataFile::Validation) => {
            hone_data::parse_sft_validation_file(path).map(Examples::Sft)
        }
        (Method::Dpo, DataFile::Training) => {
            hone_data::parse_preference_file(path).map(Examples::Dpo)
        }
        (Method::Dpo, DataFile::Validation) => {
            hone_data::parse_preference_validation_file(path).map(Examples::Dpo)
        }
    };
    match parsed {
        Ok(examples) => Ok(DataSet {
            path: path.to_path_buf(),
            examples,
        }),
        Err(e) => Err(DataFileError {
            file,
            path: path.to_path_buf(),
            problem: Box::new(DataProblem::Rejected(e)),
        }),
    }
}

/// Tokenised training and validation examples.
#[derive(Debug, Clone)]
pub enum TokenizedData {
    Sft {
        train: Vec<EncodedChat>,
        valid: Vec<EncodedChat>,
    },
    Dpo {
        train: Vec<TokenizedPair>,
        valid: Vec<TokenizedPair>,
    },
}

impl TokenizedData {
    pub fn n_train(&self) -> usize {
        match self {
            TokenizedData::Sft { train, .. } => train.len(),
            TokenizedData::Dpo { train, .. } => train.len(),
        }
    }

    pub fn n_valid(&self) -> usize {
        match self {
            TokenizedData::Sft { valid, .. } => valid.len(),
            TokenizedData::Dpo { valid, .. } => valid.len(),
        }
    }

    /// Mean tokens per training example (both sequences of a pair): the input of the
    /// auto batch size's token budget.
    pub fn mean_train_tokens(&self) -> f64 {
        let (sum, n) = match self {
            TokenizedData::Sft { train, .. } => (
                train.iter().map(|e| e.ids.len()).sum::<usize>(),
                train.len(),
            ),
            TokenizedData::Dpo { train, .. } => (
                train
                    .iter()
                    .map(|p| p.chosen.ids.len() + p.rejected.ids.len())
                    .sum(),
                train.len(),
            ),
        };
        sum as f64 / n.max(1) as f64
    }
}

/// What tokenisation did to some examples of a file: worth a warning, not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataNote {
    pub file: DataFile,
    pub kind: NoteKind,
    /// Examples (SFT) or pairs (DPO) concerned.
    pub count: usize,
    pub max_seq_len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteKind {
    /// Cut at `max_seq_len` (a pair: either sequence).
    Truncated,
    /// SFT: no trained token left within `max_seq_len`; kept, but adds nothing.
    NoTrainedToken,
    /// DPO: an answer had no token left within `max_seq_len`; the pair is dropped.
    Dropped,
}

impl fmt::Display for DataNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (n, file, max) = (self.count, self.file, self.max_seq_len);
        match self.kind {
            NoteKind::Truncated => write!(f, "{n} {file} example(s) were cut to {max} tokens"),
            NoteKind::NoTrainedToken => write!(
                f,
                "{n} {file} example(s) have no trained token within {max} tokens and add nothing"
            ),
            NoteKind::Dropped => write!(
                f,
                "{n} {file} preference pair(s) were dropped: an answer had no token left within {max} tokens"
            ),
        }
    }
}

impl TrainData {
    /// Tokenises both files with the model's template, cutting sequences to
    /// `max_seq_len`, with a note for each thing that cut. A file with examples but
    /// nothing left to train is an error.
    pub fn tokenize(
        &self,
        tok: &ChatTokenizer,
        max_seq_len: usize,
    ) -> std::result::Result<(TokenizedData, Vec<DataNote>), DataFileError> {
        let mut notes = Vec::new();
        let data = tokenize_files(self, tok, max_seq_len, &mut notes)?;
        Ok((data, notes))
    }
}

fn tokenize_files(
    data: &TrainData,
    tok: &ChatTokenizer,
    max_seq_len: usize,
    notes: &mut Vec<DataNote>,
) -> std::result::Result<TokenizedData, DataFileError> {
    let mut one = |set: &DataSet, file: DataFile| -> std::result::Result<_, DataFileError> {
        let fail = |problem| DataFileError {
            file,
            path: set.path.clone(),
            problem: Box::new(problem),
        };
        let tok_err = |e: TrainError| match e {
            TrainError::Tokenize { index, message } => {
                fail(DataProblem::Tokenize { index, message })
            }
            other => fail(DataProblem::Train(other)),
        };
        let mut note = |kind, count| {
            if count > 0 {
                notes.push(DataNote {
                    file,
                    kind,
                    count,
                    max_seq_len,
                });
            }
        };
        let (out, n, useless) = match &set.examples {
            Examples::Sft(ex) => {
                let t = tokenize_sft(tok, ex, max_seq_len).map_err(tok_err)?;
                note(NoteKind::Truncated, t.truncated);
                note(NoteKind::NoTrainedToken, t.without_targets);
                let n = t.examples.len();
                (Tokens::Sft(t.examples), n, t.without_targets)
            }
            Examples::Dpo(ex) => {
                let t = tokenize_dpo(tok, ex, max_seq_len).map_err(tok_err)?;
                note(NoteKind::Truncated, t.truncated);
                note(NoteKind::Dropped, t.dropped);
                (Tokens::Dpo(t.pairs), ex.len(), t.dropped)
            }
        };
        if n > 0 && useless == n {
            return Err(fail(DataProblem::NothingToTrain { max_seq_len }));
        }
        Ok(out)
    };
    let train = one(&data.training, DataFile::Training)?;
    let valid = match &data.validation {
        Some(v) => Some(one(v, DataFile::Validation)?),
        None => None,
    };
    Ok(match (train, valid) {
        (Tokens::Sft(train), Some(Tokens::Sft(valid))) => TokenizedData::Sft { train, valid },
        (Tokens::Sft(train), _) => TokenizedData::Sft {
            train,
            valid: Vec::new(),
        },
        (Tokens::Dpo(train), Some(Tokens::Dpo(valid))) => TokenizedData::Dpo { train, valid },
        (Tokens::Dpo(train), _) => TokenizedData::Dpo {
            train,
            valid: Vec::new(),
        },
    })
}

/// One file's tokenised examples.
enum Tokens {
    Sft(Vec<EncodedChat>),
    Dpo(Vec<TokenizedPair>),
}
