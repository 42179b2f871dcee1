//! Integration tests: delivery.
