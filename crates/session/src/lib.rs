//! redlayer-session: being built.
