//! hone-data integration tests (one binary, one module per concern).

mod codes;
mod common;
mod corpus;
mod hostile;
mod perf;
mod props;
mod workflow;
