//! Forwarding plans: the head to send as spans of the received buffer plus the
//! few bytes the proxy adds, for one vectored write (docs/design.md, Buffers). The
//! head is never re-serialized; an unchanged head is one segment.
//!
//! Hop-by-hop fields (RFC 9110 7.6.1) are left out: Connection, every field
//! it names (except Content-Length, Transfer-Encoding and Host, which would
//! change the framing or routing the codec already decided), Keep-Alive, TE,
//! Upgrade (kept for an upgrade), Proxy-Connection. Transfer-Encoding itself
//! is kept: bodies are relayed with their framing intact.

use super::request::RequestHead;
use super::response::ResponseHead;
use super::scan::LineMask;
use super::{Span, TargetForm};

/// A head to send: segments that are each a span of the source buffer or of
/// `own` (bytes the proxy adds). Reused across requests ([`HeadPlan::clear`]),
/// so no allocation in steady state. Contiguous spans are merged.
#[derive(Debug, Default)]
pub struct HeadPlan {
    pub segs: Vec<Seg>,
    pub own: Vec<u8>,
}

/// One piece of a [`HeadPlan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// Bytes of the source buffer (the one the head was parsed from).
    Src(Span),
    /// Bytes of [`HeadPlan::own`].
    Own(Span),
}

impl HeadPlan {
    pub fn clear(&mut self) {
        self.segs.clear();
        self.own.clear();
    }

    /// Bytes the plan writes.
    pub fn total_len(&self) -> usize {
        self.segs
            .iter()
            .map(|s| match s {
                Seg::Src(r) | Seg::Own(r) => r.len(),
            })
            .sum()
    }

    /// The slices to write, in order (for building the iovec array).
    pub fn slices<'a>(&'a self, src: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.segs.iter().map(move |s| match s {
            Seg::Src(r) => &src[r.clone()],
            Seg::Own(r) => &self.own[r.clone()],
        })
    }

    /// The head as one buffer (tests and fallbacks; allocates).
    pub fn to_vec(&self, src: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.total_len());
        for s in self.slices(src) {
            v.extend_from_slice(s);
        }
        v
    }

    fn push_src(&mut self, r: Span) {
        if r.is_empty() {
            return;
        }
        if let Some(Seg::Src(last)) = self.segs.last_mut() {
            if last.end == r.start {
                last.end = r.end;
                return;
            }
        }
        self.segs.push(Seg::Src(r));
    }

    fn push_own(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let start = self.own.len();
        self.own.extend_from_slice(bytes);
        let end = self.own.len();
        if let Some(Seg::Own(last)) = self.segs.last_mut() {
            if last.end == start {
                last.end = end;
                return;
            }
        }
        self.segs.push(Seg::Own(start..end));
    }

    /// The field lines of `src[from..to]` except those in `drop`.
    fn fields(&mut self, src: &[u8], from: usize, to: usize, drop: &LineMask) {
        if !drop.any() {
            self.push_src(from..to);
            return;
        }
        // The head was validated: every line ends in CRLF, so LF ends a line.
        let mut pos = from;
        let mut i = 0;
        while pos < to {
            let end = match src[pos..to].iter().position(|&b| b == b'\n') {
                Some(k) => pos + k + 1,
                None => to,
            };
            if !drop.get(i) {
                self.push_src(pos..end);
            }
            pos = end;
            i += 1;
        }
    }
}

impl RequestHead {
    /// The head for the upstream, into `plan` (cleared first): origin-form
    /// request line (an absolute-form target becomes its path, `/` if empty;
    /// method and version unchanged), hop-by-hop fields removed, `host:
    /// <authority>` added when the request had no Host field or had an
    /// absolute-form target (RFC 9112 3.2.2: the proxy replaces Host with the
    /// target's authority), for an upgrade the Upgrade field kept and
    /// `connection: upgrade` added, then `extra` (complete field lines each
    /// ending in CRLF, may be empty), then the blank line.
    ///
    /// `src` must be the buffer given to [`super::parse_request`].
    pub fn plan_forward(&self, src: &[u8], extra: &[u8], plan: &mut HeadPlan) {
        debug_assert!(extra.is_empty() || extra.ends_with(b"\r\n"));
        plan.clear();
        let line_next = self.line_end + 2;
        if self.target_form == TargetForm::Absolute {
            plan.push_src(self.start..self.target.start);
            if self.path.is_empty() || src[self.path.start] == b'?' {
                plan.push_own(b"/");
            }
            plan.push_src(self.path.clone());
            plan.push_src(self.target.end..line_next);
        } else {
            plan.push_src(self.start..line_next);
        }
        let blank = self.head_len - 2;
        plan.fields(src, line_next, blank, &self.drop);
        if self.add_host {
            if let Some(a) = &self.authority {
                plan.push_own(b"host: ");
                plan.push_src(a.clone());
                plan.push_own(b"\r\n");
            }
        }
        if self.upgrade {
            plan.push_own(b"connection: upgrade\r\n");
        }
        plan.push_own(extra);
        plan.push_src(blank..self.head_len);
    }
}

impl ResponseHead {
    /// The head for the client, into `plan` (cleared first): the status line
    /// as received, hop-by-hop fields removed, then `connection: upgrade` for
    /// a 101 (Upgrade kept), else `connection: close` if `close`, else
    /// `connection: keep-alive` if `keep_alive_http10` (an HTTP/1.0 client
    /// whose connection stays open), then the blank line.
    ///
    /// `src` must be the buffer given to [`super::parse_response`].
    pub fn plan_forward(
        &self,
        src: &[u8],
        close: bool,
        keep_alive_http10: bool,
        plan: &mut HeadPlan,
    ) {
        plan.clear();
        let line_next = self.line_end + 2;
        plan.push_src(0..line_next);
        let blank = self.head_len - 2;
        plan.fields(src, line_next, blank, &self.drop);
        if self.switching {
            plan.push_own(b"connection: upgrade\r\n");
        } else if close {
            plan.push_own(b"connection: close\r\n");
        } else if keep_alive_http10 {
            plan.push_own(b"connection: keep-alive\r\n");
        }
        plan.push_src(blank..self.head_len);
    }

    /// The head for an HTTP/1.0 client of a chunked response, which it cannot
    /// parse: as [`ResponseHead::plan_forward`] with `close`, and the
    /// Transfer-Encoding field left out, so the body (sent de-chunked by the
    /// caller) is delimited by closing the connection (RFC 9112 6.3 (8)).
    pub fn plan_forward_unchunked(&self, src: &[u8], plan: &mut HeadPlan) {
        plan.clear();
        let line_next = self.line_end + 2;
        plan.push_src(0..line_next);
        let blank = self.head_len - 2;
        let mut pos = line_next;
        let mut i = 0;
        while pos < blank {
            let end = match src[pos..blank].iter().position(|&b| b == b'\n') {
                Some(k) => pos + k + 1,
                None => blank,
            };
            let line = &src[pos..end];
            let is_te = line.len() > 18 && line[..18].eq_ignore_ascii_case(b"transfer-encoding:");
            if !self.drop.get(i) && !is_te {
                plan.push_src(pos..end);
            }
            pos = end;
            i += 1;
        }
        plan.push_own(b"connection: close\r\n");
        plan.push_src(blank..self.head_len);
    }
}

#[cfg(test)]
mod tests;
