//! Configuration: `proxy.toml` → [`Config`]. (skeleton, being written)
