//! The `BlockDevice` conformance suite on the engine: its volume I/O (replicated fan-out, reads
//! rotating over replicas) over three real replicas behind the real wire server. Afterwards every
//! replica must hold exactly what the engine returns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use corral_block::conformance::run_all;
use corral_block::{BlockDevice, BlockError};
use corral_engine::{Engine, EngineError, ErrorKind};
use support::{start_engine, test_config, ReplicaHost};

const SIZE: u64 = 4 << 20;

/// A synchronous `BlockDevice` over the engine: each call blocks on the test's runtime.
struct EngineDisk {
    engine: Engine,
    runtime: tokio::runtime::Handle,
}

impl EngineDisk {
    fn call<T>(
        &self,
        op: &'static str,
        offset: u64,
        len: u64,
        call: impl std::future::Future<Output = Result<T, EngineError>>,
    ) -> Result<T, BlockError> {
        self.runtime.block_on(call).map_err(|err| match err.kind() {
            ErrorKind::OutOfRange => BlockError::OutOfRange { op, offset, len, size: self.engine.size() },
            _ => BlockError::Io { op, offset, source: std::io::Error::other(err) },
        })
    }
}

impl BlockDevice for EngineDisk {
    fn size(&self) -> u64 {
        self.engine.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        let data = self.call("read", offset, buf.len() as u64, self.engine.read(offset, buf.len()))?;
        buf.copy_from_slice(&data);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        let data = bytes::Bytes::copy_from_slice(buf);
        self.call("write", offset, buf.len() as u64, self.engine.write(offset, data, false))
    }
    fn unmap(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.call("unmap", offset, len, self.engine.zero(offset, len, true, false))
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.call("write-zeroes", offset, len, self.engine.zero(offset, len, false, false))
    }
    fn flush(&self) -> Result<(), BlockError> {
        self.call("flush", 0, 0, self.engine.flush())
    }
}

#[test]
fn the_engine_over_real_replicas_passes_the_block_device_suite() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let root = tempfile::tempdir().unwrap();
    let (mut hosts, engine) = runtime.block_on(async {
        let mut hosts = Vec::new();
        for name in ["r1", "r2", "r3"] {
            hosts.push(ReplicaHost::create(root.path(), name, SIZE).await);
        }
        let addresses: Vec<String> = hosts.iter().map(|h| h.address.clone()).collect();
        let engine = start_engine(test_config("conformance", SIZE), "engine-conformance", &addresses).await;
        (hosts, engine)
    });
    let disk = EngineDisk { engine: engine.clone(), runtime: runtime.handle().clone() };
    run_all(&disk).unwrap_or_else(|e| panic!("engine: {e}"));
    assert!(
        engine.replicas().iter().all(|r| r.mode == corral_engine::Mode::ReadWrite),
        "a replica was dropped during the suite: {:?}",
        engine.replicas()
    );
    // Each replica on its own must hold what the engine returns (reads rotate, so read once per replica).
    let mut expected = vec![0u8; SIZE as usize];
    disk.read_at(&mut expected, 0).unwrap();
    drop(disk);
    drop(engine);
    runtime.block_on(async {
        for host in &mut hosts {
            host.shutdown().await;
        }
    });
    for host in &hosts {
        let replica = corral_replica::Replica::open(&host.dir).unwrap();
        let mut actual = vec![0u8; SIZE as usize];
        replica.read_at(&mut actual, 0).unwrap();
        assert!(actual == expected, "replica {} differs from the volume", host.dir.display());
        replica.close().unwrap();
    }
}
