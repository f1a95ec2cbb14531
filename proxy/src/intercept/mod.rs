//! Transparent interception with nftables: the ruleset that sends an app's
//! connections to its proxy without the app knowing, and the original
//! destination of a connection that was sent here that way.
//!
//! ```text
//!  app ──connect 10.0.0.3:8080──▶ nft output: redirect ──▶ [outbound] listen
//!        proxy: SO_ORIGINAL_DST = 10.0.0.3:8080 ──▶ service api (its `port`, an endpoint's host)
//!  peer host ──10.0.0.3:8080──▶ nft prerouting: redirect ──▶ [inbound] listen (mutual TLS, policy)
//! ```
//!
//! The ruleset lives in its own table, `inet coremesh`, so applying it
//! replaces only what an earlier apply put there, and removing it restores
//! direct traffic exactly. The proxy's own connections carry a socket mark
//! (SO_MARK, `[intercept] mark`) that the ruleset lets through, or they
//! would come back to the proxy.

mod nft;
mod origdst;
#[cfg(test)]
mod tests;

pub use nft::{apply, remove, ruleset, InterceptError, TABLE};
pub use origdst::original_dst;

/// What `coremesh-proxy --intercept` does with the ruleset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Print it on stdout.
    Print,
    /// Install it with `nft -f -` (replacing an earlier one).
    Apply,
    /// Delete the table (nothing if there is none).
    Remove,
}

/// Runs `action` for `cfg`; the text to print on stdout, if any.
pub fn run(cfg: &crate::config::Config, action: Action) -> Result<String, InterceptError> {
    match action {
        Action::Print => ruleset(cfg),
        Action::Apply => {
            let rules = ruleset(cfg)?;
            apply(&rules)?;
            Ok(String::new())
        }
        Action::Remove => {
            remove()?;
            Ok(String::new())
        }
    }
}
