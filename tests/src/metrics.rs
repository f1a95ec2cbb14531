//! A small parser for the Prometheus text format, enough to sum samples by
//! name and labels.

use std::collections::BTreeMap;

/// One sample line: `name{labels} value`.
#[derive(Clone, Debug)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// All samples of one `/metrics` scrape.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Metrics {
    /// Parses the text format; panics (with the line) on a sample it cannot read.
    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| parse_line(l).unwrap_or_else(|| panic!("unparsable metrics line {l:?}")))
            .collect();
        Metrics {
            samples,
            text: text.to_string(),
        }
    }

    /// Samples named `name` whose labels include every `(key, value)` given.
    pub fn select<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The sum of the selected samples (0 if none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.select(name, labels).map(|s| s.value).sum()
    }

    /// Whether any sample is named `name`.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => (&line[..i], &line[i..]),
        None => return None,
    };
    let mut labels = BTreeMap::new();
    let rest = if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let mut end = None;
        loop {
            // key
            while chars.peek().is_some_and(|(_, c)| *c == ',' || *c == ' ') {
                chars.next();
            }
            match chars.peek() {
                Some((i, '}')) => {
                    end = Some(*i);
                    break;
                }
                None => break,
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return None;
            }
            let mut val = String::new();
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('n') => val.push('\n'),
                        Some(o) => val.push(o),
                        None => return None,
                    },
                    '"' => break,
                    o => val.push(o),
                }
            }
            labels.insert(key.trim().to_string(), val);
        }
        &body[end? + 1..]
    } else {
        rest
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Whether `promtool check metrics` can run here; prints a note and
/// returns false when promtool is missing, which fails under CI
/// (Debian's `prometheus`, installed by scripts/install-deps.sh).
pub fn have_promtool() -> bool {
    if crate::util::have_program("promtool") {
        return true;
    }
    assert!(
        !crate::util::under_ci(),
        "promtool is missing under CI (Debian package `prometheus`; scripts/install-deps.sh installs it)"
    );
    eprintln!("NOTE: promtool not installed; skipping `promtool check metrics` (CI requires it)");
    false
}

/// Asserts that `promtool check metrics` accepts `text` (`whose`: whose
/// /metrics it is, for the message).
pub fn assert_promtool_accepts(whose: &str, text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool output");
    assert!(
        out.status.success(),
        "promtool check metrics refused {whose}'s /metrics:\n{}{}\n--- metrics:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_and_sums() {
        let m = Metrics::parse(
            "# HELP x y\n# TYPE coremesh_requests_total counter\n\
             coremesh_requests_total{direction=\"outbound\",service=\"api\",class=\"2xx\",core=\"0\"} 5\n\
             coremesh_requests_total{direction=\"outbound\",service=\"api\",class=\"5xx\",core=\"1\"} 2\n\
             coremesh_request_duration_seconds_bucket{direction=\"outbound\",service=\"a,b\\\"c\",le=\"+Inf\"} 7 1700000000\n\
             up 1\n",
        );
        assert_eq!(m.sum("coremesh_requests_total", &[("service", "api")]), 7.0);
        assert_eq!(m.sum("coremesh_requests_total", &[("core", "1")]), 2.0);
        let b: Vec<_> = m
            .select("coremesh_request_duration_seconds_bucket", &[])
            .collect();
        assert_eq!(b[0].labels["service"], "a,b\"c");
        assert_eq!(b[0].labels["le"], "+Inf");
        assert_eq!(m.sum("up", &[]), 1.0);
    }
}
