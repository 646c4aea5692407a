//! Disk `.meta` parser: never panics; whatever parses re-encodes to bytes that parse to the same value.
#![no_main]
use corral_replica::format::disk_meta::DiskMeta;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("volume-snap-x.img.meta");
    if let Ok(meta) = DiskMeta::parse(data, path) {
        let again = DiskMeta::parse(&meta.to_bytes(), path);
        assert_eq!(again.ok(), Some(meta));
    }
});
