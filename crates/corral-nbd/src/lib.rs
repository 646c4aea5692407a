//! corral-nbd (being written).
