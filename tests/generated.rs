//! Generated files are committed and must match what the code generates.

#[test]
fn committed_crd_matches_the_rust_types() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/p12-operator.io_certificaterequests.yaml"
    );
    let committed = std::fs::read_to_string(path).unwrap();
    let generated = p12_operator::api::crd_yaml().unwrap();
    assert!(
        committed == generated,
        "crds/ is out of date with src/api; regenerate it with:\n  cargo run -- crd > crds/p12-operator.io_certificaterequests.yaml"
    );
}
