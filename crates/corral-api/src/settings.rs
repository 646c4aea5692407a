//! Health, settings, the backup target and recurring jobs as the manager's API shows them.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Answer of `/healthz`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub node: String,
}

/// A setting with its effective value.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SettingView {
    pub name: String,
    pub value: String,
    pub default: String,
    pub description: String,
    /// Empty while the default applies.
    pub resource_version: String,
}

/// Body of `PUT /v1/settings/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetSetting {
    pub value: String,
    /// Make the change conditional on this version (from a previous read).
    #[serde(default)]
    pub resource_version: Option<String>,
}

/// The backup target.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupTargetView {
    /// Empty when none is set.
    pub url: String,
    pub available: bool,
    pub message: String,
}

/// Body of `PUT /v1/backuptarget`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetBackupTarget {
    pub url: String,
}

/// A recurring job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecurringJobView {
    pub name: String,
    /// `snapshot` or `backup`.
    pub task: String,
    /// Cron expression: 5 fields (minute hour day month weekday), or 6 with seconds first.
    pub cron: String,
    /// How many snapshots/backups of this job to keep per volume (1-100).
    pub retain: u32,
    #[serde(default = "one")]
    pub concurrency: u32,
    /// Volume label groups the job applies to.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Volumes the job applies to by name.
    #[serde(default)]
    pub volumes: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub last_run: Option<String>,
}

fn one() -> u32 {
    1
}
