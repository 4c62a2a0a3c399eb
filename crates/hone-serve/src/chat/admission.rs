//! Admission control: at most `max_concurrent` generations at once. Over
//! that, a request gets a 429 with `Retry-After` at once rather than waiting
//! in an unbounded queue, where every latency would grow and a client that
//! gave up would still cost a generation.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::backend::ChatBackend;
/// Seconds a 429 tells the client to wait (defined with the errors).
pub use super::backend::RETRY_AFTER_SECS;
use crate::error::ApiError;

/// Concurrent requests admitted by default: 16 per core, at least 32. They
/// are rows of one running batch per model (whose step reads the weights
/// once for all rows), so many fit; the KV-cache budget is the other limit.
pub fn default_max_concurrent_chats() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (16 * cores).max(32)
}

/// A backend plus admission control: at most `max_concurrent` generations
/// at once; over that, requests get a 429 with `Retry-After` at once rather
/// than waiting in an unbounded queue.
#[derive(Clone)]
pub struct ChatService {
    pub backend: Arc<dyn ChatBackend>,
    admission: Arc<Semaphore>,
    max_concurrent: usize,
}

impl ChatService {
    /// `max_concurrent` is clamped to at least 1.
    pub fn new(backend: Arc<dyn ChatBackend>, max_concurrent: usize) -> Self {
        let max_concurrent = max_concurrent.max(1);
        ChatService {
            backend,
            admission: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
        }
    }

    /// A slot for one request, or a 429.
    pub fn try_admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.admission
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::RateLimited {
                retry_after_secs: RETRY_AFTER_SECS,
            })
    }

    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }

    /// Slots free right now.
    pub fn available(&self) -> usize {
        self.admission.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use std::ops::ControlFlow;

    use hone_model::generate::{Generation, GenerationParams};
    use hone_text::ChatMessage;

    use super::*;
    use crate::api::ErrorCode;
    use crate::chat::backend::{ChatError, ChatTarget};

    /// Never called: admission is decided before generating.
    struct Unused;

    impl ChatBackend for Unused {
        fn generate(
            &self,
            _: &ChatTarget,
            _: &[ChatMessage],
            _: Option<&serde_json::Value>,
            _: &GenerationParams,
            _: &mut dyn FnMut(&str) -> ControlFlow<()>,
        ) -> Result<Generation, ChatError> {
            unreachable!("admission does not generate")
        }
    }

    #[tokio::test]
    async fn admission_refuses_over_capacity_with_429() {
        let s = ChatService::new(Arc::new(Unused), 1);
        let p = s.try_admit().unwrap();
        let e = s.try_admit().unwrap_err();
        assert_eq!(e.spec().status.as_u16(), 429);
        assert_eq!(e.code().map(ErrorCode::as_str), Some("rate_limit_exceeded"));
        drop(p);
        assert!(s.try_admit().is_ok());
    }
}
