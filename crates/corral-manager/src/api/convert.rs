//! Stored resource fields as corral-api shows them. The store and the API spell these values the
//! same on the wire; they are separate types so corral-api does not depend on the store.
use corral_store::resources as store;

pub(super) fn volume_state(s: store::VolumeState) -> corral_api::VolumeState {
    use corral_api::VolumeState as A;
    match s {
        store::VolumeState::Creating => A::Creating,
        store::VolumeState::Detached => A::Detached,
        store::VolumeState::Attaching => A::Attaching,
        store::VolumeState::Attached => A::Attached,
        store::VolumeState::Detaching => A::Detaching,
        store::VolumeState::Deleting => A::Deleting,
        store::VolumeState::Error => A::Error,
    }
}

pub(super) fn robustness(r: store::Robustness) -> corral_api::Robustness {
    use corral_api::Robustness as A;
    match r {
        store::Robustness::Healthy => A::Healthy,
        store::Robustness::Degraded => A::Degraded,
        store::Robustness::Faulted => A::Faulted,
        store::Robustness::Unknown => A::Unknown,
    }
}

pub(super) fn data_locality(d: store::DataLocality) -> corral_api::DataLocality {
    match d {
        store::DataLocality::Disabled => corral_api::DataLocality::Disabled,
        store::DataLocality::BestEffort => corral_api::DataLocality::BestEffort,
    }
}

pub(super) fn replica_mode(m: store::ReplicaMode) -> corral_api::ReplicaMode {
    match m {
        store::ReplicaMode::RW => corral_api::ReplicaMode::ReadWrite,
        store::ReplicaMode::WO => corral_api::ReplicaMode::WriteOnly,
        store::ReplicaMode::ERR => corral_api::ReplicaMode::Error,
    }
}

pub(crate) fn condition(c: &store::Condition) -> corral_api::Condition {
    use corral_api::ConditionType as A;
    corral_api::Condition {
        kind: match c.kind {
            store::ConditionType::Scheduled => A::Scheduled,
            store::ConditionType::Restored => A::Restored,
            store::ConditionType::Ready => A::Ready,
        },
        status: c.status,
        reason: c.reason.clone(),
        message: c.message.clone(),
        last_transition: c.last_transition.clone(),
    }
}
