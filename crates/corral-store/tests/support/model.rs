//! The model check shared by the backends' property tests: random operation sequences agree with a
//! plain in-memory model (a map from key to value and the version last returned), including across
//! reopens of the store.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]
use std::collections::BTreeMap;
use std::sync::Arc;

use corral_store::{ErrorKind, Kind, ResourceVersion, Store};
use futures::future::BoxFuture;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::json;

#[derive(Debug, Clone)]
pub enum Op {
    Create(Kind, u8, u32),
    /// Update with the current version (`true`) or a stale/bogus one (`false`).
    Update(Kind, u8, u32, bool),
    Delete(Kind, u8, Option<bool>),
    Get(Kind, u8),
    List(Kind),
    Reopen,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![Just(Kind::Volume), Just(Kind::Replica), Just(Kind::Setting)]
}

pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (kind(), 0u8..6, any::<u32>()).prop_map(|(k, n, v)| Op::Create(k, n, v)),
        4 => (kind(), 0u8..6, any::<u32>(), any::<bool>()).prop_map(|(k, n, v, f)| Op::Update(k, n, v, f)),
        2 => (kind(), 0u8..6, proptest::option::of(any::<bool>())).prop_map(|(k, n, f)| Op::Delete(k, n, f)),
        2 => (kind(), 0u8..6).prop_map(|(k, n)| Op::Get(k, n)),
        1 => kind().prop_map(Op::List),
        1 => Just(Op::Reopen),
    ]
}

/// Runs `ops` against the store `open` gives (called again for every `Reopen`: it must open the same
/// underlying data) and against the model; fails the case at the first disagreement.
pub async fn check_against_model(
    mut open: impl FnMut() -> BoxFuture<'static, Arc<dyn Store>>,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let mut store: Arc<dyn Store> = open().await;
    // key -> (value, version the store returned for it)
    let mut model: BTreeMap<(Kind, String), (serde_json::Value, ResourceVersion)> = BTreeMap::new();
    // every version ever returned, to build stale versions
    let mut old_versions: Vec<ResourceVersion> = vec![ResourceVersion("0".into())];
    for op in ops {
        match op {
            Op::Create(k, n, v) => {
                let name = format!("r{n}");
                let res = store.create(k, &name, json!(v)).await;
                match model.get(&(k, name.clone())) {
                    Some(_) => prop_assert_eq!(res.unwrap_err().kind(), ErrorKind::AlreadyExists),
                    None => {
                        let rec = res.unwrap();
                        prop_assert!(!old_versions.contains(&rec.version), "version reused");
                        old_versions.push(rec.version.clone());
                        model.insert((k, name), (json!(v), rec.version));
                    }
                }
            }
            Op::Update(k, n, v, fresh) => {
                let name = format!("r{n}");
                let cur = model.get(&(k, name.clone())).cloned();
                let version = match (&cur, fresh) {
                    (Some((_, ver)), true) => ver.clone(),
                    _ => old_versions[(v as usize) % old_versions.len()].clone(),
                };
                let res = store.update(k, &name, &version, json!(v)).await;
                match cur {
                    None => prop_assert_eq!(res.unwrap_err().kind(), ErrorKind::NotFound),
                    Some((_, ver)) if ver == version => {
                        let rec = res.unwrap();
                        prop_assert!(!old_versions.contains(&rec.version), "version reused");
                        old_versions.push(rec.version.clone());
                        model.insert((k, name), (json!(v), rec.version));
                    }
                    Some(_) => prop_assert_eq!(res.unwrap_err().kind(), ErrorKind::Conflict),
                }
            }
            Op::Delete(k, n, check) => {
                let name = format!("r{n}");
                let cur = model.get(&(k, name.clone())).cloned();
                let version = match (&cur, check) {
                    (_, None) => None,
                    (Some((_, ver)), Some(true)) => Some(ver.clone()),
                    (_, Some(_)) => Some(old_versions[n as usize % old_versions.len()].clone()),
                };
                let res = store.delete(k, &name, version.as_ref()).await;
                match cur {
                    None => prop_assert_eq!(res.unwrap_err().kind(), ErrorKind::NotFound),
                    Some((_, ver)) if version.as_ref().is_none_or(|v| *v == ver) => {
                        res.unwrap();
                        model.remove(&(k, name));
                    }
                    Some(_) => prop_assert_eq!(res.unwrap_err().kind(), ErrorKind::Conflict),
                }
            }
            Op::Get(k, n) => {
                let name = format!("r{n}");
                let res = store.get(k, &name).await;
                match model.get(&(k, name)) {
                    None => prop_assert_eq!(res.unwrap_err().kind(), ErrorKind::NotFound),
                    Some((v, ver)) => {
                        let rec = res.unwrap();
                        prop_assert_eq!(&rec.value, v);
                        prop_assert_eq!(&rec.version, ver);
                    }
                }
            }
            Op::List(k) => {
                let got: Vec<_> =
                    store.list(k).await.unwrap().into_iter().map(|r| (r.name, r.value, r.version)).collect();
                let want: Vec<_> = model
                    .iter()
                    .filter(|((mk, _), _)| *mk == k)
                    .map(|((_, n), (v, ver))| (n.clone(), v.clone(), ver.clone()))
                    .collect();
                prop_assert_eq!(got, want);
            }
            Op::Reopen => {
                drop(std::mem::replace(&mut store, Arc::new(corral_store::MemoryStore::new())));
                store = open().await;
            }
        }
    }
    Ok(())
}
