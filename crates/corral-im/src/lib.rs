//! corral-im (being written).
