use super::*;

#[test]
fn this_process_may_run_somewhere() {
    let cpus = allowed_cpus().unwrap();
    assert!(!cpus.is_empty());
    assert!(cpus.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn cpu_lists_collapse_runs() {
    assert_eq!(format_cpu_list(&[]), "");
    assert_eq!(format_cpu_list(&[0, 1]), "0-1");
    assert_eq!(format_cpu_list(&[0, 1, 2, 3, 6, 8, 9]), "0-3,6,8-9");
    assert_eq!(format_cpu_list(&[5]), "5");
}
