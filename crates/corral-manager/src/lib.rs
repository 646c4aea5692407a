//! corral-manager (being written).
