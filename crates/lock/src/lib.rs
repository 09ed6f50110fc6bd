//! redlayer-lock: being built.
