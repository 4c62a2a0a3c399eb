//! The server's Prometheus metrics (`GET /metrics`, `routes/metrics.rs`):
//! what vLLM, TGI and TEI expose, under `hone_` names. docs/api.md
//! ("Metrics") lists every one; keep the two in step.
//!
//! Counters and histograms are recorded as requests run ([`Metrics::request`],
//! [`GenerationClock`]); gauges of the present (rows, KV cache, jobs) are
//! set from a fresh [`EngineSnapshot`] and job count at each scrape, so they
//! are never stale. The text is written by `prometheus-client`.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::api::{JobStatus, Usage};
use crate::chat::{ChatEvent, ChatService};

/// The `Content-Type` of the answer (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Every job state, for `hone_fine_tuning_jobs{state}` (a state with no
/// job shows 0 rather than disappearing).
const JOB_STATES: [JobStatus; 7] = [
    JobStatus::ValidatingFiles,
    JobStatus::Queued,
    JobStatus::Running,
    JobStatus::Paused,
    JobStatus::Succeeded,
    JobStatus::Failed,
    JobStatus::Cancelled,
];

/// Seconds to the first token: a CPU server answers in milliseconds for a
/// short prompt and in tens of seconds for a long one.
const TTFT_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 60.0,
];

/// Seconds between streamed pieces: a few milliseconds per token for a
/// small model alone, more under load.
const ITL_BUCKETS: [f64; 15] = [
    0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0,
];

/// Whole requests, from arrival to the last token.
const DURATION_BUCKETS: [f64; 14] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    model: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

type HistogramFamily = Family<ModelLabel, Histogram, fn() -> Histogram>;

/// What the chat engine holds right now, from the engine loops' counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineSnapshot {
    /// Sequences generating now.
    pub running: i64,
    /// Admitted requests not generating yet.
    pub waiting: i64,
    /// Rows in the largest decode step now running.
    pub batch_size: i64,
    /// Requests admitted at once before a 429.
    pub capacity: i64,
    /// Bytes of KV cache held by running sequences (0: not tracked yet).
    pub kv_cache_used_bytes: i64,
    /// The KV cache budget in bytes (0: no budget, each request its own).
    pub kv_cache_capacity_bytes: i64,
}

impl EngineSnapshot {
    /// The engine loops' own counts ([`crate::chat::BatchSnapshot`], one per loaded
    /// base): running and waiting rows summed over bases, the largest last step
    /// (tokens fed, prompt rows included), KV bytes held and the shared budget. A
    /// backend without engine loops reports its admission slots as running.
    pub fn of(service: &ChatService) -> Self {
        let capacity = service.max_concurrent() as i64;
        let loops = service.backend.batch_stats();
        if loops.is_empty() {
            let running = capacity - service.available() as i64;
            return EngineSnapshot {
                running,
                batch_size: running.min(1),
                capacity,
                ..Default::default()
            };
        }
        let sum = |f: fn(&crate::chat::BatchSnapshot) -> usize| -> i64 {
            loops.iter().map(f).sum::<usize>() as i64
        };
        EngineSnapshot {
            running: sum(|b| b.running_rows),
            waiting: sum(|b| b.waiting_rows),
            batch_size: loops.iter().map(|b| b.last_step_tokens).max().unwrap_or(0) as i64,
            capacity,
            kv_cache_used_bytes: sum(|b| b.kv_bytes_used),
            kv_cache_capacity_bytes: loops.iter().map(|b| b.kv_bytes_budget).max().unwrap_or(0)
                as i64,
        }
    }
}

