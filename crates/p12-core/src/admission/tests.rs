use super::*;
use crate::api::{CertificateRequest, CertificateRequestSpec, IssuancePolicySpec};
use crate::pki::Policy;

/// Plans `spec_yaml` in namespace `ns` and asks `policies` about it, with the
/// Services `web` and `db` existing in every namespace.
fn ask(
    ns: &str,
    labels: &[(&str, &str)],
    spec_yaml: &str,
    policies: &[CompiledPolicy],
    settings: &Settings,
) -> Result<(), Refusal> {
    let spec: CertificateRequestSpec = serde_saphyr::from_str(spec_yaml).expect("spec yaml");
    let mut cr = CertificateRequest::new("req", spec);
    cr.metadata.namespace = Some(ns.into());
    let plan = crate::plan::plan(&cr, &Policy::default()).expect("a plannable request");
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let exists = |svc: &str| svc == "web" || svc == "db";
    admit(
        &Request {
            namespace: ns,
            leaf: &plan.leaf,
            key: plan.key_algorithm,
            service_exists: &exists,
        },
        &labels,
        policies,
        settings,
    )
}

fn default_only(ns: &str, spec_yaml: &str) -> Result<(), Refusal> {
    ask(ns, &[], spec_yaml, &[], &Settings::default())
}

fn policy(name: &str, yaml: &str) -> CompiledPolicy {
    let spec: IssuancePolicySpec = serde_saphyr::from_str(yaml).expect("policy yaml");
    CompiledPolicy::compile(name, &spec)
}

#[test]
fn by_default_a_namespace_gets_the_names_of_its_own_services_for_serving() {
    for names in [
        "[web.team-a.svc]",
        "[web.team-a.svc, web.team-a.svc.cluster.local]",
        "[WEB.Team-A.svc]",
        "[web-0.web.team-a.svc.cluster.local, db.team-a.svc]",
    ] {
        default_only("team-a", &format!("secretName: s\ndnsNames: {names}\n"))
            .unwrap_or_else(|r| panic!("{names} refused: {r}"));
    }
    default_only(
        "team-a",
        "secretName: s\ncommonName: web.team-a.svc\ndnsNames: [web.team-a.svc]\nduration: 2160h\n",
    )
    .expect("a common name equal to a DNS name");
}

