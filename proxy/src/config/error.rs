//! [`ConfigError`]: one line that names the file, the key and the reason.

use std::fmt;
use std::path::Path;

/// What kind of mistake a [`ConfigError`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// The file could not be read.
    Io,
    /// The file is not valid TOML, has a key this proxy does not know, or a value
    /// of the wrong TOML type. The message carries `line:column`.
    Syntax,
    /// A value is well-formed TOML but not acceptable (bad address, duration,
    /// range, duplicate, missing required key...).
    Invalid,
    /// [`Config::check_reload`](super::Config::check_reload): the new file changes
    /// a key that only takes effect on restart.
    NeedsRestart,
}

/// A configuration error, always the operator's to fix: the file is wrong, not
/// the proxy. `Display` is the complete one-line message, e.g.
/// `proxy.toml: [inbound] listen: "0.0.0.0:99999" is not a socket address`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    kind: ConfigErrorKind,
    message: String,
}

impl ConfigError {
    /// What kind of mistake this is.
    pub fn kind(&self) -> ConfigErrorKind {
        self.kind
    }

    pub(crate) fn io(path: &Path, err: &std::io::Error) -> Self {
        Self {
            kind: ConfigErrorKind::Io,
            message: format!("{}: cannot read: {err}", path.display()),
        }
    }

    /// A TOML error (syntax, unknown key, wrong type), located by `line:column`
    /// computed from the span the parser reports.
    pub(crate) fn toml(path: &Path, text: &str, err: &toml::de::Error) -> Self {
        // The parser's messages can span several lines; the first is the reason.
        let reason = err.message().trim().replace('\n', "; ");
        let message = match err
            .span()
            .map(|span| (line_col(text, span.start), span.start))
        {
            Some(((line, col), at)) => match key_at(text, at) {
                Some(key) => format!("{}:{line}:{col}: {key}: {reason}", path.display()),
                None => format!("{}:{line}:{col}: {reason}", path.display()),
            },
            None => format!("{}: {reason}", path.display()),
        };
        Self {
            kind: ConfigErrorKind::Syntax,
            message,
        }
    }

    /// `<file>: <place> <key>: <reason>`, where `place` is `[proxy]`,
    /// `[[services]] #2`... and `key` may be empty for whole-section problems.
    pub(crate) fn invalid(path: &Path, place: &str, key: &str, reason: impl fmt::Display) -> Self {
        Self {
            kind: ConfigErrorKind::Invalid,
            message: located(path, place, key, reason),
        }
    }

    pub(crate) fn needs_restart(
        path: &Path,
        place: &str,
        key: &str,
        reason: impl fmt::Display,
    ) -> Self {
        Self {
            kind: ConfigErrorKind::NeedsRestart,
            message: located(path, place, key, reason),
        }
    }
}

fn located(path: &Path, place: &str, key: &str, reason: impl fmt::Display) -> String {
    match (place.is_empty(), key.is_empty()) {
        (true, _) => format!("{}: {reason}", path.display()),
        (false, true) => format!("{}: {place}: {reason}", path.display()),
        (false, false) => format!("{}: {place} {key}: {reason}", path.display()),
    }
}

/// `[section] key` for the line holding byte `offset`: the nearest table
/// header above it and the key before `=` on that line, so a type error names
/// the key as well as its position.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = &text[line_start..line_end];
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && !k.starts_with('['))?;
    let section = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.split('#').next().unwrap_or(l).trim().to_string());
    Some(match section {
        Some(s) => format!("{s} {key}"),
        None => key.to_string(),
    })
}

/// 1-based line and column (in characters, as editors count) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests;
