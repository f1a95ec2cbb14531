use super::*;

#[test]
fn counts_reset_per_period_but_failures_in_a_row_carry_over() {
    let o = Outcomes::default();
    let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
    o.record(a, false);
    o.record(a, false);
    o.record(b, true);
    let mut t = o.take();
    t.sort_by_key(|(a, _)| *a);
    assert_eq!(
        t,
        vec![
            (
                a,
                Counts {
                    ok: 0,
                    failed: 2,
                    in_a_row: 2
                }
            ),
            (
                b,
                Counts {
                    ok: 1,
                    failed: 0,
                    in_a_row: 0
                }
            ),
        ]
    );
    assert!(o.take().is_empty());
    o.record(a, false);
    assert_eq!(
        o.take(),
        vec![(
            a,
            Counts {
                ok: 0,
                failed: 1,
                in_a_row: 3
            }
        )]
    );
    o.record(a, true);
    assert_eq!(
        o.take(),
        vec![(
            a,
            Counts {
                ok: 1,
                failed: 0,
                in_a_row: 0
            }
        )]
    );
}
