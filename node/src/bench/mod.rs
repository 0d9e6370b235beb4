//! `carillon bench`: benchmarks that drive a real node process from outside and print
//! figures (`bench: NAME VALUE UNIT` lines). They measure; they never pass or fail on
//! speed (STYLE.md 9). Each kills every process it started and is bounded in time.

pub mod cluster;
pub mod media;
pub mod routing;
pub mod sip;