/// The metrics of one server. Cheap to share (`Arc`); every handle inside
/// is atomic, so recording never blocks a request for long.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    prompt_tokens: Family<ModelLabel, Counter>,
    cached_tokens: Family<ModelLabel, Counter>,
    generation_tokens: Family<ModelLabel, Counter>,
    ttft: HistogramFamily,
    itl: HistogramFamily,
    duration: HistogramFamily,
    running: Gauge,
    waiting: Gauge,
    batch_size: Gauge,
    capacity: Gauge,
    kv_used: Gauge,
    kv_capacity: Gauge,
    jobs: Family<StateLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            prompt_tokens: Family::default(),
            cached_tokens: Family::default(),
            generation_tokens: Family::default(),
            ttft: Family::new_with_constructor(|| Histogram::new(TTFT_BUCKETS)),
            itl: Family::new_with_constructor(|| Histogram::new(ITL_BUCKETS)),
            duration: Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS)),
            running: Gauge::default(),
            waiting: Gauge::default(),
            batch_size: Gauge::default(),
            capacity: Gauge::default(),
            kv_used: Gauge::default(),
            kv_capacity: Gauge::default(),
            jobs: Family::default(),
        };
        m.register();
        m
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "hone_requests",
            "Chat completion requests answered, by model and HTTP status",
            self.requests.clone(),
        );
        r.register(
            "hone_prompt_tokens",
            "Prompt tokens of finished chat completions",
            self.prompt_tokens.clone(),
        );
        r.register(
            "hone_prompt_tokens_cached",
            "Prompt tokens of finished chat completions copied from an earlier prompt, not computed",
            self.cached_tokens.clone(),
        );
        r.register(
            "hone_generation_tokens",
            "Tokens generated by finished chat completions",
            self.generation_tokens.clone(),
        );
        r.register(
            "hone_time_to_first_token_seconds",
            "Seconds from a request's arrival to its first generated text",
            self.ttft.clone(),
        );
        r.register(
            "hone_inter_token_latency_seconds",
            "Seconds between consecutive pieces of generated text of one request",
            self.itl.clone(),
        );
        r.register(
            "hone_request_duration_seconds",
            "Seconds from a request's arrival to its last generated token",
            self.duration.clone(),
        );
        r.register(
            "hone_requests_running",
            "Sequences generating now",
            self.running.clone(),
        );
        r.register(
            "hone_requests_waiting",
            "Admitted requests not generating yet",
            self.waiting.clone(),
        );
        r.register(
            "hone_batch_size",
            "Rows in the largest decode step running now",
            self.batch_size.clone(),
        );
        r.register(
            "hone_requests_capacity",
            "Chat requests admitted at once; more get a 429",
            self.capacity.clone(),
        );
        r.register(
            "hone_kv_cache_used_bytes",
            "Bytes of KV cache held by running sequences",
            self.kv_used.clone(),
        );
        r.register(
            "hone_kv_cache_capacity_bytes",
            "KV cache budget in bytes (0: none)",
            self.kv_capacity.clone(),
        );
        r.register(
            "hone_fine_tuning_jobs",
            "Fine-tuning jobs by state",
            self.jobs.clone(),
        );
    }

    /// Counts one answered chat request. `model` is the requested model
    /// when it was found, else `other` (so that unknown names sent by
    /// clients cannot grow the label set without bound).
    pub fn request(&self, model: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                model: model.to_string(),
                status: status.to_string(),
            })
            .inc();
    }

    /// The text of every metric, with the gauges set from `engine` and
    /// `jobs` (a count per state; states not listed are 0). Each model of
    /// `served` has its token and latency series even before its first
    /// request (at zero), as vLLM shows them, so that dashboards and rate()
    /// see the start.
    pub fn render(
        &self,
        engine: EngineSnapshot,
        jobs: &[(JobStatus, usize)],
        served: &[String],
    ) -> String {
        for model in served {
            let label = ModelLabel {
                model: model.clone(),
            };
            let _ = self.prompt_tokens.get_or_create(&label);
            let _ = self.cached_tokens.get_or_create(&label);
            let _ = self.generation_tokens.get_or_create(&label);
            let _ = self.ttft.get_or_create(&label);
            let _ = self.itl.get_or_create(&label);
            let _ = self.duration.get_or_create(&label);
        }
        self.running.set(engine.running);
        self.waiting.set(engine.waiting);
        self.batch_size.set(engine.batch_size);
        self.capacity.set(engine.capacity);
        self.kv_used.set(engine.kv_cache_used_bytes);
        self.kv_capacity.set(engine.kv_cache_capacity_bytes);
        for state in JOB_STATES {
            let n = jobs.iter().find(|(s, _)| *s == state).map_or(0, |j| j.1);
            self.jobs
                .get_or_create(&StateLabel {
                    state: state.as_str().into(),
                })
                .set(n as i64);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }

    /// Job counts per state, read from the store (blocking).
    pub fn job_counts(
        store: &dyn crate::store::Store,
    ) -> crate::store::StoreResult<Vec<(JobStatus, usize)>> {
        JOB_STATES
            .iter()
            .map(|&s| Ok((s, store.jobs_with_status(s)?.len())))
            .collect()
    }
}

