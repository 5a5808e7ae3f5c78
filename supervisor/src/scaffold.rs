//! `lockstep new <name> --lang rust|c|ts`: a ready-to-build agent in a
//! directory of its own, anywhere (in the checkout or outside it), from
//! the templates in `agents/templates/` — no workspace file to edit.
//!
//! The directory gets the agent's source, `build.sh` (one command: builds
//! `<name>.wasm` next to it and prints its path) and `agent.toml` (the
//! manifest lines that run it).  The templates refer to this checkout's
//! SDKs by absolute path (the Rust crate, the C header, the AssemblyScript
//! SDK by a path relative to the agent, as the compiler wants).

use std::path::{Component, Path, PathBuf};

/// The language of a new agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust (`no_std`, the `lockstep-agent-sdk` crate).
    Rust,
    /// C (`agents/c/lockstep_agent.h`).
    C,
    /// TypeScript (AssemblyScript, `agents/ts/sdk`).
    Ts,
}

const RUST_CARGO: &str = include_str!("../../agents/templates/rust/Cargo.toml.tmpl");
const RUST_LIB: &str = include_str!("../../agents/templates/rust/lib.rs.tmpl");
const RUST_BUILD: &str = include_str!("../../agents/templates/rust/build.sh.tmpl");
const C_AGENT: &str = include_str!("../../agents/templates/c/agent.c.tmpl");
const C_BUILD: &str = include_str!("../../agents/templates/c/build.sh.tmpl");
const TS_AGENT: &str = include_str!("../../agents/templates/ts/agent.ts.tmpl");
const TS_BUILD: &str = include_str!("../../agents/templates/ts/build.sh.tmpl");

/// What `new` made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The agent's directory.
    pub dir: PathBuf,
    /// Its build script.
    pub build: PathBuf,
    /// The module the build writes.
    pub module: PathBuf,
    /// The manifest lines that run it.
    pub manifest_lines: String,
}

/// Whether `name` can name an agent, a crate and a file: a lowercase
/// letter, then lowercase letters, digits, `-` or `_` (at most 48).
fn check_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= 48
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "agent name {name:?}: a lowercase letter, then lowercase letters, digits, `-` or `_` (at most 48)"
        ))
    }
}

/// The checkout's `agents/` directory: `sdk` if given, else the first
/// ancestor of the running binary or of the current directory that holds
/// `agents/sdk/Cargo.toml`.
pub fn find_agents_dir(sdk: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = sdk {
        let p = std::fs::canonicalize(p).map_err(|e| format!("--sdk {}: {e}", p.display()))?;
        return if p.join("sdk/Cargo.toml").is_file() {
            Ok(p)
        } else {
            Err(format!(
                "--sdk {}: not a Lockstep agents directory (no sdk/Cargo.toml)",
                p.display()
            ))
        };
    }
    let mut starts = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        starts.push(exe);
    }
    if let Ok(cwd) = std::env::current_dir() {
        starts.push(cwd);
    }
    for s in starts {
        for dir in s.ancestors() {
            if dir.join("agents/sdk/Cargo.toml").is_file() {
                return std::fs::canonicalize(dir.join("agents")).map_err(|e| e.to_string());
            }
        }
    }
    Err("cannot find the Lockstep agent SDKs (agents/sdk): run from a checkout, or pass --sdk <checkout>/agents".to_owned())
}

