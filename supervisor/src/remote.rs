//! Worker slots placed on other machines: `lockstep-node` over NATS.
//!
//! A run given `--nats nats://host:port --nodes a,b,local` places its shared
//! worker slots on those nodes in turn (slot `i` on `nodes[i % len]`;
//! `local` keeps a slot on this machine; compile steps, bisection probes
//! and the workers of isolated tenants always run here).  For a slot on a
//! node the pool starts `lockstep-node` as the slot's child instead of
//! `lockstep-worker` — the bridge, which asks the node for a sandboxed
//! worker and relays the worker protocol over NATS — and everything else
//! (the handshake, the heartbeat, the tick state machine, recovery) is what
//! it is for a local worker.  Placement never changes results; it is
//! recorded in the run directory's `meta.json`, not in the journal, whose
//! bytes are the same wherever the workers ran.
//!
//! When a node is lost its bridge exits (code 82), recovery starts a new
//! bridge for the slot, and that bridge asks the slot's node first and then
//! every other node of the list in turn: a run survives losing machines as
//! long as one node of its list still answers.

use crate::child::locate_binary;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// The name in a node list that keeps a slot on this machine.
pub const LOCAL: &str = "local";

/// Where a run's remote worker slots go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteWorkers {
    /// The NATS server.
    pub nats: String,
    /// Node per slot, in turn (`local`: this machine).
    pub nodes: Vec<String>,
    /// The bridge binary (`lockstep-node`).
    pub node_bin: PathBuf,
}

/// Whether `s` can be a node name, an archive name or a link id: one NATS
/// subject word of letters, digits, `-` and `_` (at most 64).
pub fn is_subject_word(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The server list of `--nats`: one `nats://HOST:PORT` (or `tls://…`,
/// with `user:password@` before the host where the server wants it), or a
/// cluster's servers separated by commas.
fn parse_nats(nats: &str) -> Result<String, String> {
    let mut out = Vec::new();
    for one in nats.split(',').map(str::trim) {
        let (scheme, addr) = match one.split_once("://") {
            Some((s @ ("nats" | "tls"), a)) => (s, a),
            Some(_) => return Err(format!("--nats {one:?}: the scheme is nats:// or tls://")),
            None => ("nats", one),
        };
        let hostport = addr.rsplit_once('@').map_or(addr, |(_, h)| h);
        match hostport.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                out.push(format!("{scheme}://{addr}"));
            }
            _ => return Err(format!("--nats {one:?}: expected nats://HOST:PORT")),
        }
    }
    Ok(out.join(","))
}

/// Checks a node list given with `flag`.
fn check_nodes(flag: &str, nodes: &[String]) -> Result<(), String> {
    if nodes.is_empty() {
        return Err(format!("{flag}: name at least one node"));
    }
    if let Some(bad) = nodes.iter().find(|n| !is_subject_word(n)) {
        return Err(format!(
            "{flag}: {bad:?} is not a node name (one word of letters, digits, `-` and `_`)"
        ));
    }
    if nodes.iter().all(|n| n == LOCAL) {
        return Err(format!("{flag}: every entry is `local`; name a node"));
    }
    Ok(())
}

impl RemoteWorkers {
    /// Validates a NATS address and a node list (`--nats`, `--nodes`).
    pub fn new(nats: &str, nodes: &[String]) -> Result<Self, String> {
        let nats = parse_nats(nats)?;
        check_nodes("--nodes", nodes)?;
        Ok(Self {
            nats,
            nodes: nodes.to_vec(),
            node_bin: locate_binary("lockstep-node", "LOCKSTEP_NODE_BIN")?,
        })
    }

    /// The node of shared worker slot `slot` (`None`: this machine).
    pub fn node_of(&self, slot: usize) -> Option<&str> {
        let n = self.nodes[slot % self.nodes.len()].as_str();
        (n != LOCAL).then_some(n)
    }

