//! Integration tests for Carillon: real node processes driven by SIPp; see `tests/it/`.
