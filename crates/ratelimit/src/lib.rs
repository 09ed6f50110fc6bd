//! redlayer-ratelimit: being built.
