//! Tidy checks on the source tree (in the spirit of rust-analyzer's `tidy.rs`): the layering
//! rules of docs/ARCHITECTURE.md ("never" lines), a `//!` header on every module, and a size
//! limit per file. A failure names each offending file and the rule it breaks.

use std::fmt;
use std::path::{Path, PathBuf};

/// Domain modules and the modules above them they must never import.
const LAYERS: &[(&str, &[&str])] = &[
    ("ingest", UPPER_LAYERS),
    ("hub", UPPER_LAYERS),
    ("trading", UPPER_LAYERS),
    ("store", UPPER_LAYERS),
    ("cluster", UPPER_LAYERS),
];

/// The application shell: wiring, shared state, HTTP routes and wire transports.
const UPPER_LAYERS: &[&str] = &["state", "startup", "routes", "transport"];

/// Crates that are a transport; the hub encodes for the wire but never touches one.
const TRANSPORT_CRATES: &[&str] = &[
    "actix_web",
    "actix_ws",
    "actix_http",
    "actix_files",
    "actix_server",
    "actix_service",
    "actix_codec",
];

const MAX_LINES: usize = 800;

/// Files allowed above `MAX_LINES`, with the reason.
const LONG_FILES: &[(&str, &str)] = &[(
    "src/trading/engine.rs",
    "the pure matching engine, one state machine; split when next touched",
)];

#[derive(Debug, PartialEq, Eq)]
struct Violation {
    file: String,
    rule: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.rule)
    }
}

#[test]
fn the_source_tree_keeps_its_layering_headers_and_file_sizes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = rust_files(&root.join("src"));
    files.extend(rust_files(&root.join("loadgen/src")));
    let mut violations = Vec::new();
    for path in &files {
        let relative = path
            .strip_prefix(root)
            .unwrap_or(path)
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|error| panic!("cannot read {relative}: {error}"));
        violations.extend(check_file(&relative, &text));
    }
    assert!(
        violations.is_empty(),
        "{} tidy violation(s):\n{}",
        violations.len(),
        violations
            .iter()
            .map(|v| format!("  {v}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The checker itself, on made-up files: each rule reports its file, and clean files pass.
#[test]
fn the_tidy_rules_name_the_file_and_the_rule_they_catch() {
    let upward = check_file(
        "src/ingest/poller.rs",
        "//! Polls.\nuse crate::{market::Quote, state::AppState};\nuse crate::hub::Hub;\n",
    );
    assert_eq!(
        upward,
        vec![Violation {
            file: "src/ingest/poller.rs".into(),
            rule: "imports `crate::state` (ingest never imports state, startup, routes, transport)"
                .into(),
        }]
    );

    let hub = check_file(
        "src/hub/entry.rs",
        "//! Entries.\nuse actix_web::web::Bytes;\nfn f() { crate::transport::sse::frame(); }\n",
    );
    assert_eq!(hub.len(), 2, "{hub:?}");
    assert!(
        hub.iter().any(|v| v.rule.contains("`crate::transport`")),
        "{hub:?}"
    );
    assert!(
        hub.iter().any(|v| v.rule.contains("`actix_web`")),
        "{hub:?}"
    );

    let headless = check_file("loadgen/src/stats.rs", "use std::fmt;\n");
    assert_eq!(headless.len(), 1);
    assert!(headless[0].rule.contains("`//!`"), "{headless:?}");

    let long = "//! Long.\n".to_string() + &"fn f() {}\n".repeat(MAX_LINES);
    let too_long = check_file("src/hub/queue.rs", &long);
    assert_eq!(too_long.len(), 1);
    assert!(too_long[0].rule.contains("801 lines"), "{too_long:?}");
    assert!(check_file("src/trading/engine.rs", &long).is_empty());

    // Comments may mention the upper layers; routes may import the hub and state.
    assert!(
        check_file(
            "src/store/mod.rs",
            "//! Not `crate::state`.\n// crate::routes\n"
        )
        .is_empty()
    );
    assert!(
        check_file(
            "src/routes/mod.rs",
            "//! Routes.\nuse crate::state::AppState;\n"
        )
        .is_empty()
    );
}

fn check_file(relative: &str, text: &str) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut report = |rule: String| {
        violations.push(Violation {
            file: relative.to_string(),
            rule,
        })
    };

    if !text.starts_with("//!") {
        report("does not open with a `//!` line saying what the module owns".into());
    }

    if relative.starts_with("src/") {
        let lines = text.lines().count();
        if lines > MAX_LINES && !LONG_FILES.iter().any(|(file, _)| *file == relative) {
            report(format!("{lines} lines, above the limit of {MAX_LINES}"));
        }
    }

    if let Some((module, forbidden)) = LAYERS
        .iter()
        .find(|(module, _)| in_module(relative, module))
    {
        let code = without_comments(text);
        let imported = crate_paths(&code);
        for upper in forbidden.iter() {
            if imported.iter().any(|name| name == upper) {
                report(format!(
                    "imports `crate::{upper}` ({module} never imports {})",
                    forbidden.join(", ")
                ));
            }
        }
        if *module == "hub" {
            for transport in TRANSPORT_CRATES {
                if mentions_path_root(&code, transport) {
                    report(format!("uses `{transport}` (the hub imports no transport)"));
                }
            }
        }
    }
    violations
}

/// Whether `relative` is module `module` of the crate: `src/<module>.rs` or under
/// `src/<module>/`.
fn in_module(relative: &str, module: &str) -> bool {
    relative == format!("src/{module}.rs") || relative.starts_with(&format!("src/{module}/"))
}

/// `text` with `//` comments (doc comments too) removed, line by line. String literals that
/// contain `//` are cut short, which only hides code from the check, never invents any.
fn without_comments(text: &str) -> String {
    text.lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first segment of every `crate::…` path in `code`, including each item of a
/// `crate::{a, b::c}` group.
fn crate_paths(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let preceded_by_ident = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$');
        rest = &rest[at + "crate::".len()..];
        if preceded_by_ident {
            continue;
        }
        let trimmed = rest.trim_start();
        if let Some(group) = trimmed.strip_prefix('{') {
            names.extend(group_heads(group));
        } else {
            names.push(identifier(trimmed));
        }
    }
    names
}

/// The first identifier of each top-level item of a `{…}` use group (the text after `{`).
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0usize;
    let mut item = String::new();
    for c in group.chars() {
        match c {
            '{' => {
                depth += 1;
                item.push(c);
            }
            '}' if depth == 0 => break,
            '}' => {
                depth -= 1;
                item.push(c);
            }
            ',' if depth == 0 => heads.push(identifier(item.trim_start())),
            _ => item.push(c),
        }
        if c == ',' && depth == 0 {
            item.clear();
        }
    }
    heads.push(identifier(item.trim_start()));
    heads.retain(|head| !head.is_empty());
    heads
}

fn identifier(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Whether `code` names the crate `root` as the start of a path (`root::…`).
fn mentions_path_root(code: &str, root: &str) -> bool {
    code.match_indices(&format!("{root}::")).any(|(at, _)| {
        !code[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
    })
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|error| panic!("cannot list {}: {error}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}
