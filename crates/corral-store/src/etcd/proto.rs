//! Types and client stubs generated from `proto/` (etcd's v3 gRPC API) by `build.rs`.
//!
//! The generated `etcdserverpb` refers to its imports as `super::mvccpb` and `super::authpb`, so the
//! three packages are sibling modules here.
#![allow(clippy::all, missing_docs, dead_code)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod authpb {
    tonic::include_proto!("authpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
