//! The proxy's I/O error: a policy [`ErrorKind`] with the socket error that
//! caused it.

use std::fmt;
use std::io;

pub(crate) use coremesh_policy::error::{Answer, Blame, ErrorKind};

/// An error with its kind and, where there is one, the I/O cause.
#[derive(Debug)]
pub struct ProxyError {
    pub kind: ErrorKind,
    pub cause: Option<io::Error>,
    pub context: &'static str,
}

impl ProxyError {
    pub fn new(kind: ErrorKind, context: &'static str) -> Self {
        ProxyError {
            kind,
            cause: None,
            context,
        }
    }

    pub fn io(kind: ErrorKind, context: &'static str, cause: io::Error) -> Self {
        ProxyError {
            kind,
            cause: Some(cause),
            context,
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.kind.text(), self.context)?;
        if let Some(c) = &self.cause {
            write!(f, ": {c}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_ref().map(|e| e as _)
    }
}
