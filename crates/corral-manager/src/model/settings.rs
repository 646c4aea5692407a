//! The settings Corral knows: name, type, default. Only these may be set; values are validated.
use std::collections::BTreeMap;

use corral_store::resources::{Setting, SettingSpec};
use corral_store::Datastore;

use crate::error::{ManagerError, Result};

/// Type of a setting's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingType {
    Bool,
    /// An integer in the inclusive range.
    Int(u64, u64),
}

/// One known setting.
pub struct SettingDef {
    pub name: &'static str,
    pub kind: SettingType,
    pub default: &'static str,
    pub description: &'static str,
}

pub const REPLICA_SOFT_ANTI_AFFINITY: &str = "replica-soft-anti-affinity";
pub const OVER_PROVISIONING_PERCENTAGE: &str = "storage-over-provisioning-percentage";
pub const MINIMAL_AVAILABLE_PERCENTAGE: &str = "storage-minimal-available-percentage";
pub const DEFAULT_REPLICA_COUNT: &str = "default-replica-count";
pub const DEFAULT_STALE_REPLICA_TIMEOUT: &str = "default-stale-replica-timeout";
pub const NODE_LEASE_TTL: &str = "node-lease-ttl";
pub const REPLICA_REPLENISHMENT_WAIT_INTERVAL: &str = "replica-replenishment-wait-interval";

/// Every setting.
pub const SETTINGS: &[SettingDef] = &[
    SettingDef {
        name: REPLICA_SOFT_ANTI_AFFINITY,
        kind: SettingType::Bool,
        default: "false",
        description: "Allow several replicas of a volume on one node when no other node can take one.",
    },
    SettingDef {
        name: OVER_PROVISIONING_PERCENTAGE,
        kind: SettingType::Int(100, 10000),
        default: "100",
        description: "Replicas scheduled on a disk may add up to this percentage of its usable size.",
    },
    SettingDef {
        name: MINIMAL_AVAILABLE_PERCENTAGE,
        kind: SettingType::Int(0, 100),
        default: "10",
        description: "A disk whose free space falls below this percentage of its size takes no new replica.",
    },
    SettingDef {
        name: DEFAULT_REPLICA_COUNT,
        kind: SettingType::Int(1, 20),
        default: "3",
        description: "numberOfReplicas of a volume created without one.",
    },
    SettingDef {
        name: DEFAULT_STALE_REPLICA_TIMEOUT,
        kind: SettingType::Int(1, 100_000),
        default: "30",
        description: "staleReplicaTimeout (minutes) of a volume created without one.",
    },
    SettingDef {
        name: NODE_LEASE_TTL,
        kind: SettingType::Int(2, 300),
        default: "10",
        description: "Seconds a node's lease lives without renewal: a node silent that long is down. \
                      Read when a node starts.",
    },
    SettingDef {
        name: REPLICA_REPLENISHMENT_WAIT_INTERVAL,
        kind: SettingType::Int(0, 1_000_000),
        default: "600",
        description: "Seconds a replica on a down node is waited for before a replacement is scheduled \
                      on another node.",
    },
];

pub fn definition(name: &str) -> Result<&'static SettingDef> {
    SETTINGS.iter().find(|d| d.name == name).ok_or_else(|| {
        let known: Vec<_> = SETTINGS.iter().map(|d| d.name).collect();
        ManagerError::new(
            crate::error::Code::NotFound,
            format!("unknown setting {name:?}; known: {}", known.join(", ")),
        )
    })
}

/// Check `value` against the setting's type; returns its normalised form.
pub fn validate(def: &SettingDef, value: &str) -> Result<String> {
    match def.kind {
        SettingType::Bool => match value {
            "true" | "false" => Ok(value.to_string()),
            _ => {
                Err(ManagerError::invalid(format!("setting {} takes true or false, not {value:?}", def.name)))
            }
        },
        SettingType::Int(lo, hi) => match value.parse::<u64>() {
            Ok(n) if (lo..=hi).contains(&n) => Ok(n.to_string()),
            _ => Err(ManagerError::invalid(format!(
                "setting {} takes an integer from {lo} to {hi}, not {value:?}",
                def.name
            ))),
        },
    }
}

/// Effective values of every setting (stored, else default).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    values: BTreeMap<String, String>,
}

impl Settings {
    pub fn defaults() -> Settings {
        Settings { values: SETTINGS.iter().map(|d| (d.name.to_string(), d.default.to_string())).collect() }
    }

    pub async fn load(ds: &Datastore) -> Result<Settings> {
        let mut s = Settings::defaults();
        for stored in ds.list::<Setting>().await? {
            if s.values.contains_key(&stored.metadata.name) {
                s.values.insert(stored.metadata.name.clone(), stored.spec.value.clone());
            }
        }
        Ok(s)
    }

    pub fn with(mut self, name: &str, value: &str) -> Settings {
        self.values.insert(name.to_string(), value.to_string());
        self
    }

    pub fn get(&self, name: &str) -> &str {
        self.values.get(name).map_or("", String::as_str)
    }

    pub fn bool(&self, name: &str) -> bool {
        self.get(name) == "true"
    }

    pub fn int(&self, name: &str) -> u64 {
        self.get(name).parse().unwrap_or(0)
    }
}

/// Store `value` for `name` (validated) if no value is stored yet: used by quickstart to change
/// defaults without overriding a user's choice on a restart.
pub async fn set_if_absent(ds: &Datastore, name: &str, value: &str) -> Result<()> {
    let def = definition(name)?;
    let value = validate(def, value)?;
    match ds.create(&Setting::new(name, SettingSpec { value })).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == corral_store::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e.into()),
    }
}
