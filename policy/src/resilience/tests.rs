use super::*;

#[test]
fn endpoint_set_contains_and_union() {
    let a: Vec<SocketAddr> = (0..20u16)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], 9000 + i)))
        .collect();
    let small = EndpointSet::new(vec![a[3], a[1], a[3]]);
    assert_eq!(small.as_slice(), &[a[1], a[3]]);
    assert!(small.contains(a[3]) && !small.contains(a[2]));
    let big = EndpointSet::new(a[5..].to_vec());
    assert!(big.contains(a[19]) && !big.contains(a[4]));
    let u = small.union(&big);
    assert_eq!(u.len(), 17);
    assert!(u.contains(a[1]) && u.contains(a[10]));
    assert_eq!(EndpointSet::default().union(&small), small);
}
