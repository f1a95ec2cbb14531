//! The control protocol's frame decoder and messages (what a hostile peer
//! sends either side). Properties: no panic on any bytes in any split, a
//! frame over the limit is refused before it is buffered, and every message
//! decoded re-encodes to a frame that decodes to the same message.
#![no_main]

use coremesh_api::wire::{encode, ControlMsg, FrameDecoder, ProxyMsg};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

const MAX: usize = 64 * 1024;

fn decode_all<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(
    data: &[u8],
    step: usize,
) {
    let mut d = FrameDecoder::new(MAX);
    for piece in data.chunks(step) {
        d.push(piece);
        loop {
            match d.next::<T>() {
                Ok(Some(msg)) => {
                    let mut frame = Vec::new();
                    encode(&msg, &mut frame).expect("a decoded message encodes");
                    let mut again = FrameDecoder::new(usize::MAX >> 2);
                    again.push(&frame);
                    assert_eq!(again.next::<T>().expect("re-decodes"), Some(msg));
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(d.buffered() <= MAX + 4 + step, "buffered past the limit");
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&k, data)) = input.split_first() else {
        return;
    };
    let step = 1 + k as usize % 16;
    decode_all::<ProxyMsg>(data, step);
    decode_all::<ControlMsg>(data, step);
});