    /// The bridge's arguments for `slot`: the slot's node first, then the
    /// other nodes in list order (where recovery moves a lost slot).
    pub fn bridge_args(&self, slot: usize, hang: Duration) -> Vec<OsString> {
        let first = slot % self.nodes.len();
        let mut order: Vec<&str> = Vec::new();
        for i in 0..self.nodes.len() {
            let n = self.nodes[(first + i) % self.nodes.len()].as_str();
            if n != LOCAL && !order.contains(&n) {
                order.push(n);
            }
        }
        let mut args: Vec<OsString> = vec!["--nats".into(), self.nats.clone().into()];
        for n in order {
            args.push("--node".into());
            args.push(n.into());
        }
        args.push("--hang-ms".into());
        args.push(hang.as_millis().max(1).to_string().into());
        args
    }

    /// `slot → node` for the first `slots` shared slots (for `meta.json`
    /// and the run's log).
    pub fn placement(&self, slots: usize) -> Vec<String> {
        (0..slots)
            .map(|i| self.node_of(i).unwrap_or(LOCAL).to_owned())
            .collect()
    }
}

/// The inference host on another machine (`--inference-node`), typically
/// the one with the GPU: the supervisor starts a bridge in its place, which
/// asks the listed nodes in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteHost {
    /// The NATS server.
    pub nats: String,
    /// Nodes to ask, in order.
    pub nodes: Vec<String>,
    /// The bridge binary (`lockstep-node`).
    pub node_bin: PathBuf,
}

impl RemoteHost {
    /// Validates `--nats` and `--inference-node`.
    pub fn new(nats: &str, nodes: &[String]) -> Result<Self, String> {
        let nats = parse_nats(nats)?;
        check_nodes("--inference-node", nodes)?;
        if nodes.iter().any(|n| n == LOCAL) {
            return Err("--inference-node: `local` is where the host runs without it".to_owned());
        }
        Ok(Self {
            nats,
            nodes: nodes.to_vec(),
            node_bin: locate_binary("lockstep-node", "LOCKSTEP_NODE_BIN")?,
        })
    }

    /// The bridge's arguments for a host on `device`.
    pub fn bridge_args(&self, hang: Duration, device: &str, intra: u16) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--nats".into(), self.nats.clone().into()];
        for n in &self.nodes {
            args.push("--node".into());
            args.push(n.into());
        }
        args.extend([
            "--hang-ms".into(),
            hang.as_millis().max(1).to_string().into(),
            "--inference-device".into(),
            device.into(),
            "--intra-threads".into(),
            intra.max(1).to_string().into(),
        ]);
        args
    }
}

/// `lockstep-node archive` mirroring a live run directory into JetStream
/// (`lockstep run --archive`): started after the run directory exists,
/// stopped (one last pass, then exit) when the run ends.  It also stops by
/// itself, after a last pass, when the supervisor dies.
#[derive(Debug)]
pub struct Archiver {
    child: std::process::Child,
    /// The NATS server.
    pub nats: String,
    /// The archive's name.
    pub name: String,
}

impl Archiver {
    /// Starts mirroring `run_dir` to `nats` under `name` (`once`: one pass,
    /// for a finished run), and waits until the archiver is connected.
    pub fn start(
        nats: &str,
        run_dir: &std::path::Path,
        name: &str,
        once: bool,
    ) -> Result<Self, String> {
        if !is_subject_word(name) {
            return Err(format!(
                "archive name {name:?}: one word of letters, digits, `-` and `_` (at most 64)"
            ));
        }
        let bin = locate_binary("lockstep-node", "LOCKSTEP_NODE_BIN")?;
        let mut cmd = std::process::Command::new(&bin);
        cmd.args(["archive", "--nats", nats, "--name", name, "--run-dir"])
            .arg(run_dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped());
        if once {
            cmd.arg("--once");
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            use std::io::BufRead;
            let _ = std::io::BufReader::new(out).read_line(&mut line);
        }
        if !line.contains("ready") {
            let st = child.wait().map_err(|e| e.to_string())?;
            return Err(format!(
                "the archiver for {nats}/{name} did not start ({st})"
            ));
        }
        Ok(Self {
            child,
            nats: nats.to_owned(),
            name: name.to_owned(),
        })
    }

