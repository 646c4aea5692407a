//! corral-bench (being written).
