//! The gRPC API's generated types, servers and clients (from `ops/proto`), and the
//! descriptor set the server's reflection service publishes.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod v1 {
    tonic::include_proto!("carillon.v1");
}

/// The encoded `FileDescriptorSet` of every Carillon proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/carillon_descriptor.bin"));
