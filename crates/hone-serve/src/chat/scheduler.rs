//! The engine loop: one thread per loaded base model keeps a running batch
//! ([`RunningBatch`]) of every request on that base, whatever its adapter.
//! Requests join between decode steps, long prompts are read in chunks
//! interleaved with the others' decoding, and a row leaves as soon as it is
//! done or its client is gone.
//!
//! Admission is decided before a request reaches the loop, on the
//! [`KvBudget`] (`--kv-cache-mb`): each request reserves the KV cache its
//! rows can grow to (prompt plus `max_tokens`, times `n`) or gets a 429 at
//! once, so such a row never runs out of cache. A row bounded only by the
//! context length (no `max_tokens`, or one reaching past the context)
//! would reserve the whole context (377 MB on SmolLM2's 8k): it reserves
//! its prompt plus [`LAZY_KV_BLOCK`] positions instead and takes one more
//! block from the budget whenever its cache reaches its share
//! ([`KvGrowth`]); when the budget has no room for the next block, the row
//! ends with finish reason `length`, as at the context length. The waiting
//! rows are bounded by the budget and the admission slots: no unbounded
//! queue, no OOM, no stall. The reservation is held by the row's sink and
//! given back when the row leaves.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use hone_model::generate::{BatchRow, BatchStats, Generation, RowSink, RunningBatch};
use hone_model::ModelError;

use super::backend::CancelFlag;

/// Rows decoding at once on one base model by default: beyond it, a step
/// costs about as much per row as separate steps, and the latency of every
/// stream grows; further admitted rows wait their turn.
pub const DEFAULT_MAX_BATCH_ROWS: usize = 32;

/// Positions a row bounded only by the context length reserves beyond its
/// prompt at admission, and takes from the budget each time it needs more:
/// a long answer (1024 tokens is several pages) in one share, while 16 such
/// requests on SmolLM2 hold 0.8 GB of the 4 GB default, not 6 GB. A
/// multiple of the cache's 64-position blocks.
pub const LAZY_KV_BLOCK: usize = 1024;

/// The KV-cache budget shared by every base model (`--kv-cache-mb`).
#[derive(Debug)]
pub struct KvBudget {
    budget: usize,
    reserved: AtomicUsize,
}

impl KvBudget {
    pub fn new(budget_bytes: usize) -> Arc<Self> {
        Arc::new(KvBudget {
            budget: budget_bytes,
            reserved: AtomicUsize::new(0),
        })
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Bytes reserved by admitted requests now.
    pub fn reserved(&self) -> usize {
        self.reserved.load(Ordering::SeqCst)
    }

    /// Reserves `bytes`, or `None` when that would exceed the budget.
    pub fn try_reserve(self: &Arc<Self>, bytes: usize) -> Option<KvReservation> {
        let mut cur = self.reserved.load(Ordering::SeqCst);
        loop {
            let next = cur.checked_add(bytes).filter(|&n| n <= self.budget)?;
            match self
                .reserved
                .compare_exchange(cur, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    return Some(KvReservation {
                        budget: self.clone(),
                        bytes,
                    })
                }
                Err(now) => cur = now,
            }
        }
    }
}

/// A share of the [`KvBudget`], given back when dropped.
#[derive(Debug)]
pub struct KvReservation {
    budget: Arc<KvBudget>,
    bytes: usize,
}

impl KvReservation {
    /// Takes `bytes` more from the budget, or returns false (and takes
    /// nothing) when that would exceed it.
    pub fn try_grow(&mut self, bytes: usize) -> bool {
        match self.budget.try_reserve(bytes) {
            Some(mut more) => {
                self.bytes += std::mem::take(&mut more.bytes);
                true
            }
            None => false,
        }
    }

    /// Moves up to `bytes` of this reservation into a new one (each is
    /// given back on its own).
    pub fn split_off(&mut self, bytes: usize) -> KvReservation {
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        KvReservation {
            budget: self.budget.clone(),
            bytes,
        }
    }
}

