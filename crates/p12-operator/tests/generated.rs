//! Generated files are committed and must match what the code generates.

#[test]
fn committed_crds_match_the_rust_types() {
    for plural in p12_operator::api::CRDS {
        let file = format!("crds/p12-operator.io_{plural}.yaml");
        let committed =
            std::fs::read_to_string(p12_testenv::tools::repo_root().join(&file)).unwrap();
        let generated = p12_operator::api::crd_yaml(plural).unwrap();
        assert!(
            committed == generated,
            "{file} is out of date with crates/p12-core/src/api; regenerate it with:\n  cargo run -p p12-operator -- crd {plural} > {file} && scripts/render-deploy"
        );
    }
}
