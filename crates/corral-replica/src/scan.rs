//! Reading a replica directory: find its files, parse them, build and validate the snapshot tree, and
//! (for a read-write open) roll forward an interrupted operation and remove leftovers.
//!
//! Validation never changes the disk; only a directory that validates is rolled forward and cleaned.
//! Leftovers of interrupted operations that open removes (read-write only):
//! - `*.tmp` (an interrupted atomic rewrite);
//! - `volume-head-*.img(.meta)` other than `volume.meta:Head` (a new head whose commit never happened,
//!   or an old head whose deletion never happened);
//! - `volume-snap-X.img(.meta)` whose data file is the same inode as the head (a snapshot link whose
//!   commit never happened);
//! - `volume-snap-X.img` without a `.meta` (an interrupted layer deletion or `begin_layer`).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{ErrorKind, ReplicaError, Result};
use crate::format::corral_state::{ChainEntry, CorralState, PendingOp};
use crate::format::disk_meta::DiskMeta;
use crate::format::names;
use crate::format::revision_counter;
use crate::format::volume_meta::{self, VolumeMeta};
use crate::fsutil;

/// One problem found in a directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The file concerned.
    pub file: PathBuf,
    /// What is wrong.
    pub message: String,
}

/// Everything read from a directory.
#[derive(Debug)]
pub(crate) struct DirScan {
    pub dir: PathBuf,
    pub volume: VolumeMeta,
    pub state: CorralState,
    pub revision: Option<u64>,
    /// Records of the head and every snapshot, by data file name.
    pub metas: BTreeMap<String, DiskMeta>,
    /// Data files present.
    pub imgs: BTreeSet<String>,
    /// Leftovers to delete on a read-write open.
    pub leftovers: Vec<String>,
}

/// The validated tree.
#[derive(Debug)]
pub(crate) struct Tree {
    /// Data file name of the head.
    pub head: String,
    /// Every layer (head and snapshots), by data file name.
    pub nodes: BTreeMap<String, DiskMeta>,
}

fn read_small(path: &Path, op: &'static str) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).map_err(|e| ReplicaError::io(op, path, e))?;
    if meta.len() > 1 << 20 {
        return Err(ReplicaError::corrupt(op, path, format!("file is {} bytes, too large", meta.len())));
    }
    std::fs::read(path).map_err(|e| ReplicaError::io(op, path, e))
}

/// Reads and parses every file. Errors name the file; nothing is written.
pub(crate) fn scan(dir: &Path) -> Result<DirScan> {
    let vm_path = dir.join(volume_meta::FILE_NAME);
    if !vm_path.exists() {
        if !dir.exists() {
            return Err(ReplicaError::new(ErrorKind::NotFound, "open", "replica directory does not exist")
                .with_path(dir));
        }
        return Err(ReplicaError::new(
            ErrorKind::NotFound,
            "open",
            "no volume.meta: not a replica directory",
        )
        .with_path(dir));
    }
    let volume = VolumeMeta::parse(&read_small(&vm_path, "read volume.meta")?, &vm_path)?;
    let cs_path = dir.join(crate::format::corral_state::FILE_NAME);
    let state = if cs_path.exists() {
        CorralState::parse(&read_small(&cs_path, "read corral state")?, &cs_path)?
    } else {
        CorralState::default()
    };
    let rc_path = dir.join(revision_counter::FILE_NAME);
    let revision = if rc_path.exists() {
        Some(revision_counter::parse(&read_small(&rc_path, "read revision counter")?, &rc_path)?)
    } else {
        None
    };
    let mut metas = BTreeMap::new();
    let mut imgs = BTreeSet::new();
    let mut leftovers = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| ReplicaError::io("list directory", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ReplicaError::io("list directory", dir, e))?;
        let Ok(name) = entry.file_name().into_string() else { continue };
        if name.ends_with(".tmp") {
            leftovers.push(name);
            continue;
        }
        let is_layer_file =
            |s: &str| names::head_number(s).is_some() || names::snapshot_name_of_file(s).is_some();
        if is_layer_file(&name) {
            imgs.insert(name);
        } else if let Some(img) = name.strip_suffix(crate::format::disk_meta::SUFFIX) {
            if !is_layer_file(img) {
                continue;
            }
            let path = dir.join(&name);
            if names::head_number(img).is_some() && img != volume.head {
                // A stale head's record: never parsed, deleted at a read-write open.
                continue;
            }
            let meta = DiskMeta::parse(&read_small(&path, "read disk metadata")?, &path)?;
            metas.insert(img.to_string(), meta);
        }
    }
    // Stale heads.
    let stale_heads: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| ReplicaError::io("list directory", dir, e))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| {
            let img = n.strip_suffix(crate::format::disk_meta::SUFFIX).unwrap_or(n);
            names::head_number(img).is_some() && img != volume.head
        })
        .collect();
    for h in &stale_heads {
        imgs.remove(h);
    }
    leftovers.extend(stale_heads);
    // Snapshot links sharing the head's inode (uncommitted snapshot).
    if imgs.contains(&volume.head) {
        let head_path = dir.join(&volume.head);
        let head_md = std::fs::metadata(&head_path).map_err(|e| ReplicaError::io("stat", &head_path, e))?;
        let mut shared = Vec::new();
        for img in imgs.iter().filter(|i| names::snapshot_name_of_file(i).is_some()) {
            let p = dir.join(img);
            if let Ok(md) = std::fs::metadata(&p) {
                if md.ino() == head_md.ino() && md.dev() == head_md.dev() {
                    shared.push(img.clone());
                }
            }
        }
        for img in shared {
            imgs.remove(&img);
            if metas.remove(&img).is_some() {
                leftovers.push(names::meta_file(&img));
            }
            leftovers.push(img);
        }
    }
    // Orphan snapshot data files.
    let orphans: Vec<String> = imgs
        .iter()
        .filter(|i| names::snapshot_name_of_file(i).is_some() && !metas.contains_key(*i))
        .cloned()
        .collect();
    for o in orphans {
        imgs.remove(&o);
        leftovers.push(o);
    }
    Ok(DirScan { dir: dir.to_path_buf(), volume, state, revision, metas, imgs, leftovers })
}

