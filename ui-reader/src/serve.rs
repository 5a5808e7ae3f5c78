//! `lockstep-ui --serve`: the read-only web dashboard's HTTP server.
//!
//! One thread per connection, one request per connection
//! (`Connection: close`), request heads parsed by `httparse` after this
//! module has read them under fixed bounds:
//!
//! * at most `--max-clients` connections at once (beyond: `503`), of which
//!   at most half are event streams;
//! * a request head of at most [`MAX_HEAD`] bytes and [`MAX_HEADERS`]
//!   headers (`414` for an over-long request line, `431` otherwise), read
//!   within [`HEAD_DEADLINE`] (`408`); no request body is read (`400`);
//! * `GET` and `HEAD` only (`405`); a malformed head is a `400`, never a
//!   crash.
//!
//! Every response carries a strict `Content-Security-Policy` (scripts,
//! styles and connections from the page's own origin only, no inline code,
//! no framing), `X-Content-Type-Options: nosniff` and `Cache-Control:
//! no-store`.  The server binds loopback unless told otherwise; a
//! non-loopback address needs a token (`--token`, `--token-file`) that every
//! request then carries (`?token=…`, `Authorization: Bearer …` or
//! `X-Lockstep-Token`; the page itself, which holds no run data, loads
//! without it).  Without a token, requests must name a loopback host
//! (`Host: 127.0.0.1:…`, `localhost`, `[::1]`), which keeps other web
//! pages from reading the dashboard through DNS rebinding.
//!
//! Nothing here writes: the endpoints read the [`Feed`], which reads the
//! board through its read-only mapping and the run directory through plain
//! reads.  The control socket is never opened.

use crate::feed::{Feed, now_ms};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Where `--serve` listens without an address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:0";
/// Largest request head (request line and headers), bytes.
pub const MAX_HEAD: usize = 8192;
/// Most request headers.
pub const MAX_HEADERS: usize = 48;
/// Time to send a whole request head.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(10);
/// Time one write may block (a stalled reader is dropped).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Comment sent on an idle event stream.
pub const KEEPALIVE: Duration = Duration::from_secs(15);
/// Shortest token accepted.
pub const MIN_TOKEN: usize = 16;
/// Most timeline events in one answer (the newest).
pub const TIMELINE_EVENTS: usize = 1000;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");

/// The policy every response carries.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to bind.
    pub addr: SocketAddr,
    /// Token every request must carry (required off loopback).
    pub token: Option<String>,
    /// Most connections at once.
    pub max_clients: usize,
}

/// Checks a token's form: at least [`MIN_TOKEN`] characters, all URL-safe
/// (so that it travels in a query string unchanged).
pub fn check_token(t: &str) -> Result<(), String> {
    if t.len() < MIN_TOKEN {
        return Err(format!(
            "the token must be at least {MIN_TOKEN} characters long"
        ));
    }
    if !t
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    {
        return Err("the token may hold only letters, digits and - . _ ~".into());
    }
    Ok(())
}

/// Whether serving on `addr` needs a token.
pub fn needs_token(addr: &SocketAddr) -> bool {
    !addr.ip().is_loopback()
}

struct Ctx {
    feed: Arc<Feed>,
    token: Option<String>,
    local: SocketAddr,
    open: AtomicUsize,
    streams: AtomicUsize,
    max_clients: usize,
    max_streams: usize,
}

