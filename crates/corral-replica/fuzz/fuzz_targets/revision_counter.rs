//! `revision.counter` parser: never panics; whatever parses re-encodes to the same value.
#![no_main]
use corral_replica::format::revision_counter;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("revision.counter");
    if let Ok(v) = revision_counter::parse(data, path) {
        assert_eq!(revision_counter::parse(&revision_counter::encode(v), path).ok(), Some(v));
    }
});