/// Validates the tree; returns every problem found (empty = consistent).
pub(crate) fn problems(scan: &DirScan) -> Vec<Problem> {
    let dir = &scan.dir;
    let mut out = Vec::new();
    let head = &scan.volume.head;
    if !scan.imgs.contains(head) {
        out.push(Problem {
            file: dir.join(head),
            message: "missing layer file: the head named by volume.meta does not exist".into(),
        });
    }
    if !scan.metas.contains_key(head) {
        out.push(Problem {
            file: dir.join(names::meta_file(head)),
            message: "missing metadata file of the head".into(),
        });
    }
    for (img, meta) in &scan.metas {
        if !scan.imgs.contains(img) && img != head {
            out.push(Problem {
                file: dir.join(img),
                message: format!("missing layer file (its metadata {} exists)", names::meta_file(img)),
            });
        }
        if !meta.parent.is_empty() && !scan.metas.contains_key(&meta.parent) {
            out.push(Problem {
                file: dir.join(names::meta_file(img)),
                message: format!("dangling parent: {:?} has no metadata file", meta.parent),
            });
        }
        if names::head_number(&meta.parent).is_some() {
            out.push(Problem {
                file: dir.join(names::meta_file(img)),
                message: "parent is a head file".into(),
            });
        }
    }
    // Loops: walk up from every node until a node already known to reach a root; a node seen twice
    // on the current walk is on a cycle. Linear in the number of nodes. Each cycle is reported once,
    // naming the record of its smallest member.
    let mut settled: BTreeSet<&str> = BTreeSet::new();
    for start in scan.metas.keys() {
        let mut path: Vec<&str> = Vec::new();
        let mut on_path: BTreeMap<&str, usize> = BTreeMap::new();
        let mut cur = start.as_str();
        while let Some(meta) = scan.metas.get(cur) {
            if settled.contains(cur) {
                break;
            }
            if let Some(&pos) = on_path.get(cur) {
                let member = path[pos..].iter().min().copied().unwrap_or(cur);
                out.push(Problem {
                    file: dir.join(names::meta_file(member)),
                    message: format!("snapshot chain has a loop: {}", path[pos..].join(" -> ")),
                });
                break;
            }
            on_path.insert(cur, path.len());
            path.push(cur);
            if meta.parent.is_empty() {
                break;
            }
            cur = &meta.parent;
        }
        settled.extend(path);
    }
    if let Some(head_meta) = scan.metas.get(head) {
        if head_meta.parent != scan.volume.parent {
            out.push(Problem {
                file: dir.join(volume_meta::FILE_NAME),
                message: format!(
                    "Parent {:?} differs from the head's record Parent {:?}",
                    scan.volume.parent, head_meta.parent
                ),
            });
        }
    }
    if scan.volume.size % crate::BLOCK_SIZE as i64 != 0 {
        out.push(Problem {
            file: dir.join(volume_meta::FILE_NAME),
            message: format!("Size {} is not a multiple of 4096", scan.volume.size),
        });
    }
    if scan.imgs.contains(head) {
        let p = dir.join(head);
        match std::fs::metadata(&p) {
            Ok(md) if md.len() != scan.volume.size_bytes() => out.push(Problem {
                file: p,
                message: format!("head size {} differs from volume size {}", md.len(), scan.volume.size),
            }),
            Ok(_) => {}
            Err(e) => out.push(Problem { file: p, message: format!("cannot stat: {e}") }),
        }
    }
    for img in scan.imgs.iter().filter(|i| *i != head) {
        let p = dir.join(img);
        if let Ok(md) = std::fs::metadata(&p) {
            if md.len() > scan.volume.size_bytes() {
                out.push(Problem {
                    file: p,
                    message: format!("layer size {} exceeds volume size {}", md.len(), scan.volume.size),
                });
            }
        }
    }
    out
}

