//! STUB
pub type Span = std::ops::Range<usize>;
#[derive(Debug, Clone, Copy, PartialEq, Eq)] pub enum Version { Http10, Http11 }
#[derive(Debug, Clone, Copy, PartialEq, Eq)] pub enum Method { Get, Head, Post, Put, Delete, Connect, Options, Trace, Patch, Other }
impl Method { pub fn is_idempotent(self) -> bool { true } }
#[derive(Debug, Clone, Copy, PartialEq, Eq)] pub enum Framing { None, Length(u64), Chunked, UntilClose }
#[derive(Debug, Clone, Copy, PartialEq, Eq)] pub enum TargetForm { Origin, Absolute, Authority, Asterisk }
#[derive(Debug, Clone, Copy)] pub struct Limits { pub max_head_bytes: usize, pub max_request_line: usize, pub max_headers: usize }
#[derive(Debug, Clone, Copy, PartialEq, Eq)] pub struct ParseError { pub status: u16, pub reason: &'static str }
pub struct RequestHead { pub head_len: usize, pub method: Method, pub version: Version, pub target: Span, pub target_form: TargetForm, pub authority: Option<Span>, pub path: Span, pub framing: Framing, pub keep_alive: bool, pub expect_continue: bool, pub upgrade: bool }
pub fn parse_request(_buf: &[u8], _limits: &Limits) -> Result<Option<RequestHead>, ParseError> { Ok(None) }
pub struct ResponseHead { pub head_len: usize, pub status: u16, pub version: Version, pub framing: Framing, pub keep_alive: bool, pub interim: bool, pub switching: bool }
pub fn parse_response(_buf: &[u8], _m: Method, _limits: &Limits) -> Result<Option<ResponseHead>, ParseError> { Ok(None) }
#[derive(Debug, Default)] pub struct HeadPlan { pub segs: Vec<Seg>, pub own: Vec<u8> }
#[derive(Debug, Clone, PartialEq, Eq)] pub enum Seg { Src(Span), Own(Span) }
impl HeadPlan { pub fn to_vec(&self, _src: &[u8]) -> Vec<u8> { vec![] } }
impl RequestHead { pub fn plan_forward(&self, _src: &[u8], _extra: &[u8], _plan: &mut HeadPlan) {} }
impl ResponseHead { pub fn plan_forward(&self, _src: &[u8], _close: bool, _k: bool, _plan: &mut HeadPlan) {} }
pub struct ChunkedDecoder;
impl ChunkedDecoder { pub fn new() -> Self { ChunkedDecoder } pub fn feed(&mut self, d: &[u8]) -> Result<usize, ParseError> { Ok(d.len()) } pub fn is_done(&self) -> bool { true } }
pub fn split_authority(a: &[u8]) -> Result<(&[u8], Option<u16>), ParseError> { Ok((a, None)) }
pub fn write_error_response(_status: u16, _error: &str, _close: bool, _out: &mut Vec<u8>) {}
