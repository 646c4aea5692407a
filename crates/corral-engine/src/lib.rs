//! corral-engine (being written).
