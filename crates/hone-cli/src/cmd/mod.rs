//! One module per `hone` subcommand.

pub mod bench;
pub mod chat;
pub mod data;
pub mod hparams;
pub mod model;
pub mod train;
