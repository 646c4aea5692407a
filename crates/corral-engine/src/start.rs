//! Engine start: connect to every replica, decide from their durable recovery facts which are up to
//! date, make a fresh generation durable on those, and queue the others for rebuild.
//!
//! The rule ([`decide`]), in order:
//! 1. A replica that cannot be reached, says it is `rebuilding` (an interrupted rebuild target), or has a
//!    different size than the winners is **stale**.
//! 2. **Generation** first: only replicas with the highest generation can be up to date. The engine bumps
//!    the generation durably on every remaining replica before it acknowledges any write that a dropped
//!    replica missed, so a replica that missed an acknowledged write always has a lower generation.
//! 3. **Revision counter** next: among those, only the highest revision (persisted at flush and clean
//!    close) remains.
//! 4. **Dirty** last: if every remaining replica is clean, all are RW. A replica is dirty when it was
//!    not closed cleanly (`was_dirty_at_open`: the replica process died) or applied writes after its
//!    last flush (`unflushed_writes`: the replica stayed up but its engine stopped without the flush of a
//!    graceful stop, e.g. it crashed). Either way, writes that were in flight and never acknowledged may
//!    have reached some replicas and not others. Then one replica is RW — the first clean one, else the
//!    first in the order given — and the others are stale, so that two RW replicas never disagree about
//!    a block (reads spread over them would otherwise return one version, then the other).
//!
//! Stale replicas are never RW without a rebuild: they start as ERR and, with `auto_rebuild` (the
//! default), are rebuilt one after the other in the background through the normal online rebuild, which
//! reuses the data they hold (layer checksums are compared before anything is copied).

use std::sync::Arc;

use futures::future::join_all;

use crate::engine::{Engine, EngineConfig, BLOCK};
use crate::error::{EngineError, Result};
use corral_wire::{Address, ErrorKind as WireErrorKind, RecoveryFacts, ReplicaProtocol, WireError};

use crate::connector::Connector;
use crate::replica_set::{Mode, ReplicaSlot};

/// Outcome of the start-up decision for one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Up to date: starts RW.
    UpToDate,
    /// Not up to date (reason): starts ERR and needs a rebuild.
    Stale(String),
}

/// Applies the start rule (module doc) to the facts of reachable replicas (`None` = unreachable).
pub fn decide(facts: &[Option<RecoveryFacts>]) -> Vec<Verdict> {
    let mut verdicts: Vec<Option<Verdict>> = facts
        .iter()
        .map(|f| match f {
            None => Some(Verdict::Stale("unreachable at start".into())),
            Some(f) if f.rebuilding => Some(Verdict::Stale("an interrupted rebuild target".into())),
            Some(_) => None,
        })
        .collect();
    let open =
        |v: &[Option<Verdict>]| -> Vec<usize> { (0..facts.len()).filter(|&i| v[i].is_none()).collect() };
    let get = |i: usize| {
        facts[i]
            .as_ref()
            .map(|f| (f.generation, f.revision, f.was_dirty_at_open || f.unflushed_writes, f.size))
            .unwrap_or_default()
    };

    let candidates = open(&verdicts);
    if let Some(max_gen) = candidates.iter().map(|&i| get(i).0).max() {
        for &i in &candidates {
            if get(i).0 < max_gen {
                verdicts[i] = Some(Verdict::Stale(format!("generation {} is behind {max_gen}", get(i).0)));
            }
        }
    }
    let candidates = open(&verdicts);
    if let Some(max_rev) = candidates.iter().map(|&i| get(i).1).max() {
        for &i in &candidates {
            if get(i).1 < max_rev {
                verdicts[i] = Some(Verdict::Stale(format!("revision {} is behind {max_rev}", get(i).1)));
            }
        }
    }
    let candidates = open(&verdicts);
    if candidates.iter().any(|&i| get(i).2) && candidates.len() > 1 {
        let keep = candidates.iter().copied().find(|&i| !get(i).2).unwrap_or(candidates[0]);
        for &i in &candidates {
            if i != keep {
                verdicts[i] = Some(Verdict::Stale(
                    "not closed cleanly: may hold unacknowledged writes the chosen replica lacks".into(),
                ));
            }
        }
    }
    let candidates = open(&verdicts);
    if let Some(&first) = candidates.first() {
        let size = get(first).3;
        for &i in &candidates {
            if get(i).3 != size {
                verdicts[i] = Some(Verdict::Stale(format!("size {} differs from {size}", get(i).3)));
            }
        }
    }
    verdicts.into_iter().map(|v| v.unwrap_or(Verdict::UpToDate)).collect()
}

/// Checks a replica address: parsed by the data protocol's [`Address`], and in its canonical form
/// (`tcp://HOST:PORT` with a real port, or `unix:///ABSOLUTE/PATH`), because the engine identifies a
/// replica by its address text (`replica rm`, duplicates at start).
pub fn validate_address(op: &'static str, address: &str) -> Result<()> {
    let ok = match Address::parse(address) {
        Ok(parsed) if parsed.to_string() == address => match &parsed {
            Address::Tcp(host_port) => !host_port.ends_with(":0"),
            Address::Unix(path) => path.is_absolute() && path.as_os_str().len() > 1,
        },
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(EngineError::invalid(
            op,
            format!("bad replica address {address:?}: expected tcp://HOST:PORT or unix:///PATH"),
        ))
    }
}

