//! hone-data: training data formats, validation, statistics, "auto"
//! hyperparameters, estimates and converters.

pub mod types;

pub use types::{ChatMessage, PreferenceExample, Role, SftExample};