/// `to` relative to the directory `from` (both absolute), `./`-prefixed.
fn relative(from: &Path, to: &Path) -> String {
    let a: Vec<Component<'_>> = from.components().collect();
    let b: Vec<Component<'_>> = to.components().collect();
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut parts: Vec<String> = vec!["..".to_owned(); a.len() - common];
    parts.extend(
        b[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    if parts.first().is_none_or(|p| p != "..") {
        parts.insert(0, ".".to_owned());
    }
    parts.join("/")
}

/// Creates agent `name` in `<parent>/<name>` (which must not exist, or be
/// empty) from the templates, with the SDKs of `agents`.
pub fn create(name: &str, lang: Lang, parent: &Path, agents: &Path) -> Result<Created, String> {
    check_name(name)?;
    std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let parent = std::fs::canonicalize(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let dir = parent.join(name);
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(format!("{}: exists and is not empty", dir.display()));
    }
    let repo = agents.parent().unwrap_or(agents);
    let crate_name = name.replace('-', "_");
    let fill = |t: &str| {
        t.replace("{{name}}", name)
            .replace("{{crate}}", &crate_name)
            .replace("{{rust_sdk}}", &agents.join("sdk").display().to_string())
            .replace("{{c_sdk}}", &agents.join("c").display().to_string())
            .replace("{{ts_root}}", &agents.join("ts").display().to_string())
            .replace("{{ts_sdk_rel}}", &relative(&dir, &agents.join("ts/sdk")))
            .replace("{{repo}}", &repo.display().to_string())
    };
    let files: Vec<(PathBuf, &str)> = match lang {
        Lang::Rust => vec![
            (dir.join("Cargo.toml"), RUST_CARGO),
            (dir.join("src/lib.rs"), RUST_LIB),
            (dir.join("build.sh"), RUST_BUILD),
        ],
        Lang::C => vec![
            (dir.join(format!("{name}.c")), C_AGENT),
            (dir.join("build.sh"), C_BUILD),
        ],
        Lang::Ts => vec![
            (dir.join(format!("{name}.ts")), TS_AGENT),
            (dir.join("build.sh"), TS_BUILD),
        ],
    };
    let module = dir.join(format!("{name}.wasm"));
    let manifest_lines = format!(
        "[[agents]]\nname = \"{name}\"\nmodule = \"{}\"\n",
        module.display()
    );
    let write = |p: &Path, text: &str| -> Result<(), String> {
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        std::fs::write(p, text).map_err(|e| format!("{}: {e}", p.display()))
    };
    for (p, t) in &files {
        write(p, &fill(t))?;
    }
    write(&dir.join("agent.toml"), &manifest_lines)?;
    let build = dir.join("build.sh");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&build, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("{}: {e}", build.display()))?;
    }
    Ok(Created {
        dir,
        build,
        module,
        manifest_lines,
    })
}

/// Runs the agent's `build.sh`; returns the module's path.
pub fn build(c: &Created) -> Result<PathBuf, String> {
    let out = std::process::Command::new(&c.build)
        .current_dir(&c.dir)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("{}: {e}", c.build.display()))?;
    if !out.status.success() || !c.module.is_file() {
        return Err(format!("{} failed ({})", c.build.display(), out.status));
    }
    Ok(c.module.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_fit_a_crate_and_a_file() {
        for ok in ["hello", "a1", "my-agent", "x_y"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Hello", "1a", "a b", "a/b", "../x", &"a".repeat(49)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn relative_paths_go_up_then_down() {
        let r = |a: &str, b: &str| relative(Path::new(a), Path::new(b));
        assert_eq!(
            r("/tmp/x/hello", "/repo/agents/ts/sdk"),
            "../../../repo/agents/ts/sdk"
        );
        assert_eq!(r("/repo/agents/ts/hello", "/repo/agents/ts/sdk"), "../sdk");
        assert_eq!(r("/repo", "/repo/agents/ts/sdk"), "./agents/ts/sdk");
    }

    #[test]
    fn every_template_is_filled_in() {
        let dir = tempfile::Builder::new()
            .prefix("lockstep-scaffold-")
            .tempdir()
            .unwrap();
        let tmp = dir.path();
        let agents = tmp.join("checkout/agents");
        std::fs::create_dir_all(agents.join("sdk")).unwrap();
        for lang in [Lang::Rust, Lang::C, Lang::Ts] {
            let c = create("hello-1", lang, &tmp.join(format!("{lang:?}")), &agents).unwrap();
            for e in walk(&c.dir) {
                let text = std::fs::read_to_string(&e).unwrap();
                assert!(!text.contains("{{"), "{}: {text}", e.display());
            }
            assert!(c.manifest_lines.contains("name = \"hello-1\""));
            assert!(create("hello-1", lang, &tmp.join(format!("{lang:?}")), &agents).is_err());
        }
    }

    fn walk(d: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(d).unwrap().flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
        out
    }
}
