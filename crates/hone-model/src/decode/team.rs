//! A small team of threads that splits one job into chunks, for the many
//! short matrix products of a decode step (about two hundred per token, most
//! under 100 µs).
//!
//! Why not rayon: handing a job to a sleeping rayon worker costs a futex wake,
//! which at this rate ate the whole gain of a second core (measured: 48 tokens/s
//! with two threads against 50 with one). Here workers spin briefly between jobs,
//! the calling thread takes part, and chunks are claimed from a counter: when a
//! worker is descheduled (a busy machine), the caller simply runs its chunks
//! too, and only ever waits for chunks already started.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps (and must be woken).
const SPIN: Duration = Duration::from_micros(300);

/// Spins between two looks at the clock while a worker waits for a job.
const CLOCK_EVERY: u32 = 64;

/// A job pointer with its lifetime erased (see the SAFETY notes in `Team::run`).
#[derive(Clone, Copy)]
struct JobPtr(*const (dyn Fn(usize) + Sync + 'static));

// SAFETY: the pointee is `Sync`, and `Team::run` keeps it alive while any
// thread can call it.
unsafe impl Send for JobPtr {}

struct Shared {
    /// `epoch << 32 | next unclaimed chunk` of the current job.
    claim: AtomicU64,
    /// The current job: its epoch, pointer and chunk count.
    job: Mutex<Option<(u64, JobPtr, usize)>>,
    completed: AtomicUsize,
    panicked: AtomicBool,
    sleeping: Vec<AtomicBool>,
    shutdown: AtomicBool,
}

/// The calling thread plus `threads - 1` workers.
pub struct Team {
    shared: Arc<Shared>,
    workers: Vec<Thread>,
    /// One job at a time; a second caller runs its job alone instead of waiting.
    running: Mutex<u32>,
}

impl Team {
    pub fn new(threads: usize) -> Self {
        let helpers = threads.saturating_sub(1);
        let shared = Arc::new(Shared {
            claim: AtomicU64::new(0),
            job: Mutex::new(None),
            completed: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleeping: (0..helpers).map(|_| AtomicBool::new(false)).collect(),
            shutdown: AtomicBool::new(false),
        });
        let mut workers = Vec::with_capacity(helpers);
        for i in 0..helpers {
            let s = shared.clone();
            let spawned = thread::Builder::new()
                .name(format!("hone-decode-{}", i + 1))
                .spawn(move || worker(&s, i));
            match spawned {
                Ok(h) => workers.push(h.thread().clone()),
                // Fewer helpers only means less parallelism.
                Err(_) => break,
            }
        }
        Self {
            shared,
            workers,
            running: Mutex::new(0),
        }
    }

    /// Threads that take part in a job (the caller included).
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(0)`, …, `f(chunks - 1)`, each exactly once, spread over the team;
    /// returns when all have finished.
    pub fn run<'a>(&self, chunks: usize, f: &'a (dyn Fn(usize) + Sync + 'a)) {
        if chunks == 0 {
            return;
        }
        let guard = match self.running.try_lock() {
            Ok(g) if !self.workers.is_empty() && chunks > 1 => g,
            _ => return (0..chunks).for_each(f),
        };
        let s = &self.shared;
        // SAFETY (lifetime): the pointer is only called for chunks claimed under
        // this epoch, and this function returns only when all of them have
        // completed; later claims under this epoch fail (all chunks are taken).
        let raw: *const (dyn Fn(usize) + Sync + 'a) = f;
        let ptr = JobPtr(unsafe {
            std::mem::transmute::<
                *const (dyn Fn(usize) + Sync + 'a),
                *const (dyn Fn(usize) + Sync + 'static),
            >(raw)
        });
        let epoch = (s.claim.load(SeqCst) >> 32) + 1;
        *lock(&s.job) = Some((epoch, ptr, chunks));
        s.completed.store(0, SeqCst);
        s.claim.store(epoch << 32, SeqCst);
        for (w, asleep) in self.workers.iter().zip(&s.sleeping) {
            if asleep.load(SeqCst) {
                w.unpark();
            }
        }
        while let Some(i) = claim(s, epoch, chunks) {
            f(i);
            s.completed.fetch_add(1, SeqCst);
        }
        while s.completed.load(SeqCst) < chunks {
            std::hint::spin_loop();
        }
        drop(guard);
        if s.panicked.swap(false, SeqCst) {
            panic!("a decode worker thread panicked");
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, SeqCst);
        self.workers.iter().for_each(Thread::unpark);
    }
}

/// Claims the next chunk of job `epoch`, if any is left.
fn claim(s: &Shared, epoch: u64, chunks: usize) -> Option<usize> {
    let mut cur = s.claim.load(SeqCst);
    loop {
        let next = (cur & 0xFFFF_FFFF) as usize;
        if cur >> 32 != epoch || next >= chunks {
            return None;
        }
        match s.claim.compare_exchange(cur, cur + 1, SeqCst, SeqCst) {
            Ok(_) => return Some(next),
            Err(now) => cur = now,
        }
    }
}

fn worker(s: &Shared, index: usize) {
    let mut seen = 0u64;
    let mut idle_since = Instant::now();
    let mut spins = 0u32;
    while !s.shutdown.load(SeqCst) {
        let epoch = s.claim.load(SeqCst) >> 32;
        if epoch == seen {
            spins = spins.wrapping_add(1);
            // Reading the clock costs more than a spin (it was 7% of a
            // decode profile): look at it only every CLOCK_EVERY spins.
            if !spins.is_multiple_of(CLOCK_EVERY) || idle_since.elapsed() < SPIN {
                std::hint::spin_loop();
            } else {
                s.sleeping[index].store(true, SeqCst);
                if s.claim.load(SeqCst) >> 32 == seen {
                    thread::park_timeout(Duration::from_millis(5));
                }
                s.sleeping[index].store(false, SeqCst);
            }
            continue;
        }
        // The slot may already hold the next job, published a moment later.
        let Some((job_epoch, f, chunks)) = *lock(&s.job) else {
            continue;
        };
        if job_epoch != epoch {
            continue;
        }
        seen = epoch;
        // SAFETY: see `Team::run`; the pointer is called only for chunks
        // claimed under `epoch`, whose job is alive until they complete.
        while let Some(i) = claim(s, epoch, chunks) {
            let ok = catch_unwind(AssertUnwindSafe(|| unsafe { (*f.0)(i) })).is_ok();
            if !ok {
                s.panicked.store(true, SeqCst);
            }
            s.completed.fetch_add(1, SeqCst);
        }
        idle_since = Instant::now();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The process's decode team: `HONE_THREADS`, else `RAYON_NUM_THREADS`, else
/// every core.
pub fn global() -> &'static Team {
    static TEAM: OnceLock<Team> = OnceLock::new();
    TEAM.get_or_init(|| Team::new(configured_threads()))
}

fn configured_threads() -> usize {
    ["HONE_THREADS", "RAYON_NUM_THREADS"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| thread::available_parallelism().map_or(1, |n| n.get()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_runs_exactly_once() {
        let team = Team::new(3);
        for chunks in [0, 1, 2, 7, 64] {
            let hits: Vec<AtomicUsize> = (0..chunks).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..50 {
                team.run(chunks, &|i| {
                    hits[i].fetch_add(1, SeqCst);
                });
            }
            assert!(hits.iter().all(|h| h.load(SeqCst) == 50), "{chunks} chunks");
        }
    }

    #[test]
    fn concurrent_callers_each_get_their_job_done() {
        let team = Arc::new(Team::new(2));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let t = team.clone();
                thread::spawn(move || {
                    for _ in 0..200 {
                        let sum = AtomicUsize::new(0);
                        t.run(8, &|i| {
                            sum.fetch_add(i + 1, SeqCst);
                        });
                        assert_eq!(sum.load(SeqCst), 36);
                    }
                })
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
    }

    #[test]
    fn a_sleeping_worker_is_woken_for_the_next_job() {
        let team = Team::new(2);
        thread::sleep(SPIN * 4);
        let sum = AtomicUsize::new(0);
        team.run(16, &|i| {
            sum.fetch_add(i, SeqCst);
        });
        assert_eq!(sum.load(SeqCst), 120);
    }
}
