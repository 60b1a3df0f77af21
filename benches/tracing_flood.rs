//! Placeholder: filled in once the layer, sink and tests are done.
fn main() {}
