//! The chunked body decoder. Properties: feeding the same bytes in any
//! split gives the same consumed length, data, trailer fields and end state
//! as feeding them at once; and a body chunked here (sizes taken from the
//! input) decodes back to itself.
#![no_main]

use coremesh_http1::ChunkedDecoder;
use libfuzzer_sys::fuzz_target;

/// A trailer field: name, value.
type Field = (Vec<u8>, Vec<u8>);

/// Feeds `data` in pieces of the given sizes: (consumed, data, done, error,
/// trailer fields).
fn run(data: &[u8], pieces: &[usize]) -> (usize, Vec<u8>, bool, Option<u16>, Vec<Field>) {
    let mut d = ChunkedDecoder::keeping_trailers();
    let mut out = Vec::new();
    let mut at = 0;
    let mut sizes = pieces.iter().cycle();
    while at < data.len() {
        let n = (*sizes.next().unwrap_or(&1)).clamp(1, data.len() - at);
        let piece = &data[at..at + n];
        match d.feed_with(piece, |r| out.extend_from_slice(&piece[r])) {
            Ok(used) => {
                at += used;
                if used < n || d.is_done() {
                    break;
                }
            }
            Err(e) => return (at, out, false, Some(e.status), Vec::new()),
        }
    }
    let trailers: Vec<Field> = d
        .trailers()
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect();
    for (n, _) in &trailers {
        assert!(!n.is_empty() && !n.contains(&b':'), "trailer name {n:?}");
    }
    (at, out, d.is_done(), None, trailers)
}

fuzz_target!(|input: &[u8]| {
    let Some((&k, data)) = input.split_first() else {
        return;
    };
    let whole = run(data, &[data.len().max(1)]);
    let split = run(data, &[1 + k as usize % 7, 3, 1 + k as usize]);
    assert_eq!(whole.2, split.2, "done differs");
    assert_eq!(whole.3, split.3, "error differs");
    if whole.3.is_none() {
        assert_eq!(whole.0, split.0, "consumed differs");
        assert_eq!(whole.1, split.1, "data differs");
        assert_eq!(whole.4, split.4, "trailers differ");
    }

    // Encode `data` as chunks of sizes 1..=k+1, then decode.
    let mut body = Vec::new();
    for c in data.chunks(1 + k as usize) {
        body.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        body.extend_from_slice(c);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let (used, out, done, err, trailers) = run(&body, &[5, 1 + k as usize]);
    assert_eq!(err, None);
    assert!(trailers.is_empty());
    assert!(done);
    assert_eq!(used, body.len());
    assert_eq!(out, data);
});