/// Times one generation for the latency histograms and counts its tokens
/// when it ends. Fed every event the generation emits, on whichever thread
/// generates.
pub struct GenerationClock {
    metrics: Arc<Metrics>,
    model: ModelLabel,
    arrived: Instant,
    last_text: Option<Instant>,
}

impl GenerationClock {
    /// A clock for a request for `model` that arrived at `arrived`.
    pub fn start(metrics: Arc<Metrics>, model: &str, arrived: Instant) -> Self {
        GenerationClock {
            metrics,
            model: ModelLabel {
                model: model.to_string(),
            },
            arrived,
            last_text: None,
        }
    }

    /// Notes an event: the first text is the time to first token; each
    /// later one, an inter-token gap.
    pub fn see(&mut self, ev: &ChatEvent) {
        let ChatEvent::Text { text, .. } = ev else {
            return;
        };
        if text.is_empty() {
            return;
        }
        let now = Instant::now();
        match self.last_text {
            None => self.observe(&self.metrics.ttft, now - self.arrived),
            Some(prev) => self.observe(&self.metrics.itl, now - prev),
        }
        self.last_text = Some(now);
    }

    /// The generation finished: counts its tokens and its duration.
    pub fn done(self, usage: &Usage) {
        let m = &self.metrics;
        m.prompt_tokens
            .get_or_create(&self.model)
            .inc_by(u64::from(usage.prompt_tokens));
        let cached = usage.prompt_tokens_details.map_or(0, |d| d.cached_tokens);
        m.cached_tokens
            .get_or_create(&self.model)
            .inc_by(u64::from(cached));
        m.generation_tokens
            .get_or_create(&self.model)
            .inc_by(u64::from(usage.completion_tokens));
        self.observe(&m.duration, self.arrived.elapsed());
    }

    fn observe(&self, h: &HistogramFamily, d: std::time::Duration) {
        h.get_or_create(&self.model).observe(d.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_in_the_text_with_help_and_type() {
        let m = Metrics::new();
        m.request("smollm2", 200);
        let served = ["smollm2".to_string()];
        let text = m.render(
            EngineSnapshot::default(),
            &[(JobStatus::Running, 2)],
            &served,
        );
        for name in [
            "hone_requests_total",
            "hone_prompt_tokens_total",
            "hone_prompt_tokens_cached_total",
            "hone_generation_tokens_total",
            "hone_time_to_first_token_seconds",
            "hone_inter_token_latency_seconds",
            "hone_request_duration_seconds",
            "hone_requests_running",
            "hone_requests_waiting",
            "hone_batch_size",
            "hone_requests_capacity",
            "hone_kv_cache_used_bytes",
            "hone_kv_cache_capacity_bytes",
            "hone_fine_tuning_jobs",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}:\n{text}");
            assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
        }
        assert!(text.contains("hone_requests_total{model=\"smollm2\",status=\"200\"} 1"));
        assert!(text.contains("hone_fine_tuning_jobs{state=\"running\"} 2"));
        assert!(text.contains("hone_fine_tuning_jobs{state=\"queued\"} 0"));
        assert!(text.contains("hone_generation_tokens_total{model=\"smollm2\"} 0"));
    }

    #[test]
    fn the_clock_records_first_token_gaps_and_tokens() {
        let m = Arc::new(Metrics::new());
        let mut c = GenerationClock::start(m.clone(), "m", Instant::now());
        let text = |t: &str| ChatEvent::Text {
            index: 0,
            text: t.into(),
        };
        c.see(&text(""));
        c.see(&text("a"));
        c.see(&text("b"));
        c.see(&text("c"));
        c.done(&Usage {
            prompt_tokens: 7,
            completion_tokens: 3,
            total_tokens: 10,
            prompt_tokens_details: Some(crate::api::PromptTokensDetails { cached_tokens: 5 }),
        });
        let text = m.render(EngineSnapshot::default(), &[], &[]);
        for line in [
            "hone_time_to_first_token_seconds_count{model=\"m\"} 1",
            "hone_inter_token_latency_seconds_count{model=\"m\"} 2",
            "hone_request_duration_seconds_count{model=\"m\"} 1",
            "hone_prompt_tokens_total{model=\"m\"} 7",
            "hone_prompt_tokens_cached_total{model=\"m\"} 5",
            "hone_generation_tokens_total{model=\"m\"} 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}:\n{text}");
        }
    }
}
