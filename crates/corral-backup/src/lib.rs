//! corral-backup (being written).
