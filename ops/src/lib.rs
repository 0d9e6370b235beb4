//! Carillon's operations surface: call records (CDRs) and their store, and later the metrics,
//! reports and API surfaces.
//!
//! Records are written by the node that owns a call and read by `carillon ctl` and reports.
//! The store sits behind [`records::RecordStore`] so a scale-out backend can replace the
//! embedded redb one without touching callers.

pub mod records;
