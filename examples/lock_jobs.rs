//! Placeholder: replaced when its crate lands.
fn main() {}
