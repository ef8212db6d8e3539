//! `status`, the text for people: spans, tables and the report laid out the way
//! kubectl describes objects. Pure; uses only the report types of `status`.

use std::fmt::Write as _;

use jiff::Timestamp;

use super::status::StatusReport;

/// `90s`, `5m`, `3h20m`, `89d23h`: a span as people read it.
pub fn compact(seconds: i64) -> String {
    let s = seconds.unsigned_abs();
    let (d, h, m) = (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60);
    if s < 120 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{m}m")
    } else if s < 2 * 86_400 {
        let h = s / 3600;
        if m == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{m}m")
        }
    } else if h == 0 {
        format!("{d}d")
    } else {
        format!("{d}d{h}h")
    }
}

/// `5m ago` or `in 89d23h`.
pub fn relative(now: Timestamp, then: Timestamp) -> String {
    let delta = then.as_second() - now.as_second();
    if delta >= 0 {
        format!("in {}", compact(delta))
    } else {
        format!("{} ago", compact(delta))
    }
}

fn age(now: Timestamp, then: Timestamp) -> String {
    compact((now.as_second() - then.as_second()).max(0))
}

pub(super) fn or_dash(value: Option<&str>) -> &str {
    value.filter(|v| !v.is_empty()).unwrap_or("-")
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(", ")
    }
}

fn when(now: Timestamp, t: Option<Timestamp>) -> String {
    match t {
        Some(t) => format!("{t} ({})", relative(now, t)),
        None => "-".to_owned(),
    }
}

