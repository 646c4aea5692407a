//! The `BlockDevice` conformance suite on a remote replica: a real `corral_replica::Replica` on a temp
//! dir, served by the real server loop, driven through `ReplicaClient` over TCP and a unix socket.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use corral_block::conformance::run_all;
use corral_block::{BlockDevice, BlockError};
use corral_replica::service::ServedReplica;
use corral_replica::{CreateOptions, Replica};
use corral_wire::{Address, Bytes, ErrorKind, Listener, ReplicaClient, ServeOptions, WireError};

const SIZE: u64 = 4 << 20;

/// A synchronous `BlockDevice` over the async client: each call blocks on the test's runtime.
struct RemoteDisk {
    client: ReplicaClient,
    runtime: tokio::runtime::Handle,
    size: u64,
}

impl RemoteDisk {
    fn call<T>(
        &self,
        op: &'static str,
        offset: u64,
        len: u64,
        call: impl std::future::Future<Output = corral_wire::Result<T>>,
    ) -> Result<T, BlockError> {
        self.runtime.block_on(call).map_err(|err: WireError| match err.kind() {
            ErrorKind::OutOfRange => BlockError::OutOfRange { op, offset, len, size: self.size },
            _ => BlockError::Io { op, offset, source: std::io::Error::other(err) },
        })
    }
}

impl BlockDevice for RemoteDisk {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        let data = self.call("read", offset, buf.len() as u64, self.client.read(offset, buf.len() as u64))?;
        buf.copy_from_slice(&data);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        let data = Bytes::copy_from_slice(buf);
        self.call("write", offset, buf.len() as u64, self.client.write(offset, data))
    }
    fn unmap(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.call("unmap", offset, len, self.client.unmap(offset, len))
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.call("write-zeroes", offset, len, self.client.write_zeroes(offset, len))
    }
    fn flush(&self) -> Result<(), BlockError> {
        self.call("flush", 0, 0, self.client.flush())
    }
}

fn remote_replica_passes_the_suite(address: &str) {
    let dir = tempfile::tempdir().unwrap();
    let replica = Replica::create(&dir.path().join("r"), CreateOptions { size: SIZE }).unwrap();
    let served = Arc::new(ServedReplica::new(replica));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let address = address.replace("DIR", &dir.path().display().to_string());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (bound, server) = runtime.block_on(async {
        let listener = Listener::bind(&Address::parse(&address).unwrap()).await.unwrap();
        let bound = listener.local_address().unwrap().to_string();
        let options = ServeOptions { workers: 2, ..ServeOptions::default() };
        let server = tokio::spawn(corral_wire::serve_with(listener, served.clone(), options, async move {
            let _ = stopped.await;
        }));
        (bound, server)
    });
    let client = runtime.block_on(async {
        let client = ReplicaClient::connect(&bound, 2).await.unwrap();
        assert_eq!(client.hello("conformance", false).await.unwrap().size, SIZE);
        client
    });
    let disk = RemoteDisk { client, runtime: runtime.handle().clone(), size: SIZE };
    run_all(&disk).unwrap_or_else(|e| panic!("remote replica at {bound}: {e}"));
    // What the suite left must be on the replica itself, not only in what the client saw.
    let mut through_wire = vec![0u8; SIZE as usize];
    disk.read_at(&mut through_wire, 0).unwrap();
    let mut on_disk = vec![0u8; SIZE as usize];
    served.replica().read_at(&mut on_disk, 0).unwrap();
    assert!(through_wire == on_disk, "the replica's own bytes differ from what the wire returned");
    drop(disk);
    let _ = stop.send(());
    runtime.block_on(server).unwrap().unwrap();
    Arc::try_unwrap(served).ok().unwrap().into_replica().close().unwrap();
}

#[test]
fn a_remote_replica_over_tcp_passes_the_block_device_suite() {
    remote_replica_passes_the_suite("tcp://127.0.0.1:0");
}

#[test]
fn a_remote_replica_over_a_unix_socket_passes_the_block_device_suite() {
    remote_replica_passes_the_suite("unix://DIR/replica.sock");
}
