//! The roster rules (pure).
