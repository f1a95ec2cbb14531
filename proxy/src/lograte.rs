//! Warnings that can repeat once per connection or request (accept failures
//! at the descriptor limit, a peer whose TLS fails, an app that is down) are
//! logged at most once per [`INTERVAL`] per call site and thread, with the
//! number of occurrences left out since the site's previous line. A fault
//! that lasts an hour costs 720 lines, not millions, and still shows how
//! often it happened.
//!
//! The state is per thread (a `thread_local!` per call site), so shards share
//! nothing; it is touched only on the error paths.

use std::time::{Duration, Instant};

/// One line per call site and thread per this interval.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// The decision of one call site: sans-I/O, `now` comes from the caller.
#[derive(Debug, Clone)]
pub struct LogRate {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogRate {
    pub const fn new(every: Duration) -> LogRate {
        LogRate {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// One occurrence at `now`: `Some(n)` to log it, `n` being the
    /// occurrences left unlogged since the previous line; `None` to stay
    /// quiet (it is counted).
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// `tracing::event!` at `$level`, at most once per [`INTERVAL`] per call
/// site and thread; the line carries `suppressed = N`, the occurrences left
/// out since the previous one.
macro_rules! log_limited {
    ($level:expr, $($arg:tt)+) => {{
        ::std::thread_local! {
            static RATE: ::std::cell::RefCell<$crate::lograte::LogRate> =
                const { ::std::cell::RefCell::new($crate::lograte::LogRate::new($crate::lograte::INTERVAL)) };
        }
        if let Some(suppressed) = RATE.with(|r| r.borrow_mut().hit(::std::time::Instant::now())) {
            ::tracing::event!($level, suppressed, $($arg)+);
        }
    }};
}
pub(crate) use log_limited;

#[cfg(test)]
mod tests;