/// Binds, prints `serving http://ADDR/` as the first line of stdout, and
/// serves until the process ends.
pub fn run(cfg: Config, feed: Arc<Feed>) -> Result<(), String> {
    if needs_token(&cfg.addr) && cfg.token.is_none() {
        return Err(format!(
            "{} is not a loopback address: serving it needs --token or --token-file",
            cfg.addr
        ));
    }
    let listener =
        TcpListener::bind(cfg.addr).map_err(|e| format!("cannot listen on {}: {e}", cfg.addr))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("listening socket: {e}"))?;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "serving http://{local}/");
        let _ = out.flush();
    }
    if needs_token(&local) {
        eprintln!(
            "lockstep-ui: warning: serving on {local}, beyond this machine: whoever can reach \
             it and holds the token reads the run's live state; plain HTTP, not encrypted"
        );
    }
    let max_clients = cfg.max_clients.max(2);
    let ctx = Arc::new(Ctx {
        feed,
        token: cfg.token,
        local,
        open: AtomicUsize::new(0),
        streams: AtomicUsize::new(0),
        max_clients,
        max_streams: max_clients / 2,
    });
    for conn in listener.incoming() {
        let mut stream = match conn {
            Ok(s) => s,
            Err(_) => {
                // Out of descriptors or a connection reset before accept.
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        if ctx.open.fetch_add(1, Ordering::AcqRel) >= ctx.max_clients {
            ctx.open.fetch_sub(1, Ordering::AcqRel);
            let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
            let _ = respond(
                &mut stream,
                503,
                "text/plain; charset=utf-8",
                b"too many clients\n",
                false,
                &[("Retry-After", "1")],
            );
            continue;
        }
        let c = Arc::clone(&ctx);
        let spawned = std::thread::Builder::new()
            .name("http".into())
            .stack_size(256 << 10)
            .spawn(move || {
                handle(&c, stream);
                c.open.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            ctx.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
    Ok(())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

fn head_lines(status: u16, ctype: &str, len: Option<usize>, extra: &[(&str, &str)]) -> String {
    let mut h = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Security-Policy: {CSP}\r\n\
         X-Content-Type-Options: nosniff\r\nCache-Control: no-store\r\n\
         Referrer-Policy: no-referrer\r\nX-Frame-Options: DENY\r\n\
         Cross-Origin-Resource-Policy: same-origin\r\nConnection: close\r\n",
        reason(status)
    );
    if let Some(n) = len {
        h.push_str(&format!("Content-Length: {n}\r\n"));
    }
    for (k, v) in extra {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    h
}

fn respond(
    w: &mut TcpStream,
    status: u16,
    ctype: &str,
    body: &[u8],
    head_only: bool,
    extra: &[(&str, &str)],
) -> std::io::Result<()> {
    let mut out = head_lines(status, ctype, Some(body.len()), extra).into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    w.write_all(&out)?;
    w.flush()
}

fn error(w: &mut TcpStream, status: u16, extra: &[(&str, &str)]) {
    let body = format!("{status} {}\n", reason(status));
    let _ = respond(
        w,
        status,
        "text/plain; charset=utf-8",
        body.as_bytes(),
        false,
        extra,
    );
}

/// Reads a request head under the bounds; the status to answer on failure
/// (None: the peer went away without a request).
fn read_head(s: &mut TcpStream, buf: &mut [u8]) -> Result<usize, Option<u16>> {
    let start = Instant::now();
    let mut len = 0;
    loop {
        if len == buf.len() {
            let line_done = buf.contains(&b'\n');
            return Err(Some(if line_done { 431 } else { 414 }));
        }
        let left = HEAD_DEADLINE.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(Some(408));
        }
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut buf[len..]) {
            Ok(0) => return Err(if len == 0 { None } else { Some(400) }),
            Ok(n) => len += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(Some(408));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Err(None),
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match httparse::Request::new(&mut headers).parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => return Ok(len),
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => return Err(Some(431)),
            Err(_) => return Err(Some(400)),
        }
    }
}

/// Compares without an early exit.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a `Host` header names this machine's loopback or the bound
/// address itself.
fn loopback_host(host: &str, local: &SocketAddr) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match name.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback() || ip == local.ip(),
        Err(_) => false,
    }
}

/// One parsed request: what the handlers need.
struct Req {
    head_only: bool,
    path: String,
    query: String,
}

impl Req {
    /// The value of query parameter `name` (percent-decoded), if given.
    fn param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name).then(|| percent_decode(v))
        })
    }
}

