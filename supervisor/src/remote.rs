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

/// Whether `s` is a valid node name: one NATS subject word.
fn is_node_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl RemoteWorkers {
    /// Validates a NATS address and a node list (`--nats`, `--nodes`).
    pub fn new(nats: &str, nodes: &[String]) -> Result<Self, String> {
        let addr = nats.strip_prefix("nats://").unwrap_or(nats);
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| format!("--nats {nats:?}: expected nats://HOST:PORT"))?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(format!("--nats {nats:?}: expected nats://HOST:PORT"));
        }
        if nodes.is_empty() {
            return Err("--nodes: name at least one node".to_owned());
        }
        if let Some(bad) = nodes.iter().find(|n| !is_node_name(n)) {
            return Err(format!(
                "--nodes: {bad:?} is not a node name (one word of letters, digits, `-` and `_`)"
            ));
        }
        if nodes.iter().all(|n| n == LOCAL) {
            return Err("--nodes: every slot is `local`; name a node".to_owned());
        }
        Ok(Self {
            nats: format!("nats://{addr}"),
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
    fn bad_addresses_and_names_are_refused_by_name() {
        let n = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for (nats, nodes, needle) in [
            ("127.0.0.1", n(&["a"]), "--nats"),
            ("nats://:4222", n(&["a"]), "--nats"),
            ("nats://h:99999", n(&["a"]), "--nats"),
            ("nats://h:4222", n(&[]), "at least one"),
            ("nats://h:4222", n(&["a.b"]), "\"a.b\""),
            ("nats://h:4222", n(&["local"]), "every slot"),
        ] {
            let e = RemoteWorkers::new(nats, &nodes).unwrap_err();
            assert!(e.contains(needle), "{nats} {nodes:?}: {e}");
        }
    }
}
