//! Carillon's operations surface: call records (CDRs) and their store, the gRPC API's
//! definition (`proto/`, generated in [`api`]), its token authentication ([`auth`]) and
//! the audit log of refused and sensitive actions ([`audit`]).
//!
//! Records are written by the node that owns a call and read by `carillon ctl` and reports.
//! The store sits behind [`records::RecordStore`] so a scale-out backend can replace the
//! embedded redb one without touching callers. Serving the API over the node's state is
//! the node's job (`carillon::grpc`); this crate holds what a client needs too.

pub mod api;
pub mod audit;
pub mod auth;
pub mod records;
