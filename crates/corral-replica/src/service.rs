//! Serves a replica over the data protocol (being written).