/// The last rotation: issued → rolled out → verified, with times, and what
/// happened to each workload.
fn render_rotation(
    out: &mut String,
    now: Timestamp,
    rollout: &crate::api::RolloutStatus,
    probed: bool,
) {
    let _ = writeln!(out, "Last rotation:");
    let Some(start) = rollout.start_time.as_ref().map(|t| t.0) else {
        let _ = writeln!(out, "  (no renewal since rollout was configured)");
        return;
    };
    let after = |t: Timestamp| {
        format!(
            "{t} ({} after issue)",
            compact(t.as_second() - start.as_second())
        )
    };
    let _ = writeln!(out, "  Issued:            {}", when(now, Some(start)));
    let done = rollout.completion_time.as_ref().map(|t| t.0);
    let _ = writeln!(
        out,
        "  Rolled out:        {}",
        done.map_or_else(|| "in progress".to_owned(), after)
    );
    let verified = match rollout.verified_time.as_ref().map(|t| t.0) {
        Some(t) => after(t),
        None if !probed => "not verified (no spec.probe)".to_owned(),
        None => "not yet".to_owned(),
    };
    let _ = writeln!(out, "  Verified:          {verified}");
    let rows: Vec<Vec<String>> = rollout
        .workloads
        .iter()
        .map(|w| {
            vec![
                format!("{}/{}", w.kind, w.name),
                w.state.clone(),
                w.rollout_seconds
                    .map_or_else(|| "-".to_owned(), |s| format!("{s}s")),
                if w.stale_pods.is_empty() {
                    "-".to_owned()
                } else {
                    w.stale_pods.join(",")
                },
                w.message.clone(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        table(
            out,
            &["WORKLOAD", "STATE", "TOOK", "STALE PODS", "MESSAGE"],
            &rows,
        );
    }
}

/// Columns padded to their widest cell, two spaces apart, indented by two; the
/// last column is not padded.
fn table(out: &mut String, headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut line = |cells: Vec<&str>| {
        let mut text = String::from(" ");
        for (i, cell) in cells.iter().enumerate() {
            text.push(' ');
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                text.push_str(cell);
                text.push_str(&" ".repeat(pad + 1));
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn usage_name(u: &crate::api::Usage) -> String {
    serde_json::to_value(u)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{u:?}"))
}

/// The report for people. `now` makes the relative times.
pub fn render_status_text(report: &StatusReport, now: Timestamp) -> String {
    let mut out = String::new();
    let spec = &report.spec;
    let _ = writeln!(
        out,
        "CertificateRequest:  {}/{}",
        report.namespace, report.name
    );
    let ready = if report.ready {
        "yes".to_owned()
    } else {
        "NO".to_owned()
    };
    let verified = match report.verified {
        None => "not probed",
        Some(true) => "yes",
        Some(false) => "NO",
    };
    let _ = writeln!(out, "Ready:               {ready}");
    let _ = writeln!(out, "Verified:            {verified}");

    let _ = writeln!(out, "Spec:");
    let _ = writeln!(out, "  Secret:            {}", spec.secret_name);
    let _ = writeln!(
        out,
        "  Common name:       {}",
        or_dash(spec.common_name.as_deref())
    );
    let _ = writeln!(out, "  DNS names:         {}", list(&spec.dns_names));
    let _ = writeln!(out, "  IP addresses:      {}", list(&spec.ip_addresses));
    if !spec.uris.is_empty() {
        let _ = writeln!(out, "  URIs:              {}", list(&spec.uris));
    }
    if !spec.email_addresses.is_empty() {
        let _ = writeln!(out, "  Email addresses:   {}", list(&spec.email_addresses));
    }
    let usages: Vec<String> = spec.usages.iter().map(usage_name).collect();
    let _ = writeln!(out, "  Usages:            {}", list(&usages));
    let key = &spec.private_key;
    let algorithm = serde_json::to_value(key.algorithm)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let size = match (key.size, key.algorithm) {
        (Some(s), _) => format!(" {s}"),
        (None, crate::api::KeyAlgorithm::Ecdsa) => " 256".to_owned(),
        (None, crate::api::KeyAlgorithm::Rsa) => " 2048".to_owned(),
        (None, crate::api::KeyAlgorithm::Ed25519) => String::new(),
    };
    let _ = writeln!(
        out,
        "  Key:               {algorithm}{size}, rotation {:?}",
        key.rotation_policy
    );
    let profile = serde_json::to_value(spec.keystore.profile)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let alias = spec.keystore.alias.as_deref().unwrap_or(&report.name);
    let password = match &spec.keystore.password_secret_ref {
        Some(r) => format!("from Secret {} key {}", r.name, r.key),
        None => "generated (key keystore-password)".to_owned(),
    };
    let _ = writeln!(out, "  Keystore:          {profile}, alias {alias}");
    let _ = writeln!(out, "  Password:          {password}");
    let renew_before = spec
        .renew_before
        .clone()
        .unwrap_or_else(|| "a third of the lifetime".to_owned());
    let _ = writeln!(
        out,
        "  Duration:          {}, renew before {renew_before}",
        spec.duration
    );
    if let Some(probe) = &spec.probe {
        let _ = writeln!(
            out,
            "  Probe:             Service {} port {}, every {}",
            probe.service.name, probe.service.port, probe.interval
        );
    }

    let _ = writeln!(out, "Conditions:");
    if report.conditions.is_empty() {
        let _ = writeln!(out, "  (none yet)");
    } else {
        let rows: Vec<Vec<String>> = report
            .conditions
            .iter()
            .map(|c| {
                vec![
                    c.type_.clone(),
                    c.status.clone(),
                    or_dash(Some(&c.reason)).to_owned(),
                    age(now, c.last_transition_time),
                    c.message.clone(),
                ]
            })
            .collect();
        table(
            &mut out,
            &["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"],
            &rows,
        );
    }

    let cert = &report.certificate;
    let _ = writeln!(out, "Certificate:");
    let _ = writeln!(
        out,
        "  Serial:            {}",
        or_dash(cert.serial_number.as_deref())
    );
    let _ = writeln!(
        out,
        "  SHA-256:           {}",
        or_dash(cert.fingerprint_sha256.as_deref())
    );
    let _ = writeln!(
        out,
        "  Revision:          {}",
        cert.revision
            .map_or_else(|| "-".to_owned(), |r| r.to_string())
    );
    let _ = writeln!(out, "  Not before:        {}", when(now, cert.not_before));
    let _ = writeln!(out, "  Not after:         {}", when(now, cert.not_after));
    let _ = writeln!(out, "  Renewal time:      {}", when(now, cert.renewal_time));
    if let Some(n) = cert.failed_attempts {
        let _ = writeln!(
            out,
            "  Failed attempts:   {n} (last {})",
            when(now, cert.last_failure_time)
        );
    }

    let secret = &report.secret;
    let _ = writeln!(out, "Secret {}:", secret.name);
    match secret.exists {
        None => {
            let _ = writeln!(
                out,
                "  Exists:            unknown ({})",
                or_dash(secret.error.as_deref())
            );
        }
        Some(false) => {
            let _ = writeln!(out, "  Exists:            NO");
        }
        Some(true) => {
            let _ = writeln!(out, "  Exists:            yes");
            let _ = writeln!(
                out,
                "  Type:              {}",
                or_dash(secret.type_.as_deref())
            );
            let _ = writeln!(out, "  Keys:              {}", list(&secret.keys));
            let owned = match secret.owned_by_request {
                Some(true) => "yes",
                _ => "NO",
            };
            let _ = writeln!(out, "  Owned by request:  {owned}");
        }
    }

    if report.probe.is_some() || spec.probe.is_some() {
        let _ = writeln!(out, "Probe:");
        match &report.probe {
            None => {
                let _ = writeln!(out, "  (not probed yet)");
            }
            Some(probe) => {
                let _ = writeln!(
                    out,
                    "  Last probe:        {}",
                    when(now, probe.last_probe_time.as_ref().map(|t| t.0))
                );
                if probe.endpoints.is_empty() {
                    let _ = writeln!(out, "  (no endpoints)");
                } else {
                    let rows: Vec<Vec<String>> = probe
                        .endpoints
                        .iter()
                        .map(|e| {
                            vec![
                                e.address.clone(),
                                or_dash(e.pod.as_deref()).to_owned(),
                                if e.verified { "yes" } else { "NO" }.to_owned(),
                                or_dash(Some(&e.reason)).to_owned(),
                                if e.matches_issued { "yes" } else { "NO" }.to_owned(),
                                or_dash(e.tls_version.as_deref()).to_owned(),
                                e.handshake_millis
                                    .map_or_else(|| "-".to_owned(), |ms| format!("{ms}ms")),
                                e.message.clone(),
                            ]
                        })
                        .collect();
                    table(
                        &mut out,
                        &[
                            "ADDRESS",
                            "POD",
                            "VERIFIED",
                            "REASON",
                            "MATCHES-ISSUED",
                            "TLS",
                            "HANDSHAKE",
                            "MESSAGE",
                        ],
                        &rows,
                    );
                }
            }
        }
    }

    if let Some(rollout) = &report.rollout {
        render_rotation(&mut out, now, rollout, spec.probe.is_some());
    }

    let _ = writeln!(out, "Events (newest last):");
    if report.events.is_empty() {
        let _ = writeln!(out, "  (none)");
    } else {
        let rows: Vec<Vec<String>> = report
            .events
            .iter()
            .map(|e| {
                let seen = e.last_seen.map_or_else(|| "-".to_owned(), |t| age(now, t));
                let seen = if e.count > 1 {
                    format!("{seen} (x{})", e.count)
                } else {
                    seen
                };
                vec![seen, e.type_.clone(), e.reason.clone(), e.message.clone()]
            })
            .collect();
        table(&mut out, &["AGE", "TYPE", "REASON", "MESSAGE"], &rows);
    }
    for note in &report.notes {
        let _ = writeln!(out, "Note: {note}");
    }
    if report.problems.is_empty() {
        let _ = writeln!(out, "Result:              ok");
    } else {
        for problem in &report.problems {
            let _ = writeln!(out, "Result:              {problem}");
        }
    }
    out
}
