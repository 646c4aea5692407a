//! Checks of what a CO asks for a volume: capabilities (access type and mode), capacity ranges
//! (rounded up to the manager's granularity) and StorageClass parameters.
use std::collections::{BTreeMap, HashMap};

use corral_api::CreateVolume;

use crate::error::{CsiError, Result};
use crate::proto::volume_capability::access_mode::Mode;
use crate::proto::volume_capability::AccessType;
use crate::proto::{CapacityRange, VolumeCapability};
use crate::SIZE_GRANULARITY;

/// Size of a volume whose request gives no capacity.
pub const DEFAULT_SIZE: u64 = 1 << 30;

/// Filesystems the node service formats.
pub const FILESYSTEMS: [&str; 2] = ["ext4", "xfs"];

/// Why a capability is not supported, or `None` when it is.
pub fn unsupported(cap: &VolumeCapability) -> Option<String> {
    let mode = cap.access_mode.as_ref().map(|m| Mode::try_from(m.mode).unwrap_or(Mode::Unknown));
    match mode {
        None => return Some("the volume capability has no access mode".into()),
        Some(Mode::SingleNodeWriter)
        | Some(Mode::SingleNodeReaderOnly)
        | Some(Mode::SingleNodeSingleWriter)
        | Some(Mode::SingleNodeMultiWriter) => {}
        Some(m) => {
            return Some(format!(
                "access mode {} is not supported: a Corral volume is attached to one node at a time",
                m.as_str_name()
            ))
        }
    }
    match &cap.access_type {
        None => Some("the volume capability has neither block nor mount access".into()),
        Some(AccessType::Block(_)) => None,
        Some(AccessType::Mount(m)) if m.fs_type.is_empty() || FILESYSTEMS.contains(&m.fs_type.as_str()) => {
            None
        }
        Some(AccessType::Mount(m)) => {
            Some(format!("filesystem {:?} is not supported (use ext4 or xfs)", m.fs_type))
        }
    }
}

/// Check a list of capabilities that must not be empty; InvalidArgument names the first problem.
pub fn check_capabilities(caps: &[VolumeCapability]) -> Result<()> {
    if caps.is_empty() {
        return Err(CsiError::invalid("volume capabilities are missing"));
    }
    for c in caps {
        if let Some(why) = unsupported(c) {
            return Err(CsiError::invalid(why));
        }
    }
    Ok(())
}

/// The size a capacity range asks for: the required bytes rounded up to the granularity (a
/// default when nothing is required), within the limit.
pub fn size_of(range: Option<&CapacityRange>, default: u64) -> Result<u64> {
    let (required, limit) = range.map(|r| (r.required_bytes, r.limit_bytes)).unwrap_or((0, 0));
    if required < 0 || limit < 0 {
        return Err(CsiError::invalid("capacity range bytes must not be negative"));
    }
    let (required, limit) = (required as u64, limit as u64);
    if limit > 0 && required > limit {
        return Err(CsiError::out_of_range(format!(
            "capacity range is empty: required {required} bytes is above the limit of {limit}"
        )));
    }
    let round_up = |n: u64| n.div_ceil(SIZE_GRANULARITY) * SIZE_GRANULARITY;
    let size = if required > 0 {
        round_up(required)
    } else if limit > 0 {
        round_up(default.min(limit))
    } else {
        default
    };
    if limit > 0 && size > limit {
        return Err(CsiError::out_of_range(format!(
            "Corral volume sizes are multiples of {SIZE_GRANULARITY} bytes: none lies in {required}..={limit} bytes"
        )));
    }
    // A capacity the plugin cannot serve is OUT_OF_RANGE for CSI (the manager calls it invalid).
    if size > corral_api::MAX_VOLUME_SIZE {
        return Err(CsiError::out_of_range(format!(
            "{size} bytes is larger than the largest Corral volume, {} bytes (1 PiB)",
            corral_api::MAX_VOLUME_SIZE
        )));
    }
    Ok(size)
}

