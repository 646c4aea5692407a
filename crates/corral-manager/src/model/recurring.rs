//! Recurring schedules: how a job's cron expression is read, which volumes a job applies to and
//! the label its snapshots and backups carry.
use corral_store::resources::{RecurringJob, Volume};

use crate::error::{ManagerError, Result};

/// Label put on snapshots and backups a job creates (as Longhorn labels a RecurringJob's).
pub const JOB_LABEL: &str = "recurring-job.corral.io";

/// Parse a cron expression as the job runner will: 5 fields, or 6 with seconds first.
pub fn parse_cron(expr: &str) -> Result<croner::Cron> {
    croner::Cron::new(expr)
        .with_seconds_optional()
        .parse()
        .map_err(|e| ManagerError::invalid(format!("invalid cron expression {expr:?}: {e}")))
}

/// Whether `job` applies to `v`: by name, or by the label `recurring-job-group.corral.io/<group>`.
pub fn applies_to(job: &RecurringJob, v: &Volume) -> bool {
    job.spec.volumes.contains(&v.metadata.name)
        || job
            .spec
            .groups
            .iter()
            .any(|g| v.metadata.labels.contains_key(&format!("recurring-job-group.corral.io/{g}")))
}
