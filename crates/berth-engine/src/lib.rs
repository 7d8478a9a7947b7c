//! berth snapshot engine.