/// `%XX` and `+` decoded; anything malformed is kept as it is.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn handle(ctx: &Ctx, mut s: TcpStream) {
    let _ = s.set_write_timeout(Some(WRITE_TIMEOUT));
    let _ = s.set_nodelay(true);
    let mut buf = vec![0u8; MAX_HEAD];
    let len = match read_head(&mut s, &mut buf) {
        Ok(n) => n,
        Err(Some(status)) => return error(&mut s, status, &[]),
        Err(None) => return,
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut headers);
    if !matches!(r.parse(&buf[..len]), Ok(httparse::Status::Complete(_))) {
        return error(&mut s, 400, &[]);
    }
    let method = r.method.unwrap_or("");
    let target = r.path.unwrap_or("");
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return error(&mut s, 405, &[("Allow", "GET, HEAD")]),
    };
    let header = |name: &str| {
        r.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    // No request bodies.
    let has_body = header("content-length").is_some_and(|v| v.trim() != "0")
        || header("transfer-encoding").is_some();
    if has_body || !target.starts_with('/') {
        return error(&mut s, 400, &[]);
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query_token = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .map(str::to_owned);
    // The page's own code holds no run data: it loads without the token,
    // then sends the token it was opened with on every data request.
    let public = matches!(path, "/" | "/index.html" | "/app.js" | "/app.css");
    match &ctx.token {
        Some(_) if public => {}
        Some(token) => {
            let bearer = header("authorization")
                .and_then(|v| v.strip_prefix("Bearer ").map(|t| t.trim().to_owned()));
            let given = query_token
                .clone()
                .or(bearer)
                .or_else(|| header("x-lockstep-token").map(|t| t.trim().to_owned()));
            if !given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
                return error(&mut s, 401, &[("WWW-Authenticate", "Bearer")]);
            }
        }
        None => {
            if let Some(host) = header("host")
                && !loopback_host(host.trim(), &ctx.local)
            {
                return error(&mut s, 403, &[]);
            }
        }
    }
    let req = Req {
        head_only,
        path: path.to_owned(),
        query: query.to_owned(),
    };
    route(ctx, &mut s, &req);
}

fn json_response(s: &mut TcpStream, req: &Req, v: &serde_json::Value) {
    let body = v.to_string();
    let _ = respond(
        s,
        200,
        "application/json",
        body.as_bytes(),
        req.head_only,
        &[],
    );
}

fn route(ctx: &Ctx, s: &mut TcpStream, req: &Req) {
    let asset = |s: &mut TcpStream, ctype: &str, body: &str| {
        let _ = respond(s, 200, ctype, body.as_bytes(), req.head_only, &[]);
    };
    match req.path.as_str() {
        "/" | "/index.html" => asset(s, "text/html; charset=utf-8", INDEX_HTML),
        "/app.js" => asset(s, "text/javascript; charset=utf-8", APP_JS),
        "/app.css" => asset(s, "text/css; charset=utf-8", APP_CSS),
        "/api/state" => {
            let latest = ctx.feed.lock().latest.clone();
            match latest {
                Some(e) => asset(s, "application/json", &e),
                None => {
                    let error = ctx.feed.lock().error.clone();
                    json_response(
                        s,
                        req,
                        &json!({"seq": 0, "now_ms": now_ms(), "error": error.unwrap_or_else(|| "no state yet".into())}),
                    );
                }
            }
        }
        "/api/history" => {
            let g = ctx.feed.lock();
            let v = json!({"children": g.children, "samples": g.history});
            drop(g);
            json_response(s, req, &v);
        }
        "/api/meta" => {
            let g = ctx.feed.lock();
            let v = json!({
                "run_dir": g.meta.run_dir,
                "board": g.meta.board,
                "meta": g.meta.meta,
                "token_required": ctx.token.is_some(),
                "max_clients": ctx.max_clients,
            });
            drop(g);
            json_response(s, req, &v);
        }
        "/api/log" => {
            let g = ctx.feed.lock();
            let lines: Vec<_> = g.log.iter().rev().take(500).rev().collect();
            let v = json!({ "lines": lines });
            drop(g);
            json_response(s, req, &v);
        }
        "/api/timeline" => {
            let kind = req.param("kind").filter(|k| !k.is_empty());
            let g = ctx.feed.lock();
            let (journal_entries, journal_error) = g.timeline.journal();
            let v = json!({
                "run_dir": g.meta.run_dir,
                "events": g.timeline.latest(kind.as_deref(), TIMELINE_EVENTS),
                "kind": kind,
                "kinds": g.timeline.kinds(),
                "checkpoints": g.timeline.checkpoints(),
                "metrics_lines": g.timeline.lines,
                "journal_entries": journal_entries,
                "journal_error": journal_error,
                "tick": g.state.as_ref().map(|st| st.tick),
            });
            drop(g);
            json_response(s, req, &v);
        }
        "/api/events" => stream_events(ctx, s, req),
        p => {
            if let Some(id) = p.strip_prefix("/api/agent/") {
                match id.parse::<u64>() {
                    Ok(id) => agent(ctx, s, req, id),
                    Err(_) => error(s, 404, &[]),
                }
            } else {
                error(s, 404, &[]);
            }
        }
    }
}

