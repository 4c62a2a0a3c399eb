//! One module per `hone` subcommand.

pub mod bench;
pub mod chat;
pub mod chat_template;
pub mod data;
pub mod data_export;
pub mod data_generate;
pub mod eval;
pub mod export;
pub mod generate_journal;
pub mod hparams;
pub mod keys;
pub mod merge;
pub mod model;
pub mod quickstart;
pub mod serve;
pub mod teacher;
pub mod train;
