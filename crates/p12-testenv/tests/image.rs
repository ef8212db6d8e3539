//! The operator image `scripts/image` builds without Docker must be the image
//! the Dockerfile describes: the same user, entrypoint, cmd and labels, the
//! binary where the Dockerfile copies it (static, root-owned, executable), and
//! no shell. The script reads those settings from the Dockerfile itself; this
//! test parses the Dockerfile independently and reads the built docker-archive,
//! so a change to either side that the other does not follow fails here.
//!
//! It runs `scripts/image operator` first: a no-op (about a second) when the
//! image is up to date; the first run compiles the static musl release binary
//! (5–10 minutes) and needs root, umoci, skopeo and musl-tools.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the crate lives in crates/p12-testenv")
        .to_path_buf()
}

// --- the Dockerfile ----------------------------------------------------------

/// What the Dockerfile's final stage declares about the runtime image.
#[derive(Debug, Default, Clone, PartialEq)]
struct Declared {
    base: String,
    user: String,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    labels: BTreeMap<String, String>,
    /// Where `COPY --from=…` puts the binary.
    copy_dest: String,
}

/// Parses the final stage (after the last FROM) of a Dockerfile: comment lines
/// dropped, `\` continuations joined, instruction names case-insensitive.
fn parse_final_stage(text: &str) -> Result<Declared, String> {
    let mut logical = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match line.trim_end().strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
            }
            None => logical.push(std::mem::take(&mut pending) + line),
        }
    }
    if !pending.is_empty() {
        logical.push(pending);
    }
    let last_from = logical
        .iter()
        .rposition(|l| instruction(l).0 == "FROM")
        .ok_or("no FROM")?;
    let mut d = Declared::default();
    for line in &logical[last_from..] {
        let (name, args) = instruction(line);
        match name.as_str() {
            "FROM" => d.base = args.split_whitespace().next().unwrap_or("").to_string(),
            "USER" => d.user = args.to_string(),
            "ENTRYPOINT" => d.entrypoint = json_array(&name, args)?,
            "CMD" => d.cmd = json_array(&name, args)?,
            "LABEL" => d.labels.extend(pairs(args)?),
            "COPY" => {
                if !d.copy_dest.is_empty() {
                    return Err("more than one COPY in the final stage".into());
                }
                d.copy_dest = args
                    .split_whitespace()
                    .last()
                    .ok_or("COPY without a destination")?
                    .to_string();
            }
            other => {
                return Err(format!(
                    "the final stage has {other}, which scripts/image and this test do not know"
                ));
            }
        }
    }
    Ok(d)
}

fn instruction(line: &str) -> (String, &str) {
    let line = line.trim();
    let (name, args) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    (name.to_ascii_uppercase(), args.trim())
}

fn json_array(name: &str, args: &str) -> Result<Vec<String>, String> {
    serde_json::from_str(args).map_err(|e| format!("{name} is not a JSON array of strings: {e}"))
}

/// `k="v" k2=v2` (values quoted with `\` escapes, or bare).
fn pairs(args: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = args.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|&c| c != '=')).collect();
        if chars.next() != Some('=') {
            return Err(format!("LABEL {key} has no value"));
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => return Err(format!("LABEL {key}: unterminated quote")),
                }
            }
        } else {
            value.extend(std::iter::from_fn(|| chars.next_if(|c| !c.is_whitespace())));
        }
        out.push((key.trim().to_string(), value));
    }
}

