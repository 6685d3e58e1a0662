//! Network-namespace cluster harness (placeholder, being written).
