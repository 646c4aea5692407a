//! Nodes and their disks as the manager's API shows them, and the bodies that change them.
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A disk as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiskView {
    pub name: String,
    pub path: String,
    pub allow_scheduling: bool,
    pub storage_reserved: u64,
    pub tags: Vec<String>,
    pub storage_maximum: u64,
    pub storage_available: u64,
    pub storage_scheduled: u64,
    pub scheduled_replicas: Vec<String>,
}

/// A node as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    pub name: String,
    pub address: String,
    pub allow_scheduling: bool,
    pub tags: Vec<String>,
    /// Same as `state == "ready"`.
    pub ready: bool,
    /// `ready`, or `down` (its node lease expired or its instance manager does not answer).
    #[serde(default)]
    pub state: String,
    /// `ready` (false with reason `NodeLeaseExpired` once its lease expired, `InstanceManagerDown`
    /// while its instance manager does not answer).
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub conditions: Vec<crate::Condition>,
    pub disks: Vec<DiskView>,
    pub resource_version: String,
}

/// Body of `PATCH /v1/nodes/{name}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateNode {
    #[serde(default)]
    pub allow_scheduling: Option<bool>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    #[serde(default)]
    pub resource_version: Option<String>,
}

/// Body of `POST /v1/nodes/{name}/disks`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddDisk {
    /// Absolute path of an existing directory on the node.
    pub path: String,
    /// Default: derived from the path.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub storage_reserved: u64,
    #[serde(default = "yes")]
    pub allow_scheduling: bool,
}

/// Body of `PATCH /v1/nodes/{name}/disks/{disk}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateDisk {
    #[serde(default)]
    pub allow_scheduling: Option<bool>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    #[serde(default)]
    pub storage_reserved: Option<u64>,
}

fn yes() -> bool {
    true
}
