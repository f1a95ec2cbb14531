//! Durations as written in `proxy.toml`: a whole number and a unit, `ms`, `s`,
//! `m` or `h` (`"250ms"`, `"10s"`, `"2m"`). Nothing fancier: no fractions, no
//! compound forms, no spaces, so a value reads the same to everyone.

use std::time::Duration;

/// Units, longest suffix first so that `"5ms"` is not read as minutes.
const UNITS: [(&str, u64); 4] = [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)];

/// Parses `"<digits><unit>"`. The error is the reason, to be prefixed with the
/// key and value by the caller.
pub(crate) fn parse(text: &str) -> Result<Duration, &'static str> {
    const SYNTAX: &str = "is not a duration (a whole number and a unit: ms, s, m or h, e.g. \"250ms\", \"10s\", \"2m\")";
    let (digits, millis_per_unit) = UNITS
        .iter()
        .find_map(|&(unit, ms)| text.strip_suffix(unit).map(|digits| (digits, ms)))
        .ok_or(SYNTAX)?;
    // `u64::from_str` would also take a leading `+`; only plain digits are a number here.
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SYNTAX);
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(millis_per_unit))
        .map(Duration::from_millis)
        .ok_or("is too large")
}

/// Formats a duration with the largest unit that divides it exactly, so that
/// what `/config` shows can be pasted back into `proxy.toml`. Sub-millisecond
/// parts (which the file cannot express) are dropped.
pub(crate) fn format(d: Duration) -> String {
    let millis = d.as_millis();
    if millis == 0 {
        return "0s".to_owned();
    }
    let (unit, per) = UNITS
        .iter()
        .rev()
        .map(|&(unit, per)| (unit, u128::from(per)))
        // Not `is_multiple_of`: that needs Rust 1.87, the workspace says 1.80.
        .find(|&(_, per)| millis / per * per == millis)
        .unwrap_or(("ms", 1));
    format!("{}{unit}", millis / per)
}

#[cfg(test)]
mod tests;