#[test]
fn by_default_other_namespaces_the_api_server_wildcards_and_external_names_are_refused() {
    for (names, field) in [
        (
            "[payments.team-b.svc]",
            r#"dnsNames[0] "payments.team-b.svc""#,
        ),
        (
            "[web.team-a.svc, kubernetes.default.svc]",
            r#"dnsNames[1] "kubernetes.default.svc""#,
        ),
        ("['*.example.com']", r#"dnsNames[0] "*.example.com""#),
        ("['*.web.team-a.svc']", r#"dnsNames[0] "*.web.team-a.svc""#),
        ("[api.example.com]", r#"dnsNames[0] "api.example.com""#),
        ("[web.team-a]", r#"dnsNames[0] "web.team-a""#),
        (
            "[a.b.web.team-a.svc]",
            r#"dnsNames[0] "a.b.web.team-a.svc""#,
        ),
        (
            "[web.team-a.svc.evil.com]",
            r#"dnsNames[0] "web.team-a.svc.evil.com""#,
        ),
    ] {
        let r = default_only("team-a", &format!("secretName: s\ndnsNames: {names}\n"))
            .expect_err(names);
        assert!(
            r.message.contains(&format!("{field} is not allowed")),
            "{names}: {}",
            r.message
        );
        assert!(r.message.contains(BUILTIN), "{}", r.message);
    }
}

#[test]
fn by_default_client_auth_ips_uris_emails_subjects_and_long_lifetimes_are_refused() {
    for (extra, what) in [
        (
            "usages: [serverAuth, clientAuth]\n",
            r#"usages "clientAuth""#,
        ),
        ("ipAddresses: [10.0.0.1]\n", r#"ipAddresses[0] "10.0.0.1""#),
        ("uris: ['spiffe://x/y']\n", r#"uris[0] "spiffe://x/y""#),
        ("emailAddresses: [a@b.c]\n", r#"emailAddresses[0] "a@b.c""#),
        (
            "subject: {organizations: [system:masters]}\n",
            r#"subject.organizations[0] "system:masters""#,
        ),
        ("commonName: admin\n", r#"commonName "admin""#),
        ("duration: 2161h\n", r#"duration "2161h""#),
    ] {
        let r = default_only(
            "team-a",
            &format!("secretName: s\ndnsNames: [web.team-a.svc]\n{extra}"),
        )
        .expect_err(extra);
        assert!(
            r.message.contains(&format!("{what} is not allowed")),
            "{extra}: {}",
            r.message
        );
    }
    // Key usages are not what the certificate is for; they need no policy.
    default_only(
        "team-a",
        "secretName: s\ndnsNames: [web.team-a.svc]\nusages: [serverAuth, digitalSignature]\n",
    )
    .expect("key usages");
}

#[test]
fn a_service_that_does_not_exist_is_named_and_allowed_only_when_unknown_services_are() {
    let r = default_only("team-a", "secretName: s\ndnsNames: [ghost.team-a.svc]\n").unwrap_err();
    assert!(
        r.message
            .contains("there is no Service ghost in namespace team-a"),
        "{}",
        r.message
    );
    let settings = Settings {
        allow_unknown_services: true,
        ..Settings::default()
    };
    ask(
        "team-a",
        &[],
        "secretName: s\ndnsNames: [ghost.team-a.svc]\n",
        &[],
        &settings,
    )
    .expect("any Service name of the namespace");
}

#[test]
fn the_cluster_domain_is_the_one_configured() {
    let settings = Settings {
        cluster_domain: "corp.internal".into(),
        ..Settings::default()
    };
    let yaml = |d: &str| format!("secretName: s\ndnsNames: [web.team-a.svc.{d}]\n");
    ask("team-a", &[], &yaml("corp.internal"), &[], &settings).expect("configured domain");
    ask("team-a", &[], &yaml("cluster.local"), &[], &settings).expect_err("other domain");
}

#[test]
fn a_policy_for_labelled_namespaces_admits_exactly_its_patterns() {
    let shop = policy(
        "shop-external",
        "namespaces: {selector: {matchLabels: {team: shop}}}\nallow: {dnsNames: ['*.shop.example.com']}\n",
    );
    let labelled = [("team", "shop")];
    let ask_shop = |ns: &str, labels: &[(&str, &str)], names: &str| {
        ask(
            ns,
            labels,
            &format!("secretName: s\ndnsNames: {names}\n"),
            std::slice::from_ref(&shop),
            &Settings::default(),
        )
    };
    for names in [
        "[api.shop.example.com]",
        "['*.shop.example.com']",
        "[api.shop.example.com, web.shop-prod.svc]",
    ] {
        ask_shop("shop-prod", &labelled, names).unwrap_or_else(|r| panic!("{names}: {r}"));
    }
    for names in [
        "[a.b.shop.example.com]",
        "[shop.example.com]",
        "[api.other.example.com]",
    ] {
        let r = ask_shop("shop-prod", &labelled, names).expect_err(names);
        assert!(
            r.message.contains("IssuancePolicy shop-external")
                && r.message.contains("*.shop.example.com")
                && r.message.contains(BUILTIN),
            "{names}: {}",
            r.message
        );
    }
    // The same request from a namespace without the label.
    let r = ask_shop("team-a", &[("team", "a")], "[api.shop.example.com]").unwrap_err();
    assert!(!r.message.contains("shop-external"), "{}", r.message);
}

#[test]
fn patterns_substitute_the_namespace_and_double_star_spans_labels() {
    let p = policy(
        "internal",
        "namespaces: {names: [team-a, team-b]}\nallow:\n  dnsNames: ['{namespace}.internal.example.com', '**.lab.example.com']\n  uris: ['spiffe://cluster.local/ns/{namespace}/sa/*']\n  emailAddresses: ['*@{namespace}.example.com']\n",
    );
    let run = |ns: &str, extra: &str| {
        ask(
            ns,
            &[],
            &format!("secretName: s\n{extra}"),
            std::slice::from_ref(&p),
            &Settings::default(),
        )
    };
    run("team-a", "dnsNames: [team-a.internal.example.com]\n").unwrap();
    run("team-b", "dnsNames: [team-a.internal.example.com]\n").unwrap_err();
    run("team-a", "dnsNames: [x.y.z.lab.example.com]\n").unwrap();
    run("team-a", "dnsNames: [lab.example.com]\n").unwrap_err();
    run(
        "team-a",
        "uris: ['spiffe://cluster.local/ns/team-a/sa/api']\n",
    )
    .unwrap();
    run(
        "team-a",
        "uris: ['spiffe://cluster.local/ns/team-b/sa/api']\n",
    )
    .unwrap_err();
    run("team-b", "emailAddresses: [Ops@Team-B.example.com]\n").unwrap();
    run("team-c", "dnsNames: [team-c.internal.example.com]\n").unwrap_err();
}

#[test]
fn client_auth_ips_keys_and_lifetimes_come_from_a_policy() {
    let p = policy(
        "mtls",
        "namespaces: {names: [team-a]}\nallow:\n  usages: [serverAuth, clientAuth]\n  ipRanges: [10.20.0.0/16, 'fd00::/8']\n  maxDuration: 8760h\n  subject: {organizations: ['Team A *']}\n",
    );
    let run = |extra: &str| {
        ask(
            "team-a",
            &[],
            &format!("secretName: s\ndnsNames: [web.team-a.svc]\n{extra}"),
            std::slice::from_ref(&p),
            &Settings::default(),
        )
    };
    run("usages: [serverAuth, clientAuth]\nipAddresses: [10.20.3.4, 'fd00::1']\nduration: 8760h\nsubject: {organizations: [Team A Payments]}\n").unwrap();
    let r = run("ipAddresses: [10.21.0.1]\n").unwrap_err();
    assert!(
        r.message.contains(r#"ipAddresses[0] "10.21.0.1""#)
            && r.message.contains("10.20.0.0/16, fd00::/8"),
        "{}",
        r.message
    );
    run("usages: [codeSigning]\n").unwrap_err();
    run("duration: 8761h\n").unwrap_err();
}

#[test]
fn policies_do_not_combine() {
    // One allows the external name, the other clientAuth: neither allows both.
    let names = policy(
        "names",
        "namespaces: {names: [team-a]}\nallow: {dnsNames: [api.example.com]}\n",
    );
    let mtls = policy(
        "mtls",
        "namespaces: {names: [team-a]}\nallow: {usages: [serverAuth, clientAuth]}\n",
    );
    let r = ask(
        "team-a",
        &[],
        "secretName: s\ndnsNames: [api.example.com]\nusages: [serverAuth, clientAuth]\n",
        &[names, mtls],
        &Settings::default(),
    )
    .unwrap_err();
    for part in [
        "no policy for namespace team-a allows the whole request",
        r#"IssuancePolicy names: usages "clientAuth" is not allowed"#,
        r#"IssuancePolicy mtls: dnsNames[0] "api.example.com" is not allowed"#,
    ] {
        assert!(r.message.contains(part), "{part:?} in {}", r.message);
    }
}

#[test]
fn with_the_built_in_default_off_only_policies_admit_and_they_can_narrow_keys() {
    let off = Settings {
        builtin_default: false,
        ..Settings::default()
    };
    let r = ask(
        "team-a",
        &[],
        "secretName: s\ndnsNames: [web.team-a.svc]\n",
        &[],
        &off,
    )
    .unwrap_err();
    assert!(
        r.message
            .contains("no IssuancePolicy applies to namespace team-a")
    );
    let ecdsa = policy(
        "ecdsa-only",
        "namespaces: {selector: {}}\nallow: {privateKeys: [{algorithm: ECDSA, sizes: [384]}]}\n",
    );
    let run = |key: &str| {
        ask(
            "team-a",
            &[],
            &format!("secretName: s\ndnsNames: [web.team-a.svc]\nprivateKey: {key}\n"),
            std::slice::from_ref(&ecdsa),
            &off,
        )
    };
    run("{algorithm: ECDSA, size: 384}").unwrap();
    let r = run("{algorithm: RSA}").unwrap_err();
    assert!(
        r.message
            .contains(r#"privateKey "RSA 2048" is not allowed: the policy allows only ECDSA 384"#),
        "{}",
        r.message
    );
}

#[test]
fn a_policy_with_a_field_that_cannot_be_read_admits_nothing_and_says_why() {
    let p = policy(
        "typo",
        "namespaces: {names: [team-a]}\nallow: {dnsNames: ['**'], maxDuration: 'a year'}\n",
    );
    let r = ask(
        "team-a",
        &[],
        "secretName: s\ndnsNames: [api.example.com]\n",
        &[p],
        &Settings::default(),
    )
    .unwrap_err();
    assert!(
        r.message
            .contains("IssuancePolicy typo: the policy is invalid (maxDuration:"),
        "{}",
        r.message
    );
}

#[test]
fn label_selectors_follow_kubernetes_semantics() {
    let sel: LabelSelector = serde_saphyr::from_str(
        "matchLabels: {team: shop}\nmatchExpressions:\n- {key: env, operator: In, values: [prod, staging]}\n- {key: frozen, operator: DoesNotExist}\n",
    )
    .unwrap();
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert!(selector_matches(
        &sel,
        &labels(&[("team", "shop"), ("env", "prod")])
    ));
    assert!(!selector_matches(
        &sel,
        &labels(&[("team", "shop"), ("env", "dev")])
    ));
    assert!(!selector_matches(
        &sel,
        &labels(&[("team", "shop"), ("env", "prod"), ("frozen", "")])
    ));
    assert!(!selector_matches(&sel, &labels(&[("env", "prod")])));
    assert!(selector_matches(&LabelSelector::default(), &labels(&[])));
}

#[test]
fn address_ranges_contain_what_they_should() {
    let r = IpRange::parse("10.20.0.0/16").unwrap();
    assert!(r.contains("10.20.255.1".parse().unwrap()));
    assert!(!r.contains("10.21.0.1".parse().unwrap()));
    assert!(!r.contains("fd00::1".parse().unwrap()));
    assert!(r.contains("::ffff:10.20.0.9".parse().unwrap()));
    let one = IpRange::parse("192.168.1.7").unwrap();
    assert!(one.contains("192.168.1.7".parse().unwrap()));
    assert!(!one.contains("192.168.1.8".parse().unwrap()));
    assert!(
        IpRange::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap())
    );
    assert!(
        IpRange::parse("fd00::/8")
            .unwrap()
            .contains("fdff::1".parse().unwrap())
    );
    for bad in ["10.0.0.0/33", "10.0.0/8", "x", "::/129"] {
        assert!(IpRange::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn globs_match_runs_of_characters() {
    assert!(glob(b"*@shop.example.com", b"ops@shop.example.com"));
    assert!(!glob(b"*@shop.example.com", b"ops@shop.example.com.evil"));
    assert!(glob(b"a*b*c", b"abbbc"));
    assert!(glob(b"*", b""));
    assert!(!glob(b"web-*", b"api-1"));
    assert!(dns_matches("web-*.example.com", "web-1.example.com"));
    assert!(!dns_matches("web-*.example.com", "web-1.x.example.com"));
    assert!(!dns_matches("*.example.com", "example.com"));
}
