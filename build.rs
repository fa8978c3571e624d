//! Build script: embeds the dashboard (`web/`) into the binary, so `tickgate` serves it from
//! any directory. Files under the configured `server.web_root` still win when that directory
//! exists. The chart library (npm's `lightweight-charts`, installed by `scripts/setup`) is
//! embedded when it is installed at build time; otherwise the binary answers its URL with a
//! 404 that says how to install it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The chart library's self-contained ES module inside the dashboard's npm install.
const CHART_MODULE: &str =
    "node_modules/lightweight-charts/dist/lightweight-charts.standalone.production.mjs";

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // npm's install tree, its manifests and the JavaScript tests are not part of the site.
        if matches!(
            name,
            "node_modules" | "test" | "package.json" | "package-lock.json"
        ) || name.starts_with('.')
        {
            continue;
        }
        if path.is_dir() {
            collect(root, &path, out);
        } else if let Ok(relative) = path.strip_prefix(root) {
            let relative = relative.to_string_lossy().replace('\\', "/");
            out.push((relative, path));
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let web = manifest.join("web");
    let mut files = Vec::new();
    collect(&web, &web, &mut files);
    let chart = web.join(CHART_MODULE);
    let chart_embedded = chart.is_file();
    let mut code = String::from(
        "/// The dashboard's files, embedded at build time: (path under `web/`, bytes).\n\
         pub(crate) static WEB_ASSETS: &[(&str, &[u8])] = &[\n",
    );
    for (relative, path) in &files {
        let _ = writeln!(code, "    ({relative:?}, include_bytes!({path:?})),");
    }
    code.push_str("];\n\n/// The chart library's module, when it was installed at build time.\n");
    if chart_embedded {
        let _ = writeln!(
            code,
            "pub(crate) static CHART_MODULE: Option<&[u8]> = Some(include_bytes!({chart:?}));"
        );
    } else {
        code.push_str("pub(crate) static CHART_MODULE: Option<&[u8]> = None;\n");
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default());
    if let Err(error) = std::fs::write(out.join("web_assets.rs"), code) {
        panic!("could not write web_assets.rs: {error}");
    }
    // A directory is scanned as a whole, so new files and an npm install are noticed.
    println!("cargo:rerun-if-changed=web");
    println!("cargo:rerun-if-changed=build.rs");
}
