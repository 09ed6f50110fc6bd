//! Cross-crate integration tests of redlayer live in `tests/` beside this file:
//! several instances on one Redis, Redis killed mid-traffic, hostile input.
