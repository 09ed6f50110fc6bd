//! redlayer-idempotency: being built.
