//! `corral-state.json` parser: never panics; whatever parses re-encodes to the same value.
#![no_main]
use corral_replica::format::corral_state::CorralState;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("corral-state.json");
    if let Ok(state) = CorralState::parse(data, path) {
        assert_eq!(CorralState::parse(&state.to_bytes(), path).ok(), Some(state));
    }
});
