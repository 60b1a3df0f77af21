//! GPU telemetry sampler (placeholder; being built).
