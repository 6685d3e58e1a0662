//! Pure NetworkPolicy engine (placeholder, being written).
