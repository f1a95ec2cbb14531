//! The trace-context fields of a request (W3C Trace Context's
//! `traceparent` and `tracestate`, Zipkin's B3 in its single-field and
//! multi-field forms), found in the parse's one pass over the field lines
//! ([`super::fields::Fields::collect`]): a proxy that propagates trace
//! context reads and replaces them on every request, so finding them must
//! not cost another scan of the head.

use super::Span;

/// One trace-context field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceField {
    /// `traceparent` (W3C Trace Context).
    Traceparent,
    /// `tracestate` (W3C Trace Context).
    Tracestate,
    /// `b3` (B3 single header).
    B3,
    /// `x-b3-traceid`.
    B3TraceId,
    /// `x-b3-spanid`.
    B3SpanId,
    /// `x-b3-sampled`.
    B3Sampled,
    /// `x-b3-flags` (`1`: debug, which implies sampled).
    B3Flags,
    /// `x-b3-parentspanid`.
    B3ParentSpanId,
}

const COUNT: usize = 8;

/// The field a name is, if any (ASCII case-insensitive). Matched on the
/// length first, like [`super::fields::classify`].
pub(crate) fn classify(n: &[u8]) -> Option<TraceField> {
    let is = |s: &[u8]| n.eq_ignore_ascii_case(s);
    Some(match n.len() {
        2 if is(b"b3") => TraceField::B3,
        10 if is(b"tracestate") => TraceField::Tracestate,
        10 if is(b"x-b3-flags") => TraceField::B3Flags,
        11 if is(b"traceparent") => TraceField::Traceparent,
        11 if is(b"x-b3-spanid") => TraceField::B3SpanId,
        12 if is(b"x-b3-traceid") => TraceField::B3TraceId,
        12 if is(b"x-b3-sampled") => TraceField::B3Sampled,
        17 if is(b"x-b3-parentspanid") => TraceField::B3ParentSpanId,
        _ => return None,
    })
}

/// Where the trace-context fields of a head are: the field line of each
/// field's first occurrence, and the value of `traceparent` (the one read
/// on every request; the others, rarer, are found by a scan of the head
/// when present). Compact (`u32` offsets, `u16` line indices: a head is
/// far smaller than 4 GiB and has at most [`super::MAX_HEADERS_CAP`]
/// lines), since it lives in every [`super::RequestHead`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TraceFields {
    /// `(start, end)` of the first `traceparent` value.
    traceparent: (u32, u32),
    /// The field line of each field's first occurrence.
    line: [u16; COUNT],
    /// Bit `i`: field `i` is present.
    present: u8,
    /// Some field occurs more than once (its other lines are found by a
    /// scan when the fields are dropped).
    pub(crate) repeated: bool,
}

impl TraceFields {
    /// Notes field line `i`, of kind `f`, whose trimmed value is `value`.
    pub(crate) fn note(&mut self, f: TraceField, i: usize, value: Span) {
        let k = f as usize;
        if self.present & (1 << k) != 0 {
            self.repeated = true;
            return;
        }
        self.present |= 1 << k;
        self.line[k] = i as u16;
        if f == TraceField::Traceparent {
            self.traceparent = (value.start as u32, value.end as u32);
        }
    }

    pub(crate) fn has(&self, f: TraceField) -> bool {
        self.present & (1 << f as usize) != 0
    }

    pub(crate) fn traceparent(&self) -> Option<Span> {
        self.has(TraceField::Traceparent)
            .then_some(self.traceparent.0 as usize..self.traceparent.1 as usize)
    }

    pub(crate) fn any(&self) -> bool {
        self.present != 0
    }

    /// The field lines of every first occurrence, but `skip`'s.
    pub(crate) fn lines_except(
        &self,
        skip: Option<TraceField>,
    ) -> impl Iterator<Item = usize> + '_ {
        let skip = skip.map_or(0, |f| 1u8 << f as usize);
        (0..COUNT)
            .filter(move |k| (self.present & !skip) & (1 << k) != 0)
            .map(|k| usize::from(self.line[k]))
    }
}

/// Every trace-context field name, lowercase, in [`TraceField`] order.
pub(crate) const NAMES: [&str; COUNT] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-b3-parentspanid",
];
