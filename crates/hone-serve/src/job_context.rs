//! [`JobContext`]: what a training run may see and do while it trains one
//! job. Everything here is progress (events, metrics, checkpoints, result
//! files, resolved hyperparameters), never a change of the job's state: that
//! belongs to the worker ([`crate::worker`]), which builds the context,
//! starts the run, and asks it to stop through a `StopFlag`.
//!
//! Why its own module: the training engine ([`crate::engines::TrainingEngine`],
//! implemented in [`crate::training`]) and the worker both depend on it, and
//! neither should depend on the other's internals.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use hone_model::lora::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};

use crate::api::{
    ErrorCode, EventLevel, EventType, FileObject, FileStatus, FileTag, FineTuningJob,
    JobCheckpoint, JobCheckpointTag, JobError, StepMetrics,
};
use crate::blobs::FsBlobStore;
use crate::ids::{self, FineTunedName};
use crate::store::{
    unix_now, CheckpointRecord, FileRecord, JobUpdate, NewEvent, PageRequest, Scope, Store,
    StoreError, StoreResult,
};

/// Where a job that continues a fine-tuned model keeps its copy of the parent adapter,
/// inside the job directory.
pub const PARENT_DIR: &str = "parent";
/// The purpose of the metrics CSV a job produces (OpenAI's name).
pub const RESULTS_PURPOSE: &str = "fine-tune-results";
/// Why a run is asked to stop. Ordered: a stronger reason replaces a
/// weaker one (a cancel wins over a pause, which wins over a shutdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum StopReason {
    Shutdown = 1,
    Pause = 2,
    Cancel = 3,
}

/// Shared by the worker, which asks a run to stop, and the run, which polls
/// it between steps.
#[derive(Debug, Clone, Default)]
pub(crate) struct StopFlag(Arc<AtomicU8>);

impl StopFlag {
    /// Asks the run to stop for `reason`, unless a stronger one was asked.
    pub(crate) fn request(&self, reason: StopReason) {
        self.0.fetch_max(reason as u8, Ordering::SeqCst);
    }

    /// The strongest reason asked so far.
    pub(crate) fn reason(&self) -> Option<StopReason> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            1 => Some(StopReason::Shutdown),
            2 => Some(StopReason::Pause),
            _ => Some(StopReason::Cancel),
        }
    }
}

/// What a training run may see and do. Everything here is progress, never a
/// change of state: the state is the worker's.
pub struct JobContext {
    pub job: FineTuningJob,
    /// The training file's content on disk.
    pub training_file: PathBuf,
    pub validation_file: Option<PathBuf>,
    /// `$HONE_HOME/jobs/<job-id>/`: everything the run writes goes here.
    pub job_dir: PathBuf,
    /// The name the final model will get; checkpoint models derive from it.
    pub model_name: FineTunedName,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) blobs: FsBlobStore,
    pub(crate) stop: StopFlag,
}

impl JobContext {
    /// Whether the run should save a checkpoint and return
    /// [`crate::engines::TrainingOutcome::Stopped`] (cancel, pause or
    /// shutdown was asked).
    pub fn stop_requested(&self) -> bool {
        self.stop.reason().is_some()
    }

    /// Records a message event.
    pub fn message(&self, level: EventLevel, message: impl Into<String>) -> StoreResult<()> {
        let e = NewEvent {
            level,
            kind: EventType::Message,
            message: message.into(),
            data: None,
        };
        self.store.add_event(&self.job.id, &e).map(|_| ())
    }

    /// The highest step that already has a metrics event: steps up to it are
    /// being redone after a crash or a pause (resume restarts from the last
    /// checkpoint), and their metrics are not recorded twice. Only recent
    /// events are read (newest first), which always hold the last metrics.
    pub fn last_recorded_step(&self) -> u64 {
        let Ok(page) = self
            .store
            .list_events(&Scope::All, &self.job.id, &PageRequest::first(200))
        else {
            return 0;
        };
        page.data
            .iter()
            .filter(|e| e.kind == EventType::Metrics)
            .filter_map(|e| e.data.as_ref()?.get("step")?.as_u64())
            .max()
            .unwrap_or(0)
    }

    /// Records a metrics event ("Step 12/300: training loss=…").
    pub fn metrics(&self, m: &StepMetrics) -> StoreResult<()> {
        let mut msg = match (m.step, m.total_steps) {
            (Some(s), Some(t)) => format!("Step {s}/{t}"),
            (Some(s), None) => format!("Step {s}"),
            _ => "Metrics".to_string(),
        };
        if let Some(l) = m.train_loss {
            msg.push_str(&format!(": training loss={l:.4}"));
        }
        if let Some(l) = m.valid_loss {
            msg.push_str(&format!(", validation loss={l:.4}"));
        }
        let data = serde_json::to_value(m).map_err(|e| StoreError::Backend(e.to_string()))?;
        let e = NewEvent {
            level: EventLevel::Info,
            kind: EventType::Metrics,
            message: msg,
            data: Some(data),
        };
        self.store.add_event(&self.job.id, &e).map(|_| ())
    }

