//! `volume.meta` parser: never panics; whatever parses re-encodes to bytes that parse to the same value.
#![no_main]
use corral_replica::format::volume_meta::VolumeMeta;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("volume.meta");
    if let Ok(meta) = VolumeMeta::parse(data, path) {
        let again = VolumeMeta::parse(&meta.to_bytes(), path);
        assert_eq!(again.ok(), Some(meta));
    }
});
