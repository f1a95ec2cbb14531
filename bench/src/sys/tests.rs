use super::*;

#[test]
fn cpu_lists() {
    assert_eq!(parse_cpu_list("3").unwrap(), vec![3]);
    assert_eq!(parse_cpu_list("0,2-4, 2").unwrap(), vec![0, 2, 3, 4]);
    assert!(parse_cpu_list("4-2").is_err());
    assert!(parse_cpu_list("x").is_err());
    assert_eq!(cpu_list(&[1, 3]), "1,3");
}

#[test]
fn stat_lines_parse_by_field_number() {
    // Fields 1-17 numbered by value where they matter: ppid 4, utime 14,
    // stime 15, cutime 16, cstime 17; then priority 20 and the rest.
    let line = "4242 (a) (b c) S 7 5 6 0 -1 4194560 10 11 12 13 \
                1400 1500 1600 1700 20 0 3 0 99 1000 200\n";
    assert_eq!(
        parse_stat(line),
        Some(ProcStat {
            ppid: 7,
            user_ticks: 1400 + 1600,
            sys_ticks: 1500 + 1700,
        })
    );
    assert_eq!(parse_stat("4242 (x) S 7 5"), None);
    assert_eq!(parse_stat("garbage"), None);
}

#[test]
fn snmp_and_status_counters_parse() {
    let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                Tcp: RtoAlgorithm RtoMin InSegs OutSegs RetransSegs\n\
                Tcp: 1 200 7000 6543 0\n\
                Udp: InDatagrams\nUdp: 5\n";
    assert_eq!(parse_snmp_tcp(snmp, "OutSegs"), Some(6543));
    assert_eq!(parse_snmp_tcp(snmp, "InSegs"), Some(7000));
    assert_eq!(parse_snmp_tcp(snmp, "NoSuchField"), None);
    assert_eq!(parse_snmp_tcp("Ip: 1\n", "OutSegs"), None);
    // The live file has the counter, and it only grows.
    let a = tcp_out_segments().expect("Tcp OutSegs in /proc/net/snmp");
    assert!(tcp_out_segments().unwrap() >= a);

    let status = "Name:\tx\nvoluntary_ctxt_switches:\t40\n\
                  nonvoluntary_ctxt_switches:\t2\n";
    assert_eq!(parse_context_switches(status), 42);
    assert_eq!(parse_context_switches("Name:\tx\n"), 0);
}

#[test]
fn sleeping_counts_as_context_switches() {
    // This thread's own counters: other test threads of this process may
    // exit meanwhile, and their switches leave the tree's sum with them.
    let mine = || {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        parse_context_switches(&status)
    };
    let before = mine();
    for _ in 0..20 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let after = mine();
    assert!(after >= before + 20, "{before} -> {after} after 20 sleeps");
    // The tree's sum takes in every live thread, this one included.
    assert!(tree_context_switches(std::process::id()) >= after);
}

/// Time this thread has run, from the kernel's per-thread CPU clock.
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

#[test]
fn user_cpu_counts_in_the_process_tree() {
    let me = std::process::id();
    assert!(process_tree(me).contains(&me));
    assert!(tree_rss_bytes(me) > 0);
    // A loop with no system calls but the vDSO clock: user time only,
    // which an earlier parser (off by one field) left out.
    let before = tree_cpu_seconds(me);
    let start = thread_cpu_seconds();
    let mut x = 0u64;
    while thread_cpu_seconds() - start < 0.2 {
        for _ in 0..10_000 {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
    }
    std::hint::black_box(x);
    let burnt = tree_cpu_seconds(me) - before;
    assert!(burnt >= 0.15, "200 ms of user CPU measured as {burnt:.3} s");
    let split = tree_cpu_times(me);
    assert!(split.user >= 0.15, "user time {:.3} s", split.user);
    let (u, s) = self_cpu_seconds();
    assert!(u >= 0.15 && u + s > 0.0);
}

#[test]
fn timer_fires() {
    let mut t = Timer::new().unwrap();
    t.arm(now_ns() + 1_000_000, 0).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let mut n = [0u8; 8];
    // SAFETY: reads into a local buffer.
    let r = unsafe { libc::read(t.raw_fd(), n.as_mut_ptr().cast(), 8) };
    assert_eq!(r, 8);
    assert_eq!(u64::from_ne_bytes(n), 1);
}
