//! Generated files are committed and must match what the code generates.

#[test]
fn committed_crd_matches_the_rust_types() {
    let path =
        p12_testenv::tools::repo_root().join("crds/p12-operator.io_certificaterequests.yaml");
    let committed = std::fs::read_to_string(path).unwrap();
    let generated = p12_operator::api::crd_yaml().unwrap();
    assert!(
        committed == generated,
        "crds/ is out of date with crates/p12-core/src/api; regenerate it with:\n  cargo run -p p12-operator -- crd > crds/p12-operator.io_certificaterequests.yaml"
    );
}