/// A `CreateVolume` body from StorageClass parameters (unknown keys are refused, so a typo is
/// not silently ignored; the `csi.storage.k8s.io/` keys the sidecars add are skipped).
pub fn create_body(name: &str, size: u64, params: &HashMap<String, String>) -> Result<CreateVolume> {
    let mut body = CreateVolume {
        name: name.to_string(),
        size,
        number_of_replicas: None,
        stale_replica_timeout: None,
        data_locality: None,
        from_backup: None,
        labels: BTreeMap::new(),
        node_selector: Vec::new(),
        disk_selector: Vec::new(),
    };
    let number = |k: &str, v: &str| {
        v.trim().parse::<u64>().map_err(|_| CsiError::invalid(format!("parameter {k}={v:?} is not a number")))
    };
    let list = |v: &str| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
    for (k, v) in params {
        match k.as_str() {
            "numberOfReplicas" => {
                let n = number(k, v)?;
                body.number_of_replicas =
                    Some(u32::try_from(n).map_err(|_| CsiError::invalid(format!("{k}={v} is too large")))?);
            }
            "staleReplicaTimeout" => body.stale_replica_timeout = Some(number(k, v)?),
            "dataLocality" => body.data_locality = Some(v.clone()),
            "fromBackup" if !v.is_empty() => body.from_backup = Some(v.clone()),
            "fromBackup" => {}
            "diskSelector" => body.disk_selector = list(v),
            "nodeSelector" => body.node_selector = list(v),
            "recurringJobSelector" => {
                for group in job_groups(v)? {
                    body.labels.insert(format!("recurring-job-group.corral.io/{group}"), "enabled".into());
                }
            }
            k if k.starts_with("csi.storage.k8s.io/") => {}
            _ => {
                return Err(CsiError::invalid(format!(
                    "unknown parameter {k:?} (known: numberOfReplicas, staleReplicaTimeout, dataLocality, \
                     fromBackup, diskSelector, nodeSelector, recurringJobSelector)"
                )))
            }
        }
    }
    Ok(body)
}

/// Recurring-job groups from `recurringJobSelector`: Longhorn's JSON list
/// (`[{"name":"daily","isGroup":true}]`) or a comma-separated list of group names. Corral applies
/// jobs to volumes by group label, so single jobs (`isGroup: false`) are refused.
fn job_groups(v: &str) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Selector {
        name: String,
        #[serde(default)]
        is_group: bool,
    }
    if !v.trim_start().starts_with('[') {
        return Ok(v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect());
    }
    let items: Vec<Selector> = serde_json::from_str(v)
        .map_err(|e| CsiError::invalid(format!("recurringJobSelector {v:?} is not a JSON list: {e}")))?;
    items
        .into_iter()
        .map(|s| {
            if s.is_group {
                Ok(s.name)
            } else {
                Err(CsiError::invalid(format!(
                    "recurringJobSelector: job {:?} is not a group; Corral selects recurring jobs by group",
                    s.name
                )))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(required: i64, limit: i64) -> CapacityRange {
        CapacityRange { required_bytes: required, limit_bytes: limit }
    }

    #[test]
    fn sizes_round_up_to_the_granularity_within_the_limit() {
        let mib = 1024 * 1024;
        assert_eq!(size_of(None, DEFAULT_SIZE).ok(), Some(DEFAULT_SIZE));
        assert_eq!(size_of(Some(&range(1, 0)), DEFAULT_SIZE).ok(), Some(2 * mib));
        assert_eq!(size_of(Some(&range(0, 4 * mib as i64)), DEFAULT_SIZE).ok(), Some(4 * mib));
        assert_eq!(
            size_of(Some(&range(3 * mib as i64, 3 * mib as i64)), 0).map_err(|e| e.code).err(),
            Some(tonic::Code::OutOfRange)
        );
        assert_eq!(size_of(Some(&range(5, 4)), 0).map_err(|e| e.code).err(), Some(tonic::Code::OutOfRange));
        assert_eq!(
            size_of(Some(&range(-1, 0)), 0).map_err(|e| e.code).err(),
            Some(tonic::Code::InvalidArgument)
        );
    }

    #[test]
    fn parameters_map_to_the_volume_body() {
        let params: HashMap<String, String> = [
            ("numberOfReplicas", "2"),
            ("nodeSelector", "ssd, fast"),
            ("recurringJobSelector", r#"[{"name":"daily","isGroup":true}]"#),
            ("csi.storage.k8s.io/pvc/name", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let body =
            create_body("v", 2 << 20, &params).map_err(|e| e.message).unwrap_or_else(|m| panic!("{m}"));
        assert_eq!(body.number_of_replicas, Some(2));
        assert_eq!(body.node_selector, vec!["ssd", "fast"]);
        assert!(body.labels.contains_key("recurring-job-group.corral.io/daily"));
        let bad: HashMap<String, String> = [("replicas".to_string(), "2".to_string())].into();
        assert!(create_body("v", 2 << 20, &bad).is_err());
    }
}
