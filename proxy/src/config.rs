//! Configuration: `proxy.toml` → [`Config`]. (skeleton: being written)

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {}
