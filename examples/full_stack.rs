//! Placeholder: replaced by the whole-stack example.
fn main() {}