/// Every way the image's config differs from what the Dockerfile declares.
fn config_mismatches(d: &Declared, config: &Value) -> Vec<String> {
    let c = &config["config"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    if c["User"].as_str() != Some(d.user.as_str()) {
        out.push(format!(
            "User: Dockerfile {:?}, image {}",
            d.user, c["User"]
        ));
    }
    if strings(&c["Entrypoint"]) != d.entrypoint {
        out.push(format!(
            "Entrypoint: Dockerfile {:?}, image {}",
            d.entrypoint, c["Entrypoint"]
        ));
    }
    if strings(&c["Cmd"]) != d.cmd {
        out.push(format!("Cmd: Dockerfile {:?}, image {}", d.cmd, c["Cmd"]));
    }
    let labels: BTreeMap<String, String> = c["Labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    let keys: std::collections::BTreeSet<&String> = d.labels.keys().chain(labels.keys()).collect();
    for key in keys {
        if d.labels.get(key) != labels.get(key) {
            out.push(format!(
                "label {key}: Dockerfile {:?}, image {:?}",
                d.labels.get(key),
                labels.get(key)
            ));
        }
    }
    if d.entrypoint.first() != Some(&d.copy_dest) {
        out.push(format!(
            "the entrypoint {:?} is not the copied binary {}",
            d.entrypoint, d.copy_dest
        ));
    }
    out
}

// --- tar ---------------------------------------------------------------------

/// One member of a tar archive (ustar, with PAX and GNU long names).
struct Entry {
    path: String,
    kind: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    link: String,
    data: Vec<u8>,
}

fn octal(field: &[u8]) -> u64 {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // GNU base-256 for values that do not fit in octal.
        return field[1..].iter().fold(0, |n, &b| (n << 8) | u64::from(b));
    }
    let text = String::from_utf8_lossy(field);
    u64::from_str_radix(text.trim_matches(|c: char| c == '\0' || c == ' '), 8).unwrap_or(0)
}

fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// `./a/b/`, `/a/b` and `a/b` are the same path.
fn clean(path: &str) -> String {
    path.trim_start_matches("./")
        .trim_start_matches('/')
        .trim_end_matches('/')
        .to_string()
}

fn tar_entries(bytes: &[u8]) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut pos = 0;
    let mut long_name: Option<String> = None;
    let mut pax: BTreeMap<String, String> = BTreeMap::new();
    while pos + 512 <= bytes.len() {
        let h = &bytes[pos..pos + 512];
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let size = octal(&h[124..136]) as usize;
        let data_start = pos + 512;
        let data = bytes[data_start..(data_start + size).min(bytes.len())].to_vec();
        pos = data_start + size.div_ceil(512) * 512;
        match h[156] {
            b'L' => {
                long_name = Some(cstr(&data));
                continue;
            }
            b'x' => {
                pax = pax_records(&data);
                continue;
            }
            b'g' => continue,
            _ => {}
        }
        let mut path = cstr(&h[0..100]);
        if &h[257..262] == b"ustar" {
            let prefix = cstr(&h[345..500]);
            if !prefix.is_empty() {
                path = format!("{prefix}/{path}");
            }
        }
        let path = pax.remove("path").or(long_name.take()).unwrap_or(path);
        let link = pax.remove("linkpath").unwrap_or_else(|| cstr(&h[157..257]));
        let num = |key: &str, field: &[u8]| {
            pax.get(key)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| octal(field))
        };
        out.push(Entry {
            path: clean(&path),
            kind: h[156],
            mode: octal(&h[100..108]) as u32,
            uid: num("uid", &h[108..116]),
            gid: num("gid", &h[116..124]),
            link,
            data,
        });
        pax.clear();
    }
    out
}

/// PAX records: `<len> <key>=<value>\n`.
fn pax_records(data: &[u8]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = data;
    while let Some(space) = rest.iter().position(|&b| b == b' ') {
        let Ok(len) = String::from_utf8_lossy(&rest[..space]).parse::<usize>() else {
            break;
        };
        if len == 0 || len > rest.len() {
            break;
        }
        let record = String::from_utf8_lossy(&rest[space + 1..len - 1]).into_owned();
        if let Some((k, v)) = record.split_once('=') {
            out.insert(k.to_string(), v.to_string());
        }
        rest = &rest[len..];
    }
    out
}

/// A member of the archive by path, following a symbolic link (docker-archive
/// links `<id>/layer.tar` to the layer file).
fn member<'a>(entries: &'a [Entry], path: &str) -> &'a Entry {
    let e = entries
        .iter()
        .find(|e| e.path == clean(path))
        .unwrap_or_else(|| panic!("the archive has no {path}"));
    if e.kind == b'2' {
        let dir = Path::new(&e.path).parent().unwrap_or(Path::new(""));
        return member(entries, &dir.join(&e.link).to_string_lossy());
    }
    e
}

// --- ELF -----------------------------------------------------------------------

