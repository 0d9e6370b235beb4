//! Carillon's chaos harness: a seeded deterministic cluster simulator and a process-level
//! fault injector, both checking DESIGN.md's invariants.
//!
//! Not built yet (issue 6).