    /// Registers a committed checkpoint (its adapter directory already in
    /// place, and kept as long as the job); from now on it is a model
    /// usable in chat.
    pub fn checkpoint(
        &self,
        step: u64,
        adapter_path: PathBuf,
        metrics: StepMetrics,
    ) -> StoreResult<JobCheckpoint> {
        let checkpoint = JobCheckpoint {
            id: ids::checkpoint_id(),
            object: JobCheckpointTag,
            created_at: unix_now(),
            fine_tuned_model_checkpoint: self.model_name.at_step(step).to_string(),
            fine_tuning_job_id: self.job.id.clone(),
            step_number: step,
            metrics,
        };
        self.store.add_checkpoint(&CheckpointRecord {
            checkpoint: checkpoint.clone(),
            adapter_path,
        })?;
        Ok(checkpoint)
    }

    /// For a job whose `model` is a fine-tuned (or checkpoint) model: the directory of
    /// the parent adapter it continues, a copy in `<job_dir>/parent/` made on first use,
    /// so that the run and every resume of it start from the same weights even if the
    /// parent model is deleted meanwhile. `None` for a job on a base model. The lookup
    /// is scoped to the job's project, as at job creation.
    pub fn parent_adapter(&self) -> Result<Option<PathBuf>, JobError> {
        if ids::FineTunedName::parse(&self.job.model).is_none() {
            return Ok(None);
        }
        let dest = self.job_dir.join(PARENT_DIR);
        if dest.join(ADAPTER_WEIGHTS_FILE).is_file() {
            return Ok(Some(dest));
        }
        let gone = |why: String| {
            JobError::new(
                ErrorCode::ModelNotAvailable,
                format!("The model this job continues, {}, {why}", self.job.model),
            )
            .with_param("model")
        };
        let scope = Scope::Project(self.job.organization_id.clone());
        let rec = self
            .store
            .get_model(&scope, &self.job.model)
            .map_err(|e| gone(format!("cannot be found: {e}")))?;
        copy_adapter(&rec.adapter_path, &dest)
            .map_err(|e| gone(format!("has an unreadable adapter: {e}")))?;
        Ok(Some(dest))
    }

    /// Updates progress fields (resolved hyperparameters, tokens, ETA).
    pub fn update(&self, u: &JobUpdate) -> StoreResult<FineTuningJob> {
        self.store.update_job(&self.job.id, u)
    }

    /// Stores a file the run produced (the metrics CSV) as a file object
    /// with purpose `fine-tune-results`, so clients download it with
    /// `GET /v1/files/{id}/content`. The content is committed before the
    /// record, so a listed file always has its bytes.
    pub fn store_result_file(&self, filename: &str, src: &Path) -> StoreResult<FileObject> {
        let id = ids::file_id();
        let blob = self
            .blobs
            .put_file_blocking(&id, src)
            .map_err(|e| StoreError::Backend(format!("storing {filename}: {e}")))?;
        let object = FileObject {
            id,
            object: FileTag,
            bytes: blob.bytes,
            created_at: unix_now(),
            filename: filename.to_string(),
            purpose: RESULTS_PURPOSE.to_string(),
            status: FileStatus::Processed,
            status_details: None,
            expires_at: None,
        };
        self.store.insert_file(&FileRecord {
            object: object.clone(),
            project: self.job.organization_id.clone(),
            sha256: blob.sha256,
        })?;
        Ok(object)
    }
}

/// Copies the two PEFT files of a checkpoint into `dest` atomically (a staging
/// directory, fsynced, then renamed), replacing an older copy. The copies get the
/// umask's modes (0644 files in a 0755 directory under umask 022), so that another
/// user or a service account can load the adapter, as with `hone train`'s own output.
pub(crate) fn copy_adapter(src: &Path, dest: &Path) -> std::io::Result<()> {
    use hone_model::atomic_file::{finish_file, publish_dir, staging_dir};
    let tmp: PathBuf = staging_dir(dest)?;
    let staged = (|| {
        for name in [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE] {
            std::fs::copy(src.join(name), tmp.join(name))?;
            finish_file(&tmp.join(name))?;
        }
        if dest.exists() {
            std::fs::remove_dir_all(dest)?;
        }
        publish_dir(&tmp, dest)
    })();
    if staged.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    staged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stronger_stop_reason_wins_and_a_weaker_one_does_not_replace_it() {
        let f = StopFlag::default();
        assert_eq!(f.reason(), None);
        f.request(StopReason::Pause);
        f.request(StopReason::Shutdown);
        assert_eq!(f.reason(), Some(StopReason::Pause));
        f.request(StopReason::Cancel);
        f.request(StopReason::Pause);
        assert_eq!(f.reason(), Some(StopReason::Cancel));
    }
}
