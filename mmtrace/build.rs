//! Builds the eBPF object (`mmtrace-ebpf`) for the bpf target with the
//! nightly toolchain and bpf-linker; `cargo xtask setup` installs both.
//! Also embeds every file of assets/dashboard/ for `--serve`.
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

/// Every file under `dir` (recursively, hidden ones skipped), sorted.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if p.is_dir() {
            files(&p, out);
        } else if p.is_file() {
            out.push(p);
        }
    }
}

/// Writes `$OUT_DIR/dashboard_assets.rs`: `ASSETS`, (name, bytes) of each
/// file of assets/dashboard/ (names relative to it, `/`-separated).
fn embed_dashboard() -> anyhow::Result<()> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let assets = manifest.join("assets");
    println!("cargo:rerun-if-changed={}", assets.display());
    let dir = assets.join("dashboard");
    let mut found = Vec::new();
    files(&dir, &mut found);
    found.sort();
    let mut src = String::from("pub static ASSETS: &[(&str, &[u8])] = &[\n");
    for p in &found {
        let name = p
            .strip_prefix(&dir)?
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        src.push_str(&format!(
            "    ({name:?}, include_bytes!({:?})),\n",
            p.display().to_string()
        ));
    }
    src.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("dashboard_assets.rs");
    std::fs::write(out, src)?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    embed_dashboard()?;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .join("mmtrace-ebpf");
    let root = root.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [Package {
            name: "mmtrace-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
