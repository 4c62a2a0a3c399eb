//! Integration tests of hone-serve, in one binary: the app is driven
//! in-process with `tower::ServiceExt::oneshot`, and once over a real
//! listener.

mod batching;
mod chat;
mod chat_store;
mod common;
mod embeddings;
mod files;
mod http;
mod job_creation;
mod jobs;
mod metrics;
mod models;
mod openapi;
mod orphans;
mod prefill_cancel;
mod projects;
mod store;
mod structured;
mod tools;
mod training;
mod wire;
