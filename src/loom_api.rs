//! Internals exposed to the loom models only (cfg(loom)).
