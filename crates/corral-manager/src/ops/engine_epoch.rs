//! Engine epochs: fencing of the data plane by the store.
//!
//! Every engine start (the volume's engine on its attach node, and the short-lived engine that expands a
//! detached volume) first takes a new epoch with [`take`]: the volume's `status.engineEpoch` plus one,
//! written with the store's version check before the process is started (a lost race re-reads and
//! retries, so two starts never share an epoch, even on two nodes). The engine gets it as
//! `corral engine serve --epoch N` ([`args`]) and sends it in every `Hello`; a replica persists the
//! highest epoch it accepted and refuses older ones (`corral_wire::server`). So an engine cut off from
//! the cluster (its node partitioned, or declared down and the volume force-attached elsewhere) cannot
//! write to a replica once a newer engine has reached it, and cannot reconnect.
//!
//! An epoch taken by a start that then fails is simply skipped: epochs only need to grow. The epoch an
//! engine instance runs under is read back from its instance-manager arguments ([`of_instance`]):
//! an instance whose epoch is not the volume's current one is stale and is stopped, never resumed.
use corral_store::resources::Volume;
use corral_store::Datastore;

use crate::error::Result;

/// The command-line flag carrying the epoch.
const FLAG: &str = "--epoch";

/// Takes the next engine epoch of `volume` from the store (see the module doc). Call it right before
/// asking the instance manager to start the engine.
pub async fn take(ds: &Datastore, volume: &str) -> Result<u64> {
    let v = ds
        .modify(volume, |v: &mut Volume| {
            v.status.engine_epoch = v.status.engine_epoch.saturating_add(1);
            Ok(())
        })
        .await?;
    Ok(v.status.engine_epoch)
}

/// The arguments of `corral engine serve` that pass `epoch`.
pub fn args(epoch: u64) -> [String; 2] {
    [FLAG.to_string(), epoch.to_string()]
}

/// The epoch an engine instance was started with (0 when its arguments carry none: an engine started
/// before epochs existed).
pub fn of_instance(args: &[String]) -> u64 {
    args.windows(2).find(|w| w[0] == FLAG).and_then(|w| w[1].parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_round_trips_through_instance_arguments() {
        let mut argv: Vec<String> = vec!["engine".into(), "serve".into(), "--volume".into(), "v".into()];
        assert_eq!(of_instance(&argv), 0);
        argv.extend(args(42));
        argv.extend(["--nbd".to_string(), "127.0.0.1:{port0}".into()]);
        assert_eq!(of_instance(&argv), 42);
    }
}
