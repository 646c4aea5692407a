//! corral-store (being written).
