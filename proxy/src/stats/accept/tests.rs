use super::*;

#[test]
fn failures_are_counted_by_listener_and_reason_with_a_pause_for_lack_of_resources() {
    let f = AcceptFailures::new();
    let pause = f.count(
        Listener::Outbound,
        &io::Error::from_raw_os_error(libc::EMFILE),
    );
    assert_eq!(pause.as_millis(), 100);
    f.count(
        Listener::Outbound,
        &io::Error::from_raw_os_error(libc::ENFILE),
    );
    f.count(Listener::Admin, &io::Error::from_raw_os_error(libc::EMFILE));
    f.count(Listener::Tcp, &io::Error::from_raw_os_error(libc::ENOMEM));
    assert_eq!(
        f.count(
            Listener::Inbound,
            &io::Error::from_raw_os_error(libc::ECONNABORTED)
        )
        .as_millis(),
        10
    );
    let mut out = String::new();
    f.render(&mut out);
    for line in [
        "coremesh_accept_failures_total{listener=\"outbound\",reason=\"descriptors\"} 2\n",
        "coremesh_accept_failures_total{listener=\"admin\",reason=\"descriptors\"} 1\n",
        "coremesh_accept_failures_total{listener=\"tcp\",reason=\"memory\"} 1\n",
        "coremesh_accept_failures_total{listener=\"inbound\",reason=\"other\"} 1\n",
        "coremesh_accept_failures_total{listener=\"inbound\",reason=\"descriptors\"} 0\n",
    ] {
        assert!(out.contains(line), "{line} in\n{out}");
    }
}
