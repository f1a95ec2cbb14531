//! gRPC deadlines: a `grpc-timeout` value the proxy accepts formats back
//! (what it forwards upstream, reduced) to one that parses to no less time,
//! in at most 8 digits and a unit; gRPC content types are recognised
//! without panicking on any input.
#![no_main]

use coremesh_policy::grpc::{format_timeout, is_grpc, parse_timeout};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = is_grpc(Some(data));
    if let Some(d) = parse_timeout(data) {
        let printed = format_timeout(d);
        assert!(printed.len() <= 9, "{printed}");
        let back = parse_timeout(printed.as_bytes()).expect("formats back to a valid value");
        assert!(back >= d, "{d:?} -> {printed} -> {back:?}");
        // Rounded up by less than one unit of the form chosen (a zero
        // deadline goes on as the smallest one, 1n: never as "no time").
        let unit = match printed.as_bytes()[printed.len() - 1] {
            b'n' => std::time::Duration::from_nanos(1),
            b'u' => std::time::Duration::from_micros(1),
            b'm' => std::time::Duration::from_millis(1),
            b'S' => std::time::Duration::from_secs(1),
            b'M' => std::time::Duration::from_secs(60),
            _ => std::time::Duration::from_secs(3600),
        };
        assert!(d.is_zero() || back - d < unit, "{d:?} -> {printed}");
    }
});
