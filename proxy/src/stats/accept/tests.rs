use super::*;

#[test]
fn failures_are_counted_by_reason_with_a_pause_for_lack_of_resources() {
    let f = AcceptFailures {
        descriptors: AtomicU64::new(0),
        memory: AtomicU64::new(0),
        other: AtomicU64::new(0),
    };
    let pause = f.count(&io::Error::from_raw_os_error(libc::EMFILE));
    assert_eq!(pause.as_millis(), 100);
    f.count(&io::Error::from_raw_os_error(libc::ENFILE));
    f.count(&io::Error::from_raw_os_error(libc::ENOMEM));
    assert_eq!(
        f.count(&io::Error::from_raw_os_error(libc::ECONNABORTED))
            .as_millis(),
        10
    );
    let mut out = String::new();
    f.render(&mut out);
    assert!(
        out.contains("coremesh_accept_failures_total{reason=\"descriptors\"} 2\n"),
        "{out}"
    );
    assert!(
        out.contains("coremesh_accept_failures_total{reason=\"memory\"} 1\n"),
        "{out}"
    );
    assert!(
        out.contains("coremesh_accept_failures_total{reason=\"other\"} 1\n"),
        "{out}"
    );
}