/// Builds the tree of a scan that has no problems (the first problem becomes the error).
pub(crate) fn tree(scan: &DirScan) -> Result<Tree> {
    let mut problems = problems(scan);
    // Parent mismatch between volume.meta and the head's record is reported by `check` but does not stop
    // an open: the head's record is authoritative, as in Longhorn.
    problems.retain(|p| !p.message.contains("differs from the head's record"));
    if let Some(p) = problems.into_iter().next() {
        return Err(ReplicaError::corrupt("open", &p.file, p.message));
    }
    Ok(Tree { head: scan.volume.head.clone(), nodes: scan.metas.clone() })
}

/// Rolls forward an interrupted operation recorded in `corral-state.json` and deletes leftovers.
/// Returns true if anything changed (the caller then scans again).
pub(crate) fn repair(scan: &DirScan) -> Result<bool> {
    let dir = &scan.dir;
    let mut changed = false;
    if let Some(op) = &scan.state.pending {
        match op {
            PendingOp::Coalesce { removed, child } => {
                let removed_files: BTreeSet<String> =
                    removed.iter().map(|r| names::snapshot_file(r)).collect();
                let child_file = names::snapshot_file(child);
                let committed =
                    scan.metas.get(&child_file).is_some_and(|m| !removed_files.contains(&m.parent));
                if committed {
                    for f in &removed_files {
                        fsutil::remove_if_exists(&dir.join(names::meta_file(f)))?;
                    }
                    for f in &removed_files {
                        fsutil::remove_if_exists(&dir.join(f))?;
                    }
                    fsutil::fsync_dir(dir)?;
                }
            }
            PendingOp::FinishRebuild { chain } => {
                apply_chain(dir, &scan.volume, &scan.metas, chain)?;
            }
        }
        let state = CorralState { pending: None, ..scan.state.clone() };
        fsutil::atomic_write(dir, crate::format::corral_state::FILE_NAME, &state.to_bytes(), 0o644)?;
        changed = true;
    }
    if !scan.leftovers.is_empty() {
        for name in &scan.leftovers {
            fsutil::remove_if_exists(&dir.join(name))?;
        }
        fsutil::fsync_dir(dir)?;
        changed = true;
    }
    Ok(changed)
}

/// Makes the snapshot chain under the head exactly `chain` (root first) and deletes every other
/// snapshot. Idempotent: used by `finish_rebuild` and by open to roll an interrupted one forward.
pub(crate) fn apply_chain(
    dir: &Path,
    volume: &VolumeMeta,
    metas: &BTreeMap<String, DiskMeta>,
    chain: &[ChainEntry],
) -> Result<()> {
    apply_chain_with(dir, volume, metas, chain, &mut |_| Ok(()))
}

/// [`apply_chain`] with a hook called after each step (for failpoints).
pub(crate) fn apply_chain_with(
    dir: &Path,
    volume: &VolumeMeta,
    metas: &BTreeMap<String, DiskMeta>,
    chain: &[ChainEntry],
    step: &mut dyn FnMut(&'static str) -> Result<()>,
) -> Result<()> {
    let mut parent = String::new();
    for entry in chain {
        let file = names::snapshot_file(&entry.name);
        let old = metas.get(&file).cloned().unwrap_or_default();
        let new = DiskMeta {
            name: if old.name.is_empty() { file.clone() } else { old.name.clone() },
            parent: parent.clone(),
            removed: entry.removed,
            user_created: entry.user_created,
            created: entry.created.clone(),
            labels: entry.labels.clone(),
        };
        if metas.get(&file) != Some(&new) {
            fsutil::atomic_write(dir, &names::meta_file(&file), &new.to_bytes(), 0o644)?;
        }
        step("finish_rebuild.after_meta")?;
        parent = file;
    }
    let head = &volume.head;
    let head_meta = metas.get(head).cloned().unwrap_or_default();
    if head_meta.parent != parent {
        let new = DiskMeta { parent: parent.clone(), ..head_meta };
        fsutil::atomic_write(dir, &names::meta_file(head), &new.to_bytes(), 0o644)?;
    }
    if volume.parent != parent {
        let new = VolumeMeta { parent: parent.clone(), ..volume.clone() };
        fsutil::atomic_write(dir, volume_meta::FILE_NAME, &new.to_bytes(), 0o644)?;
    }
    step("finish_rebuild.after_head")?;
    let keep: BTreeSet<String> = chain.iter().map(|e| names::snapshot_file(&e.name)).collect();
    for file in metas.keys().filter(|f| names::snapshot_name_of_file(f).is_some() && !keep.contains(*f)) {
        fsutil::remove_if_exists(&dir.join(names::meta_file(file)))?;
        fsutil::remove_if_exists(&dir.join(file))?;
    }
    fsutil::fsync_dir(dir)?;
    step("finish_rebuild.after_delete")?;
    Ok(())
}