impl Engine {
    /// Connects to the replicas, applies the start rule, sets a fresh generation on the up-to-date ones,
    /// and (with `auto_rebuild`) starts rebuilding the stale ones in the background.
    pub async fn start(
        config: EngineConfig,
        connector: Arc<dyn Connector>,
        addresses: &[String],
    ) -> Result<Engine> {
        const OP: &str = "engine start";
        if config.size == 0 || config.size % BLOCK != 0 {
            return Err(EngineError::invalid(
                OP,
                format!("size {} must be a positive multiple of 4096", config.size),
            ));
        }
        if addresses.is_empty() {
            return Err(EngineError::invalid(OP, "at least one replica is needed"));
        }
        for (i, a) in addresses.iter().enumerate() {
            validate_address(OP, a)?;
            if addresses[..i].contains(a) {
                return Err(EngineError::invalid(OP, format!("replica {a} is given twice")));
            }
        }
        let timeout = config.replica_timeout;
        let connected: Vec<Option<(Arc<dyn ReplicaProtocol>, RecoveryFacts)>> =
            join_all(addresses.iter().map(|a| {
                let connector = connector.clone();
                async move {
                    match tokio::time::timeout(timeout, connector.connect(a.clone())).await {
                        Ok(Ok(c)) => Some(c),
                        Ok(Err(e)) => {
                            tracing::warn!(replica = %a, error = %e, "replica unreachable at start");
                            None
                        }
                        Err(_) => {
                            tracing::warn!(replica = %a, "replica did not answer at start");
                            None
                        }
                    }
                }
            }))
            .await;
        let facts: Vec<Option<RecoveryFacts>> =
            connected.iter().map(|c| c.as_ref().map(|(_, f)| f.clone())).collect();
        let verdicts = decide(&facts);
        let winners: Vec<usize> = (0..verdicts.len()).filter(|&i| verdicts[i] == Verdict::UpToDate).collect();
        let Some(&first) = winners.first() else {
            return Err(EngineError::unavailable(OP, "no replica is reachable and up to date"));
        };
        let current = facts[first].as_ref().map(|f| f.size).unwrap_or(0);
        let fresh = winners.iter().all(|&i| {
            facts[i].as_ref().is_some_and(|f| f.generation == 0 && f.revision == 0 && f.chain.is_empty())
        });
        if current > config.size {
            return Err(EngineError::invalid(
                OP,
                format!(
                    "the replicas hold a volume of {current} bytes, larger than --size {}: use that size",
                    config.size
                ),
            ));
        }
        let max_generation = facts.iter().flatten().map(|f| f.generation).max().unwrap_or(0);
        let generation = max_generation + 1;
        let mut slots = Vec::new();
        for (i, (address, c)) in addresses.iter().zip(connected).enumerate() {
            let slot = match (&verdicts[i], c) {
                (Verdict::UpToDate, Some((link, _))) => {
                    ReplicaSlot::new(address.clone(), Some(link), Mode::ReadWrite)
                }
                (Verdict::Stale(reason), Some((link, _))) => {
                    link.close();
                    let slot = ReplicaSlot::new(address.clone(), None, Mode::Error);
                    slot.set_error(format!("stale at start: {reason}"));
                    slot
                }
                (_, None) => {
                    let slot = ReplicaSlot::new(address.clone(), None, Mode::Error);
                    slot.set_error("unreachable at start".into());
                    slot
                }
            };
            slots.push(slot);
        }
        let engine = Engine::from_parts(config, connector, slots, current, generation - 1);
        // A fresh generation on the chosen replicas: from now on, any of them that misses a write is behind.
        let timeout = engine.shared.config.control_timeout;
        for slot in engine.slots().iter() {
            if let Some(link) = slot.readable_link() {
                match tokio::time::timeout(timeout, link.set_generation(generation)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => engine.fail_replica(slot, "set generation", &e),
                    Err(_) => engine.fail_replica(
                        slot,
                        "set generation",
                        &WireError::service(WireErrorKind::Timeout, "no answer"),
                    ),
                }
            }
        }
        engine.shared.covered.store(
            engine.shared.drops.load(std::sync::atomic::Ordering::SeqCst),
            std::sync::atomic::Ordering::SeqCst,
        );
        engine.shared.generation.store(generation, std::sync::atomic::Ordering::SeqCst);
        if !engine.slots().iter().any(|s| s.mode() == Mode::ReadWrite) {
            return Err(EngineError::unavailable(OP, "every up-to-date replica failed while starting"));
        }
        if engine.shared.config.size > current {
            // A fresh volume created smaller, or a requested growth: grow every RW replica.
            if !fresh {
                tracing::info!(volume = %engine.volume(), from = current, to = engine.shared.config.size, "expanding at start");
            }
            engine.expand(engine.shared.config.size).await.map_err(|e| EngineError { op: OP, ..e })?;
        }
        if engine.shared.config.auto_rebuild {
            let stale: Vec<String> = engine
                .slots()
                .iter()
                .filter(|s| s.mode() == Mode::Error)
                .map(|s| s.address.clone())
                .collect();
            if !stale.is_empty() {
                engine.rebuild_in_background(stale);
            }
        }
        tracing::info!(volume = %engine.volume(), generation, "engine started");
        Ok(engine)
    }
}
