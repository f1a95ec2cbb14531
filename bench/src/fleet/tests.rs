use super::*;

#[test]
fn calls_are_distinct_and_not_self() {
    for s in 0..100 {
        let c = calls_of(s, 100, 5);
        assert_eq!(c.len(), 5);
        assert!(!c.contains(&s));
        let mut d = c.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), 5);
    }
    assert_eq!(calls_of(0, 3, 5).len(), 2);
}

#[test]
fn yaml_parses_and_changes_only_the_first_routes() {
    let docs = coremesh_api::resource::parse_documents(&config_yaml(4, 2)).unwrap();
    assert_eq!(docs.len(), 8);
    let y = config_yaml(4, 2);
    assert_eq!(y.matches("weight: 50").count(), 4);
    assert_eq!(y.matches("weight: 90").count(), 2);
}

#[test]
fn percentiles_nearest_rank() {
    let p = percentiles((1..=100).map(f64::from).collect()).unwrap();
    assert_eq!((p.p50_ms, p.p99_ms, p.max_ms), (50.0, 99.0, 100.0));
    assert_eq!(p.min_ms, 1.0);
    assert!(percentiles(vec![]).is_none());
}

#[test]
fn a_store_that_is_not_etcd_is_refused_before_anything_starts() {
    for store in ["redis://h1:6379", "etcd://", "h1:2379"] {
        let cfg = replicas::ReplicasConfig {
            count: 3,
            store: store.into(),
            control_bin: PathBuf::from("/nonexistent/coremesh-control"),
            keep: false,
        };
        let got = replicas::start(&cfg);
        assert!(
            matches!(got, Err(replicas::ReplicasError::Store { .. })),
            "{store}"
        );
    }
    let none = replicas::ReplicasConfig {
        count: 0,
        store: replicas::LOCAL.into(),
        control_bin: PathBuf::from("/nonexistent/coremesh-control"),
        keep: false,
    };
    assert!(matches!(
        replicas::start(&none),
        Err(replicas::ReplicasError::Zero)
    ));
}
