//! Types and client stubs generated from `proto/` (the subset of etcd's v3 gRPC API corral-store
//! calls) by `build.rs`.
//!
//! The generated `etcdserverpb` refers to its import as `super::mvccpb`, so the two packages are
//! sibling modules here.
#![allow(clippy::all, missing_docs, dead_code)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
