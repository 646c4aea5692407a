//! corral-wire (being written).
