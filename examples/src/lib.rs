//! Runnable examples live in this package; run one with `cargo run --example NAME`.
