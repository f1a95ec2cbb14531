//! proxy.toml: any text gives a Config or an error that names the file,
//! never a panic; an accepted config checked against itself as a reload
//! changes nothing that needs a restart.
#![no_main]

use std::path::Path;

use coremesh_proxy::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/etc/coremesh/fuzz.toml");
    match Config::parse(path, text) {
        Ok(cfg) => {
            if let Err(e) = cfg.check_reload(&cfg) {
                panic!("a config differs from itself: {e}");
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("fuzz.toml"),
                "the error does not name the file: {msg}"
            );
        }
    }
});