impl Drop for KvReservation {
    fn drop(&mut self) {
        self.budget.reserved.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

/// What a row tells its request, in order: the prompt tokens it copied
/// (if any), text pieces, then its end.
pub(super) enum RowMsg {
    Reused(usize, usize),
    Text(usize, String),
    Done(usize, Result<Generation, ModelError>),
}

/// A row's sink: sends to its request's channel, and is no longer wanted
/// once the client is gone (`cancel`) or the request stopped listening
/// (`ended`). Holds the row's KV reservation until the row leaves.
pub(super) struct ChannelSink {
    pub index: usize,
    pub tx: Sender<RowMsg>,
    pub cancel: CancelFlag,
    pub ended: Arc<AtomicBool>,
    /// Given back before the row reports its end, so that a client that
    /// sends its next request on seeing the answer finds the budget free.
    pub kv: Option<KvReservation>,
    /// How `kv` grows, for a row reserved lazily; `None`: `kv` already
    /// holds all the row can ever need.
    pub growth: Option<KvGrowth>,
}

/// A lazily reserved row's share: the positions it covers, and the size of
/// the blocks it grows by.
#[derive(Debug, Clone, Copy)]
pub(super) struct KvGrowth {
    pub positions: usize,
    pub block: usize,
    pub block_bytes: usize,
}

impl RowSink for ChannelSink {
    fn wanted(&self) -> bool {
        !self.cancel.is_cancelled() && !self.ended.load(Ordering::SeqCst)
    }

    fn text(&mut self, piece: &str) -> ControlFlow<()> {
        if !self.wanted()
            || self
                .tx
                .send(RowMsg::Text(self.index, piece.into()))
                .is_err()
        {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    fn room(&mut self, positions: usize) -> bool {
        let (Some(g), Some(kv)) = (&mut self.growth, &mut self.kv) else {
            return true;
        };
        while g.positions < positions {
            if !kv.try_grow(g.block_bytes) {
                return false;
            }
            g.positions += g.block;
        }
        true
    }

    fn reused(&mut self, tokens: usize) {
        let _ = self.tx.send(RowMsg::Reused(self.index, tokens));
    }

    fn done(&mut self, result: Result<Generation, ModelError>) {
        self.kv = None;
        let _ = self.tx.send(RowMsg::Done(self.index, result));
    }
}

/// One base model's engine loop: a thread stepping its batch, fed rows
/// through a channel. The thread ends when the scheduler is dropped and its
/// last rows are done.
pub struct Scheduler {
    joins: Mutex<Sender<BatchRow>>,
    stats: Arc<Mutex<BatchStats>>,
}

impl Scheduler {
    /// Starts the loop of base model `id`, at most `max_rows` rows at once.
    pub fn start(id: &str, max_rows: usize) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(Mutex::new(BatchStats::default()));
        let shared = stats.clone();
        std::thread::Builder::new()
            .name(format!("hone-engine-{id}"))
            .spawn(move || engine_loop(rx, RunningBatch::new(max_rows), &shared))?;
        Ok(Scheduler {
            joins: Mutex::new(tx),
            stats,
        })
    }

    /// Hands rows to the loop; they join the batch at its next step.
    pub fn submit(&self, rows: Vec<BatchRow>) -> Result<(), ModelError> {
        let tx = lock(&self.joins);
        for row in rows {
            tx.send(row)
                .map_err(|_| ModelError::Generation("the engine loop has stopped".into()))?;
        }
        Ok(())
    }

    /// The batch after its last step.
    pub fn stats(&self) -> BatchStats {
        *lock(&self.stats)
    }
}

/// Steps the batch while it has rows; waits for new rows when it is empty.
fn engine_loop(rx: Receiver<BatchRow>, mut batch: RunningBatch, stats: &Mutex<BatchStats>) {
    loop {
        if batch.is_empty() {
            match rx.recv() {
                Ok(row) => batch.join(row),
                Err(_) => return,
            }
        }
        // Everything that arrived during the last step joins before the next.
        while let Ok(row) = rx.try_recv() {
            batch.join(row);
        }
        batch.step();
        *lock(stats) = batch.stats();
    }
}

/// Locks, recovering from a poisoned mutex (each critical section leaves
/// the data whole).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