/// Why an executable is not a static x86-64 ELF, if it is not: one with a
/// PT_INTERP program header needs a dynamic loader the image does not have.
fn not_static_elf(bin: &[u8]) -> Option<String> {
    if bin.len() < 64 || &bin[..4] != b"\x7fELF" {
        return Some("not an ELF file".into());
    }
    if bin[4] != 2 || bin[5] != 1 {
        return Some("not a 64-bit little-endian ELF".into());
    }
    let u16_at = |o: usize| u16::from_le_bytes([bin[o], bin[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(bin[32..40].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let Some(p_type) = bin.get(at..at + 4) else {
            return Some("program headers past the end of the file".into());
        };
        if u32::from_le_bytes(p_type.try_into().expect("4 bytes")) == 3 {
            return Some("it has PT_INTERP: dynamically linked".into());
        }
    }
    None
}

// --- versions ------------------------------------------------------------------

fn workspace_version(root: &Path) -> String {
    let toml = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    let section = toml
        .split("[workspace.package]")
        .nth(1)
        .expect("a [workspace.package] section");
    section
        .lines()
        .find_map(|l| l.trim().strip_prefix("version"))
        .and_then(|l| l.split('"').nth(1))
        .expect("a workspace version")
        .to_string()
}

fn chart_app_version(root: &Path) -> String {
    let chart = std::fs::read_to_string(root.join("charts/p12-operator/Chart.yaml"))
        .expect("charts/p12-operator/Chart.yaml");
    chart
        .lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .map(|v| v.trim().trim_matches('"').to_string())
        .expect("an appVersion")
}

// --- tests ---------------------------------------------------------------------

fn build_operator_image(root: &Path) -> PathBuf {
    let out = Command::new(root.join("scripts/image"))
        .arg("operator")
        // Progress (and a cold build's cargo output) shows as it happens.
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/image starts");
    assert!(
        out.status.success(),
        "scripts/image operator failed ({}); its messages are above",
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("scripts/image prints the archive's path"),
    )
}

#[test]
fn the_built_operator_image_is_what_the_dockerfile_declares() {
    let root = repo_root();
    let declared = parse_final_stage(
        &std::fs::read_to_string(root.join("Dockerfile")).expect("the Dockerfile"),
    )
    .expect("the Dockerfile's final stage parses");
    let archive = build_operator_image(&root);
    let outer = tar_entries(&std::fs::read(&archive).expect("the archive"));

    let manifest: Value = serde_json::from_slice(&member(&outer, "manifest.json").data)
        .expect("manifest.json is JSON");
    let image = &manifest[0];
    let version = workspace_version(&root);
    assert_eq!(
        image["RepoTags"],
        json!([format!("ghcr.io/p12-operator/p12-operator:{version}")]),
        "the image name is the Helm chart's default image"
    );
    assert_eq!(
        chart_app_version(&root),
        version,
        "the chart's appVersion (its default image tag) is the workspace version"
    );
    let config: Value = serde_json::from_slice(
        &member(&outer, image["Config"].as_str().expect("a config file")).data,
    )
    .expect("the config is JSON");
    let mismatches = config_mismatches(&declared, &config);
    assert!(
        mismatches.is_empty(),
        "{} differs from the Dockerfile:\n  {}",
        archive.display(),
        mismatches.join("\n  ")
    );

    // The image's files: later layers override earlier ones.
    let mut files: BTreeMap<String, Entry> = BTreeMap::new();
    for layer in image["Layers"].as_array().expect("layers") {
        for e in tar_entries(&member(&outer, layer.as_str().expect("a layer path")).data) {
            files.insert(e.path.clone(), e);
        }
    }
    let bin = files
        .get(&clean(&declared.copy_dest))
        .unwrap_or_else(|| panic!("no {} in the image", declared.copy_dest));
    assert!(
        matches!(bin.kind, b'0' | 0),
        "{} is not a regular file",
        declared.copy_dest
    );
    assert_eq!(
        (bin.uid, bin.gid),
        (0, 0),
        "the binary is root's: user 65532 cannot change it"
    );
    assert_eq!(bin.mode & 0o777, 0o755, "the binary is rwxr-xr-x");
    if let Some(why) = not_static_elf(&bin.data) {
        panic!("{} is not a static ELF: {why}", declared.copy_dest);
    }
    let shells = ["sh", "bash", "dash", "ash", "busybox"];
    let shell: Vec<_> = files
        .keys()
        .filter(|p| shells.iter().any(|s| p.rsplit('/').next() == Some(s)))
        .collect();
    assert!(shell.is_empty(), "the image has a shell: {shell:?}");
    let uid = declared.user.split(':').next().unwrap_or_default();
    let passwd =
        String::from_utf8_lossy(&files.get("etc/passwd").expect("/etc/passwd").data).into_owned();
    assert!(
        passwd.lines().any(|l| l.split(':').nth(2) == Some(uid)),
        "/etc/passwd has no user {uid}:\n{passwd}"
    );
    let ca = files
        .get("etc/ssl/certs/ca-certificates.crt")
        .expect("the CA bundle");
    assert!(String::from_utf8_lossy(&ca.data).contains("BEGIN CERTIFICATE"));
}

const SAMPLE: &str = r#"# syntax=docker/dockerfile:1
FROM rust AS build
RUN cargo build
# the runtime
from scratch
LABEL a="one two" \
      # a comment inside a continuation is dropped
      b=three
LABEL c="say \"hi\""
COPY --from=build /out/app /app
USER 1:2
ENTRYPOINT ["/app"]
CMD ["run", "--fast"]
"#;

#[test]
fn the_final_stage_of_a_dockerfile_is_parsed() {
    let d = parse_final_stage(SAMPLE).expect("parses");
    assert_eq!(
        d,
        Declared {
            base: "scratch".into(),
            user: "1:2".into(),
            entrypoint: vec!["/app".into()],
            cmd: vec!["run".into(), "--fast".into()],
            labels: [("a", "one two"), ("b", "three"), ("c", "say \"hi\"")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            copy_dest: "/app".into(),
        }
    );
    let with_run = SAMPLE.replace("USER 1:2", "RUN rm -rf /\nUSER 1:2");
    assert!(parse_final_stage(&with_run).unwrap_err().contains("RUN"));
}

/// The image config scripts/image would write for `d`.
fn config_for(d: &Declared) -> Value {
    json!({"config": {"User": d.user, "Entrypoint": d.entrypoint, "Cmd": d.cmd, "Labels": d.labels}})
}

#[test]
fn a_label_changed_in_the_dockerfile_alone_is_reported() {
    let text = std::fs::read_to_string(repo_root().join("Dockerfile")).expect("the Dockerfile");
    let built_from = parse_final_stage(&text).expect("parses");
    let image = config_for(&built_from);
    assert_eq!(config_mismatches(&built_from, &image), Vec::<String>::new());

    let edited = text.replace(
        r#"org.opencontainers.image.title="p12-operator""#,
        r#"org.opencontainers.image.title="p12-operator-next""#,
    );
    assert_ne!(edited, text, "the Dockerfile still has the title label");
    let mismatches = config_mismatches(&parse_final_stage(&edited).expect("parses"), &image);
    assert_eq!(mismatches.len(), 1, "{mismatches:?}");
    assert!(
        mismatches[0].contains("org.opencontainers.image.title")
            && mismatches[0].contains("p12-operator-next"),
        "{mismatches:?}"
    );

    let mut moved = built_from.clone();
    moved.copy_dest = "/usr/bin/p12-operator".into();
    assert!(
        config_mismatches(&moved, &image)
            .iter()
            .any(|m| m.contains("not the copied binary"))
    );
}

#[test]
fn an_elf_with_an_interpreter_is_not_static() {
    // A minimal 64-bit ELF header with one PT_INTERP program header.
    let mut elf = vec![0u8; 64 + 56];
    elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
    elf[32..40].copy_from_slice(&64u64.to_le_bytes());
    elf[54..56].copy_from_slice(&56u16.to_le_bytes());
    elf[56..58].copy_from_slice(&1u16.to_le_bytes());
    elf[64..68].copy_from_slice(&3u32.to_le_bytes());
    assert!(not_static_elf(&elf).unwrap().contains("PT_INTERP"));
    elf[64..68].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    assert_eq!(not_static_elf(&elf), None);
    assert!(not_static_elf(b"#!/bin/sh\n").is_some());
}
