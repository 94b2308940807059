//! The storage conformance suite (to be written).
