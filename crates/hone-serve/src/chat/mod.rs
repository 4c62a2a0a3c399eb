//! Chat completions, everything but HTTP (the handler is `routes/chat.rs`):
//!
//! - [`backend`]: the engine seam ([`ChatBackend`]: one blocking `generate`
//!   call for one choice), what a request generates with ([`ChatTarget`]),
//!   and why it can fail ([`ChatError`], mapped to API errors);
//! - [`plan`](mod@plan): checks a request and turns it into a [`ChatPlan`] (sampling
//!   defaults, limits, fields refused by name);
//! - [`admission`]: [`ChatService`], the backend behind a bounded number of
//!   slots (over that, an immediate 429);
//! - [`tools`]: checks `tools`, `tool_choice` and `parallel_tool_calls`
//!   into a [`ToolPlan`] and the grammar of forced or strict calls;
//! - [`run`]: [`run_choices`], the `n` choices of a plan as events, with
//!   cancellation when the client goes away;
//! - [`scheduler`]: the engine loop of each base model (a running batch of
//!   every request's rows) and the KV-cache budget requests reserve from;
//! - [`local`]: [`LocalChat`], the real backend over hone-model, with the
//!   base models of the catalog, an LRU cache of adapters and an engine
//!   loop per base.
//!
//! Everything is re-exported here for callers outside (`crate::chat::X`);
//! the files import each other directly, so none depends on this one.

pub mod admission;
pub mod backend;
pub mod local;
pub mod plan;
pub mod run;
pub mod scheduler;
pub mod tools;

pub use admission::{default_max_concurrent_chats, ChatService};
pub use backend::{
    BatchSnapshot, CancelFlag, CancelOnDrop, ChatBackend, ChatError, ChatTarget, ChoiceUpdate,
    RETRY_AFTER_SECS,
};
pub use local::{
    BatchOptions, LocalChat, LocalChatOptions, DEFAULT_KV_CACHE_MB, DEFAULT_MAX_ADAPTERS,
};
pub use plan::{plan, ChatPlan, DEFAULT_TEMPERATURE, DEFAULT_TOP_P, MAX_CHOICES, MAX_STOP};
pub use run::{run_choices, ChatEvent, ChatRun, ChoiceOutput};
pub use scheduler::{DEFAULT_MAX_BATCH_ROWS, LAZY_KV_BLOCK};
pub use tools::ToolPlan;
