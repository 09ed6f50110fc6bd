//! redlayer-cache: being built.
