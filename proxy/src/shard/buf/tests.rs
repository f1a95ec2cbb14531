use super::*;

#[test]
fn reuses_buffers_and_drops_odd_sizes() {
    let pool = BufPool::new();
    let mut a = pool.get();
    a.extend_from_slice(b"hello");
    let p = a.as_ptr();
    pool.put(a);
    let b = pool.get();
    assert_eq!(b.as_ptr(), p);
    assert!(b.is_empty());
    pool.put(Vec::with_capacity(3));
    assert_eq!(pool.free.borrow().len(), 0);
}
