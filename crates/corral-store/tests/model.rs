//! Property test: random operation sequences on the redb backend agree with a plain in-memory
//! model (a map from key to value and the version last returned), including across reopens.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod support;

use std::sync::Arc;

use corral_store::{RedbStore, Store};
use futures::FutureExt;
use proptest::prelude::*;
use support::model::{check_against_model, op};

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn redb_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.redb");
        let open = || {
            let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path).unwrap());
            futures::future::ready(store).boxed()
        };
        rt.block_on(check_against_model(open, ops))?;
    }
}
