//! Links between regional Carillon clusters: capacity summaries, inter-region overflow,
//! the national directory and report roll-up.
//!
//! Not built yet: no federation link exists, and nothing in a node refers to this crate.
