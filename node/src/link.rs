//! One direction of a link over NATS, for the plain threads that also talk
//! to rings: [`LinkTx`] publishes numbered packets, [`LinkRx`] takes them
//! from a subscription and reassembles messages.  The NATS client is async
//! (`async-nats` on a small tokio runtime); these wrappers block on it, so
//! ring-facing threads never run inside the runtime.

use crate::NodeError;
use crate::wire::{Body, Event, Inbox, LinkError, Outbox};
use async_nats::{Client, Subscriber};
use futures_util::StreamExt;
use serde::Serialize;
use std::sync::Mutex;
use std::time::Duration;
use tokio::runtime::Handle;

/// The tokio runtime that drives a process's NATS connection.
pub fn runtime() -> Result<tokio::runtime::Runtime, NodeError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("lockstep-nats")
        .enable_all()
        .build()
        .map_err(NodeError::Runtime)
}

/// Connects as `name` to the NATS server at `url` — or to one of a
/// cluster's servers, `url` then listing them separated by commas; each
/// `nats://` (or `tls://`), with `user:password@` where the server wants
/// it.  The client moves to another server of the list when its server
/// goes away.
pub fn connect(rt: &tokio::runtime::Runtime, url: &str, name: &str) -> Result<Client, NodeError> {
    let addrs: Vec<async_nats::ServerAddr> = url
        .split(',')
        .map(|u| u.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|e| NodeError::Connect {
            url: url.to_owned(),
            reason: format!("not a NATS address: {e}"),
        })?;
    // The first connection goes to the first server of the list that
    // answers; reconnects use the list and the servers the cluster
    // announces.
    let mut why = Vec::new();
    for first in 0..addrs.len() {
        let mut order = addrs.clone();
        order.rotate_left(first);
        order.truncate(1);
        let r = rt.block_on(
            async_nats::ConnectOptions::new()
                .name(name)
                .connection_timeout(Duration::from_secs(5))
                .request_timeout(Some(Duration::from_secs(30)))
                .connect(order),
        );
        match r {
            Ok(c) => return Ok(c),
            Err(e) => why.push(e.to_string()),
        }
    }
    Err(NodeError::Connect {
        url: url.to_owned(),
        reason: why.join("; "),
    })
}

/// The sending side of one direction.
#[derive(Debug)]
pub struct LinkTx {
    rt: Handle,
    client: Client,
    subject: String,
    out: Mutex<Outbox>,
}

impl LinkTx {
    /// Sends on `subject`.
    pub fn new(rt: Handle, client: Client, subject: String) -> Self {
        Self {
            rt,
            client,
            subject,
            out: Mutex::new(Outbox::default()),
        }
    }

    /// Sends one message (postcard-encoded), in as many packets as it
    /// takes; concurrent senders never interleave their packets.
    pub fn message<T: Serialize>(&self, msg: &T) -> Result<(), NodeError> {
        let bytes = postcard::to_allocvec(msg).map_err(|e| NodeError::Encode(e.to_string()))?;
        let mut out = self.out.lock().map_err(|_| NodeError::Poisoned)?;
        for p in out.message(&bytes) {
            self.publish(p)?;
        }
        Ok(())
    }

    /// Sends one packet that is not a message.
    pub fn send(&self, body: Body) -> Result<(), NodeError> {
        let mut out = self.out.lock().map_err(|_| NodeError::Poisoned)?;
        let p = out.packet(body);
        self.publish(p)
    }

    /// Waits until everything sent has reached the server.
    pub fn flush(&self) -> Result<(), NodeError> {
        self.rt
            .block_on(self.client.flush())
            .map_err(|e| NodeError::Nats(e.to_string()))
    }

    fn publish(&self, payload: Vec<u8>) -> Result<(), NodeError> {
        self.rt
            .block_on(
                self.client
                    .publish(self.subject.clone(), bytes::Bytes::from(payload)),
            )
            .map_err(|e| NodeError::Nats(e.to_string()))
    }
}

/// The receiving side of one direction.
#[derive(Debug)]
pub struct LinkRx {
    rt: Handle,
    sub: Subscriber,
    inbox: Inbox,
}

/// What [`LinkRx::next`] got.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// An event of the link.
    Event(Event),
    /// Nothing within the wait.
    Nothing,
    /// The subscription ended (the connection closed).
    Ended,
}

impl LinkRx {
    /// Receives from `sub`.
    pub fn new(rt: Handle, sub: Subscriber) -> Self {
        Self {
            rt,
            sub,
            inbox: Inbox::default(),
        }
    }

    /// The next event, waiting up to `wait`; a lost, reordered or garbled
    /// packet is an error (the link is broken).
    pub fn next(&mut self, wait: Duration) -> Result<Received, LinkError> {
        loop {
            let got = self
                .rt
                .block_on(async { tokio::time::timeout(wait, self.sub.next()).await });
            match got {
                Err(_) => return Ok(Received::Nothing),
                Ok(None) => return Ok(Received::Ended),
                Ok(Some(msg)) => {
                    if let Some(ev) = self.inbox.push(&msg.payload)? {
                        return Ok(Received::Event(ev));
                    }
                }
            }
        }
    }
}
