//! Embeds every definition file under `deploy/nats/` (streams, consumers, KV buckets), so adding
//! a definition is adding a file.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn main() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats");
    let mut out = String::new();
    for (name, dir) in [
        ("STREAM_FILES", "streams"),
        ("CONSUMER_FILES", "consumers"),
        ("KV_FILES", "kv"),
    ] {
        writeln!(out, "const {name}: &[(&str, &str)] = &[").unwrap();
        for file in files(&deploy.join(dir)) {
            let path = file.canonicalize().unwrap();
            println!("cargo:rerun-if-changed={}", path.display());
            writeln!(
                out,
                "    ({:?}, include_str!({:?})),",
                file.file_name().unwrap().to_string_lossy(),
                path.display().to_string()
            )
            .unwrap();
        }
        writeln!(out, "];").unwrap();
    }
    let dest = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("definitions.rs");
    std::fs::write(dest, out).unwrap();
}