fn agent(ctx: &Ctx, s: &mut TcpStream, req: &Req, id: u64) {
    let g = ctx.feed.lock();
    let row = g
        .state
        .as_ref()
        .and_then(|st| st.agents.iter().find(|a| a.id == id).cloned());
    let Some(row) = row else {
        drop(g);
        return error(s, 404, &[]);
    };
    let needle = format!("] {}: ", row.name);
    let mut logs: Vec<_> = g
        .log
        .iter()
        .rev()
        .filter(|(_, l)| l.contains(&needle))
        .take(200)
        .collect();
    logs.reverse();
    let v = json!({
        "id": id,
        "row": row,
        "tick": g.state.as_ref().map(|st| st.tick),
        "history": g.agents.get(&id),
        "telemetry": g.timeline.agent_samples(id),
        "logs": logs,
    });
    drop(g);
    json_response(s, req, &v);
}

struct StreamSlot<'a>(&'a AtomicUsize);

impl Drop for StreamSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn stream_events(ctx: &Ctx, s: &mut TcpStream, req: &Req) {
    if ctx.streams.fetch_add(1, Ordering::AcqRel) >= ctx.max_streams {
        ctx.streams.fetch_sub(1, Ordering::AcqRel);
        return error(s, 503, &[("Retry-After", "2")]);
    }
    let _slot = StreamSlot(&ctx.streams);
    let head = head_lines(
        200,
        "text/event-stream; charset=utf-8",
        None,
        &[("X-Accel-Buffering", "no")],
    );
    if s.write_all(head.as_bytes()).is_err() || req.head_only {
        return;
    }
    if s.write_all(b"retry: 1000\n\n").is_err() {
        return;
    }
    let mut seen = 0u64;
    // The latest event at once, then every newer one.
    let mut first = {
        let g = ctx.feed.lock();
        g.latest.clone().map(|e| (g.seq, e))
    };
    loop {
        let next = first
            .take()
            .or_else(|| ctx.feed.wait_newer(seen, KEEPALIVE));
        let ok = match next {
            Some((seq, event)) => {
                seen = seq;
                let mut msg = Vec::with_capacity(event.len() + 32);
                msg.extend_from_slice(format!("id: {seq}\ndata: ").as_bytes());
                msg.extend_from_slice(event.as_bytes());
                msg.extend_from_slice(b"\n\n");
                s.write_all(&msg).is_ok()
            }
            None => s.write_all(b": keepalive\n\n").is_ok(),
        };
        if !ok || s.flush().is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_must_be_long_and_url_safe() {
        assert!(check_token("short").is_err());
        assert!(check_token("0123456789abcdef").is_ok());
        assert!(check_token("0123456789abcdef&x=1").is_err());
    }

    #[test]
    fn only_loopback_hosts_pass_without_a_token() {
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        for ok in [
            "127.0.0.1:8080",
            "localhost",
            "LOCALHOST:1",
            "[::1]:8080",
            "127.0.0.2",
        ] {
            assert!(loopback_host(ok, &local), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "10.0.0.1",
            "[fe80::1]:80",
            "",
        ] {
            assert!(!loopback_host(bad, &local), "{bad}");
        }
        assert!(!needs_token(&local));
        assert!(needs_token(&"0.0.0.0:1".parse().unwrap()));
    }

    #[test]
    fn query_parameters_are_decoded() {
        let req = Req {
            head_only: false,
            path: "/api/timeline".into(),
            query: "token=abc&kind=stop%2Dagent&x=a+b%zz%4&y=%C3%A9%".into(),
        };
        assert_eq!(req.param("kind").as_deref(), Some("stop-agent"));
        assert_eq!(req.param("x").as_deref(), Some("a b%zz%4"));
        assert_eq!(req.param("y").as_deref(), Some("é%"));
        assert_eq!(req.param("nope"), None);
    }

    #[test]
    fn constant_time_compare() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }

    #[test]
    fn the_page_fits_and_names_its_parts() {
        assert!(INDEX_HTML.len() + APP_JS.len() + APP_CSS.len() < 500 * 1024);
        assert!(INDEX_HTML.contains("app.js") && INDEX_HTML.contains("app.css"));
        assert!(
            !INDEX_HTML.contains("<script>"),
            "no inline scripts under the CSP"
        );
    }
}
