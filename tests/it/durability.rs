//! Integration tests: durability.
