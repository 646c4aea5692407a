//! Writes whose reply is lost: a proxy in front of etcd forwards a write but swallows etcd's
//! answer, so the client times out and sends the write again to another member. etcd applied the
//! first attempt, so the retry's comparison fails; the store must still report the write as done
//! (found by the write id in the key's history), not as a conflict, an existing name or a missing
//! record, which would make a caller apply its change twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use corral_store::{ErrorKind, EtcdStore, Kind, Store};
use corral_testkit::etcd::EtcdCluster;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy to `target` that, while `swallow` is set, drops everything the server sends.
async fn start_proxy(target: String, swallow: Arc<AtomicBool>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(&target).await else { continue };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            tokio::spawn(async move { tokio::io::copy(&mut client_read, &mut server_write).await });
            let swallow = swallow.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = match server_read.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if !swallow.load(Ordering::SeqCst) && client_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    address
}

#[test]
fn a_write_whose_reply_was_lost_is_reported_done_once() {
    let etcd = EtcdCluster::start(3);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let swallow = Arc::new(AtomicBool::new(false));
        let proxy = start_proxy(etcd.endpoint(0), swallow.clone()).await;
        // The proxy is the first endpoint; member 1 is where the retry goes.
        let url = format!("etcd://{proxy},{}", etcd.endpoint(1));
        let observer = EtcdStore::connect(&etcd.url_of(&[2]), "lost-reply").await.unwrap();
        let fresh_client = || async {
            swallow.store(false, Ordering::SeqCst);
            let store = EtcdStore::connect(&url, "lost-reply").await.unwrap();
            store
        };

        // update
        let store = fresh_client().await;
        let v = store.create(Kind::Volume, "v", json!(1)).await.unwrap();
        swallow.store(true, Ordering::SeqCst);
        let started = Instant::now();
        let updated = store.update(Kind::Volume, "v", &v.version, json!(2)).await.unwrap();
        eprintln!("update settled after {:?}", started.elapsed());
        assert_eq!(observer.get(Kind::Volume, "v").await.unwrap(), updated, "applied once, as reported");

        // create
        let store = fresh_client().await;
        swallow.store(true, Ordering::SeqCst);
        let created = store.create(Kind::Volume, "w", json!("w")).await.unwrap();
        assert_eq!(observer.get(Kind::Volume, "w").await.unwrap(), created);

        // delete with a version
        let store = fresh_client().await;
        swallow.store(true, Ordering::SeqCst);
        store.delete(Kind::Volume, "v", Some(&updated.version)).await.unwrap();
        assert_eq!(observer.get(Kind::Volume, "v").await.unwrap_err().kind(), ErrorKind::NotFound);

        // A genuinely stale write through the same path is still a conflict.
        let store = fresh_client().await;
        let w2 = observer.update(Kind::Volume, "w", &created.version, json!("w2")).await.unwrap();
        swallow.store(true, Ordering::SeqCst);
        let stale = store.update(Kind::Volume, "w", &created.version, json!("w3")).await.unwrap_err();
        assert_eq!(stale.kind(), ErrorKind::Conflict, "{stale}");
        assert_eq!(observer.get(Kind::Volume, "w").await.unwrap(), w2);
    });
}