    /// Asks for a last pass and waits for it (up to `wait`); an archiver
    /// that failed or did not finish is an error.
    pub fn finish(self, wait: Duration) -> Result<(), String> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        self.wait(wait)
    }

    /// Waits (up to `wait`) for the archiver to exit.
    pub fn wait(mut self, wait: Duration) -> Result<(), String> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) if st.success() => return Ok(()),
                Ok(Some(st)) => return Err(format!("the archiver failed ({st})")),
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(format!("the archiver did not finish within {wait:?}"));
                }
            }
        }
    }
}

/// The default archive name of a run directory: its file name, with
/// anything that cannot be a subject word replaced by `-`.
pub fn archive_name(dir: &std::path::Path) -> String {
    let base = dir
        .file_name()
        .map_or_else(|| "run".to_owned(), |n| n.to_string_lossy().into_owned());
    let s: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    if s.is_empty() { "run".to_owned() } else { s }
}

/// Splits `nats://HOST:PORT/NAME` (an archived run) into the server and
/// the name.
pub fn parse_archive_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("nats://")?;
    let (server, name) = rest.split_once('/')?;
    (!server.is_empty() && is_subject_word(name))
        .then(|| (format!("nats://{server}"), name.to_owned()))
}

/// Rebuilds the run directory `into` from the archive at `url`
/// (`nats://HOST:PORT/NAME`) with `lockstep-node fetch`.
pub fn fetch_archive(url: &str, into: &std::path::Path) -> Result<(), String> {
    let (server, name) =
        parse_archive_url(url).ok_or_else(|| format!("{url:?}: expected nats://HOST:PORT/NAME"))?;
    let bin = locate_binary("lockstep-node", "LOCKSTEP_NODE_BIN")?;
    let st = std::process::Command::new(&bin)
        .args(["fetch", "--nats", &server, "--name", &name, "--into"])
        .arg(into)
        .stdin(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("fetching {url} failed ({st})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(nodes: &[&str]) -> RemoteWorkers {
        RemoteWorkers {
            nats: "nats://127.0.0.1:4222".into(),
            nodes: nodes.iter().map(|s| s.to_string()).collect(),
            node_bin: PathBuf::from("lockstep-node"),
        }
    }

    #[test]
    fn slots_go_to_nodes_in_turn_and_fall_back_to_the_others() {
        let r = rw(&["a", "local", "b"]);
        assert_eq!(r.placement(4), ["a", "local", "b", "a"]);
        let args: Vec<String> = r
            .bridge_args(2, Duration::from_secs(1))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "--nats",
                "nats://127.0.0.1:4222",
                "--node",
                "b",
                "--node",
                "a",
                "--hang-ms",
                "1000"
            ]
        );
    }

    #[test]
    fn server_lists_credentials_and_tls_are_kept() {
        assert_eq!(
            parse_nats("127.0.0.1:1, nats://u:p@h:2,tls://h:3").unwrap(),
            "nats://127.0.0.1:1,nats://u:p@h:2,tls://h:3"
        );
        assert!(parse_nats("http://h:1").is_err());
        assert!(parse_nats("nats://h:1,").is_err());
    }

    #[test]
    fn archive_urls_name_a_server_and_a_run() {
        assert_eq!(
            parse_archive_url("nats://127.0.0.1:4222/demo-1"),
            Some(("nats://127.0.0.1:4222".into(), "demo-1".into()))
        );
        for bad in [
            "nats://h:1",
            "nats://h:1/",
            "nats:///x",
            "http://h:1/x",
            "nats://h:1/a.b",
        ] {
            assert_eq!(parse_archive_url(bad), None, "{bad}");
        }
    }

    #[test]
    fn bad_addresses_and_names_are_refused_by_name() {
        let n = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for (nats, nodes, needle) in [
            ("127.0.0.1", n(&["a"]), "--nats"),
            ("nats://:4222", n(&["a"]), "--nats"),
            ("nats://h:99999", n(&["a"]), "--nats"),
            ("nats://h:4222", n(&[]), "at least one"),
            ("nats://h:4222", n(&["a.b"]), "\"a.b\""),
            ("nats://h:4222", n(&["local"]), "every entry"),
        ] {
            let e = RemoteWorkers::new(nats, &nodes).unwrap_err();
            assert!(e.contains(needle), "{nats} {nodes:?}: {e}");
        }
    }
}
