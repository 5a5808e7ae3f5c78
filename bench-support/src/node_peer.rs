//! The Node.js peer of the specification's architecture
//! (`../shared/peers/node-seed-tick` beside the workspace, or
//! `LOCKSTEP_NODE_PEER`), run beside Lockstep's benches in the same run.

use crate::paths::workspace_root;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `(variant, N)` → `(p50, p99)` µs.
pub type PeerResults = BTreeMap<(String, u64), (f64, f64)>;

/// A prepared copy of the peer.
#[derive(Debug)]
pub struct NodePeer {
    dir: PathBuf,
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let name = e.file_name();
        if name == "node_modules" {
            continue;
        }
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &to.join(&name))?;
        } else {
            std::fs::copy(e.path(), to.join(&name))?;
        }
    }
    Ok(())
}

impl NodePeer {
    /// Copies the peer to `scratch/node-peer` and installs its dependencies.
    pub fn prepare(scratch: &Path) -> Result<Self, String> {
        let src = std::env::var_os("LOCKSTEP_NODE_PEER").map_or_else(
            || {
                let local = workspace_root().join("../shared/peers/node-seed-tick");
                if local.is_dir() {
                    local
                } else {
                    PathBuf::from("/work/shared/peers/node-seed-tick")
                }
            },
            PathBuf::from,
        );
        if !src.join("bench.mjs").is_file() {
            return Err(format!(
                "no Node.js peer at {} (set LOCKSTEP_NODE_PEER)",
                src.display()
            ));
        }
        for tool in ["node", "npm"] {
            let ok = Command::new(tool)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
            if !ok {
                return Err(format!("`{tool}` is not installed"));
            }
        }
        let dir = scratch.join("node-peer");
        copy_dir(&src, &dir).map_err(|e| format!("copying the peer: {e}"))?;
        let out = Command::new("npm")
            .args(["install", "--silent"])
            .current_dir(&dir)
            .output()
            .map_err(|e| format!("npm install: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "npm install failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Self { dir })
    }

    /// One run of the peer: (variant, N) → (p50, p99) µs.
    pub fn run(&self, sizes: &[u64]) -> Result<PeerResults, String> {
        let sizes: Vec<String> = sizes.iter().map(u64::to_string).collect();
        let out = Command::new("node")
            .arg("bench.mjs")
            .arg(sizes.join(","))
            .current_dir(&self.dir)
            .output()
            .map_err(|e| format!("node: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "node bench.mjs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let mut res = BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(rest) = line.strip_prefix("RESULT ") else {
                continue;
            };
            let kv: BTreeMap<&str, &str> = rest
                .split_whitespace()
                .filter_map(|f| f.split_once('='))
                .collect();
            let (Some(peer), Some(n), Some(p50), Some(p99)) = (
                kv.get("peer"),
                kv.get("N"),
                kv.get("p50_us"),
                kv.get("p99_us"),
            ) else {
                continue;
            };
            let (Ok(n), Ok(p50), Ok(p99)) = (n.parse(), p50.parse(), p99.parse()) else {
                continue;
            };
            let variant = peer.trim_start_matches("node-2workers-").to_owned();
            res.insert((variant, n), (p50, p99));
        }
        if res.is_empty() {
            return Err("the peer printed no RESULT line".into());
        }
        Ok(res)
    }
}
