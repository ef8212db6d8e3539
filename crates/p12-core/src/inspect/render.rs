//! The report for people: one aligned line per fact, then one per check. Pure;
//! uses only the report types.

use std::fmt::Write as _;

use super::report::Report;

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "NO" }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(", ")
    }
}

/// The report for people.
pub fn render_text(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Source:            {}", report.source);
    if let Some(alias) = &report.alias {
        let _ = writeln!(out, "Alias:             {alias}");
    }
    if let Some(cert) = &report.certificate {
        let _ = writeln!(out, "Subject:           {}", cert.subject);
        let _ = writeln!(out, "Issuer:            {}", cert.issuer);
        let _ = writeln!(out, "DNS names:         {}", list(&cert.dns_names));
        let _ = writeln!(out, "IP addresses:      {}", list(&cert.ip_addresses));
        if !cert.uris.is_empty() {
            let _ = writeln!(out, "URIs:              {}", list(&cert.uris));
        }
        if !cert.email_addresses.is_empty() {
            let _ = writeln!(out, "Email addresses:   {}", list(&cert.email_addresses));
        }
        let _ = writeln!(out, "Not before:        {}", cert.not_before);
        let left = if cert.days_left >= 0 {
            format!("{} days left", cert.days_left)
        } else {
            format!("expired {} days ago", -cert.days_left)
        };
        let _ = writeln!(out, "Not after:         {} ({left})", cert.not_after);
        let _ = writeln!(out, "Serial:            {}", cert.serial);
        let _ = writeln!(out, "SHA-256:           {}", cert.fingerprint_sha256);
        let _ = writeln!(out, "Key algorithm:     {}", cert.key_algorithm);
    }
    if let Some(matches) = report.key_matches_certificate {
        let _ = writeln!(out, "Key matches cert:  {}", yes_no(matches));
    }
    if !report.chain.is_empty() {
        let _ = writeln!(out, "Chain ({}):", report.chain.len());
        for (index, link) in report.chain.iter().enumerate() {
            let _ = writeln!(out, "  {index}  {}", link.subject);
            let _ = writeln!(
                out,
                "     issued by {}, expires {}",
                link.issuer, link.not_after
            );
        }
    }
    if !report.truststore.is_empty() {
        let _ = writeln!(out, "Trusted certificates ({}):", report.truststore.len());
        for entry in &report.truststore {
            let _ = writeln!(
                out,
                "  {} {}: {}, expires {}",
                entry.store, entry.alias, entry.subject, entry.not_after
            );
            let _ = writeln!(out, "     SHA-256 {}", entry.fingerprint_sha256);
        }
    }
    if !report.checks.is_empty() {
        let _ = writeln!(out, "Checks:");
        for check in &report.checks {
            let _ = writeln!(
                out,
                "  {:<5} {}",
                if check.ok { "ok" } else { "FAIL" },
                check.message
            );
        }
    }
    for note in &report.notes {
        let _ = writeln!(out, "Note: {note}");
    }
    let _ = writeln!(
        out,
        "Result:            {}",
        if report.ok { "ok" } else { "problems found" }
    );
    out
}
