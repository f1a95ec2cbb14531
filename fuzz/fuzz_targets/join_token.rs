//! Join tokens: whatever parses prints back to a string that parses to the
//! same token.
#![no_main]

use coremesh_api::token::JoinToken;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = text.parse::<JoinToken>() {
        let printed = t.to_string();
        assert_eq!(printed.parse::<JoinToken>().ok(), Some(t), "{printed}");
    }
});
