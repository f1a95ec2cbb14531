//! The lexical checks every resource kind shares: names (DNS labels), HTTP
//! tokens and methods, paths. A leaf: matching, resilience and validation
//! all use it, and it uses none of them.

use super::Reason;

/// (field path, reason)
pub(super) type Invalid = (String, Reason);

/// Longest resource name (a DNS label).
pub const MAX_NAME_LEN: usize = 63;

/// Why a name is not a DNS label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty; a name is a DNS label such as `api` or `api-v2`")]
    Empty,
    #[error("{len} characters; at most {MAX_NAME_LEN}")]
    TooLong { len: usize },
    #[error("{name:?} is not a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit")]
    NotDnsLabel { name: String },
}

/// A number or duration out of its range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RangeError {
    /// A count that must be at least 1.
    #[error("must be at least 1")]
    Zero,
    /// A duration that must be greater than 0.
    #[error("must be greater than 0")]
    ZeroDuration,
    #[error("{0} is not a percentage (0..=100)")]
    NotPercent(f64),
}

/// A DNS label: `[a-z0-9]([a-z0-9-]*[a-z0-9])?`, at most 63 characters.
pub(super) fn check_name(name: &str) -> Result<(), NameError> {
    let b = name.as_bytes();
    let ok_char = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
    if b.is_empty() {
        return Err(NameError::Empty);
    }
    if b.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { len: b.len() });
    }
    if !b.iter().all(ok_char) || b[0] == b'-' || b[b.len() - 1] == b'-' {
        return Err(NameError::NotDnsLabel {
            name: name.to_string(),
        });
    }
    Ok(())
}

/// A duration greater than 0.
pub(super) fn check_positive(d: std::time::Duration) -> Result<(), RangeError> {
    if d.is_zero() {
        return Err(RangeError::ZeroDuration);
    }
    Ok(())
}

pub(super) fn check_paths(
    path: &Option<String>,
    path_prefix: &Option<String>,
) -> Result<(), Invalid> {
    for (field, path) in [("path", path), ("pathPrefix", path_prefix)] {
        if let Some(p) = path {
            if !p.starts_with('/') {
                return Err((field.into(), format!("{p:?} must start with '/'").into()));
            }
            if p.bytes().any(|c| c.is_ascii_control() || c == b' ') {
                return Err((
                    field.into(),
                    format!("{p:?} contains a space or control character").into(),
                ));
            }
        }
    }
    Ok(())
}

pub(super) fn check_methods(methods: &[String]) -> Result<(), Invalid> {
    for (j, method) in methods.iter().enumerate() {
        if !is_token(method) || method.bytes().any(|c| c.is_ascii_lowercase()) {
            return Err((
                format!("methods[{j}]"),
                format!("{method:?} is not an uppercase method such as GET or POST").into(),
            ));
        }
    }
    Ok(())
}

/// An HTTP token (RFC 9110 section 5.6.2): one or more `tchar`.
pub(super) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}
