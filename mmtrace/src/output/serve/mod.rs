//! `--serve`: the record stream over HTTP, for a browser dashboard,
//! Prometheus and anything that reads Server-Sent Events.
//!
//! Routes (GET only, read-only): `/metrics` (Prometheus text 0.0.4, or
//! OpenMetrics when the Accept header asks), `/events` (SSE: the `--json`
//! records), `/api/snapshot` (the state plus a columnar history),
//! `/api/pagemap` (one traced file's residency in bands), `/` and the
//! dashboard's files (embedded at build time from assets/dashboard/).
//!
//! The sink folds each record into [`state::State`] under a short lock and
//! broadcasts it; it never waits for a client. The server runs on a thread
//! of its own (a current-thread tokio runtime), so a busy trace (`--all` on
//! a host full of short-lived processes) never starves it, and it stops
//! when the trace ends (after `--serve-linger`). Bound to loopback by default; a loopback server only
//! answers requests whose Host is localhost or a loopback address (DNS
//! rebinding). docs/serve.md describes every route.
pub mod metrics;
pub mod pagemap;
pub mod state;

use std::{
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use axum::{
    Router,
    extract::{Query, Request, State as AxState},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::get,
};
use tokio::sync::{broadcast, watch};

use self::state::{Msg, State};
use crate::{collect::events::RawEvent, devnum::Dev, record::Record};

/// The default address: loopback, port 9723.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9723";
pub const DEFAULT_PORT: u16 = 9723;
/// `/events` clients at once; more get 503.
pub const MAX_CLIENTS: usize = 16;
/// Records a client may fall behind before it is resynchronised.
const CLIENT_QUEUE: usize = 128;
/// How long the server may take to close once the trace ended.
const CLOSE_DEADLINE: Duration = Duration::from_secs(3);

/// `--serve` and its companions.
#[derive(Clone, Debug, PartialEq)]
pub struct ServeOptions {
    pub addr: String,
    /// `--serve-public`: a non-loopback address is allowed.
    pub public: bool,
    /// `--serve-files`: per-file series exported.
    pub files: usize,
    /// `--serve-linger`: seconds the final state stays served.
    pub linger: Option<f64>,
}

/// Parses `--serve`'s address: `IP:PORT`, `[IPv6]:PORT`, `localhost:PORT`,
/// a bare IP (port 9723) or a bare port (on 127.0.0.1). A non-loopback
/// address needs `public`. The error is one sentence.
pub fn parse_addr(s: &str, public: bool) -> Result<SocketAddr, String> {
    let t = s.trim();
    let addr = if let Ok(a) = t.parse::<SocketAddr>() {
        a
    } else if let Ok(ip) = t
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        SocketAddr::new(ip, DEFAULT_PORT)
    } else if let Ok(port) = t.parse::<u16>() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    } else if let Some(port) = t
        .strip_prefix("localhost:")
        .and_then(|p| p.parse::<u16>().ok())
    {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    } else if t == "localhost" {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_PORT)
    } else {
        return Err(format!(
            "--serve `{s}` is not an address: give IP:PORT such as {DEFAULT_ADDR} or [::1]:{DEFAULT_PORT} (host names other than localhost are not resolved)"
        ));
    };
    if !addr.ip().is_loopback() && !public {
        return Err(format!(
            "--serve {addr} is not a loopback address: the server shows file paths and command names to whoever connects, so binding beyond this machine needs --serve-public"
        ));
    }
    Ok(addr)
}

/// Whether a loopback server should answer a request with this Host:
/// localhost or a loopback IP literal (any port). Anything else may be a
/// DNS-rebinding page in a local browser.
pub fn host_allowed(host: &str) -> bool {
    let h = host.trim();
    let name = if let Some(rest) = h.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        match h.rsplit_once(':') {
            Some((n, p)) if p.chars().all(|c| c.is_ascii_digit()) => n,
            _ => h,
        }
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

struct Shared {
    state: Mutex<State>,
    tx: broadcast::Sender<Msg>,
    clients: AtomicUsize,
    lagged: AtomicU64,
    pagemaps: Mutex<pagemap::Cache>,
    check_host: bool,
    shutdown: watch::Sender<bool>,
}

impl Shared {
    fn new(state: State, check_host: bool) -> Arc<Self> {
        let (tx, _) = broadcast::channel(CLIENT_QUEUE);
        let (shutdown, _) = watch::channel(false);
        Arc::new(Self {
            state: Mutex::new(state),
            tx,
            clients: AtomicUsize::new(0),
            lagged: AtomicU64::new(0),
            pagemaps: Mutex::new(pagemap::Cache::default()),
            check_host,
            shutdown,
        })
    }

    /// Folds a record in and broadcasts it (under the lock: see [`join`]).
    fn record(&self, r: &Record) {
        let mut st = self.state();
        let msg = st.apply(r);
        let _ = self.tx.send(msg);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sink: updates the shared state, broadcasts each record, and owns
/// the server task.
pub struct ServeSink {
    shared: Arc<Shared>,
    server: Option<std::thread::JoinHandle<()>>,
    linger: Option<f64>,
    quiet: bool,
    url: String,
}

impl ServeSink {
    /// Binds the address (an error before anything is traced) and starts
    /// serving on a thread of its own.
    pub fn start(opts: &ServeOptions, quiet: bool) -> Result<Self> {
        let addr = parse_addr(&opts.addr, opts.public).map_err(anyhow::Error::msg)?;
        let std_listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("--serve: cannot listen on {addr}"))?;
        std_listener.set_nonblocking(true)?;
        let local = std_listener.local_addr()?;
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .map(|m| {
                crate::cgroup::mounts(&m)
                    .into_iter()
                    .map(|m| m.point)
                    .collect()
            })
            .unwrap_or_default();
        let shared = Shared::new(State::new(opts.files, mounts), local.ip().is_loopback());
        let mut stop = shared.shutdown.subscribe();
        let app = router(shared.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("--serve: starting the server's runtime")?;
        let server = std::thread::Builder::new()
            .name("mmtrace-serve".into())
            .spawn(move || {
                rt.block_on(async move {
                    let done = async move {
                        let _ = stop.wait_for(|v| *v).await;
                    };
                    let served = match tokio::net::TcpListener::from_std(std_listener) {
                        Ok(l) => axum::serve(l, app).with_graceful_shutdown(done).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = served {
                        log::warn!("--serve: the server failed: {e}");
                    }
                });
            })
            .context("--serve: starting the server's thread")?;
        let url = match local.ip() {
            IpAddr::V6(ip) => format!("http://[{ip}]:{}/", local.port()),
            IpAddr::V4(ip) => format!("http://{ip}:{}/", local.port()),
        };
        if !quiet {
            eprintln!("mmtrace: serving on {url} (dashboard; /metrics, /events, /api/snapshot)");
        }
        Ok(Self {
            shared,
            server: Some(server),
            linger: opts.linger,
            quiet,
            url,
        })
    }

    /// Folds a record in and sends it to every `/events` client (never
    /// waits: a client that falls behind is resynchronised).
    pub fn record(&self, r: &Record) {
        // Sent under the lock: a client subscribing under it either sees
        // the record in its replay or receives it, never both or neither.
        self.shared.record(r);
    }

    pub fn events(&self, events: &[RawEvent]) {
        for e in events {
            self.record(&Record::Event(e.clone()));
        }
    }

    /// The trace ended (the summary was sent): serve the final state for
    /// `--serve-linger` (or until Ctrl-C), then close within 3 s.
    pub async fn finish(&mut self) {
        if let Some(secs) = self.linger {
            if !self.quiet {
                eprintln!(
                    "mmtrace: the trace ended; serving its final state on {} for {secs} s (Ctrl-C to stop)",
                    self.url
                );
            }
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(secs)) => {}
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        }
        let _ = self.shared.shutdown.send_replace(true);
        // Open streams drain and close; a server still busy after the
        // deadline is left to end with the process.
        if let Some(h) = self.server.take() {
            let deadline = tokio::time::Instant::now() + CLOSE_DEADLINE;
            while !h.is_finished() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}

impl Drop for ServeSink {
    fn drop(&mut self) {
        // The thread sees the shutdown and ends; it is not waited for.
        let _ = self.shared.shutdown.send_replace(true);
        self.server.take();
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_route))
        .route("/events", get(events_route))
        .route("/api/snapshot", get(snapshot_route))
        .route("/api/pagemap", get(pagemap_route))
        .fallback(asset_route)
        .layer(middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

/// Every route: GET (and HEAD) only; on loopback, Host must be local.
async fn guard(AxState(s): AxState<Arc<Shared>>, req: Request, next: Next) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET, HEAD")],
            "mmtrace serves read-only GET requests\n",
        )
            .into_response();
    }
    if s.check_host {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !host_allowed(host) {
            return (
                StatusCode::MISDIRECTED_REQUEST,
                "mmtrace listens on loopback and answers only Host: localhost or a loopback address\n",
            )
                .into_response();
        }
    }
    let mut r = next.run(req).await;
    r.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

async fn metrics_route(AxState(s): AxState<Arc<Shared>>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let clients = s.clients.load(Ordering::Relaxed);
    let reg = s
        .state()
        .metrics
        .registry(clients, s.lagged.load(Ordering::Relaxed));
    let (body, ct) = metrics::encode(&reg, openmetrics);
    ([(header::CONTENT_TYPE, ct)], body).into_response()
}

async fn snapshot_route(AxState(s): AxState<Arc<Shared>>) -> Response {
    let clients = s.clients.load(Ordering::Relaxed);
    let body = s.state().snapshot(clients);
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Decrements the client count when a stream ends.
struct ClientSlot(Arc<Shared>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Client {
    queue: std::collections::VecDeque<Msg>,
    rx: broadcast::Receiver<Msg>,
    /// The id of the last record queued.
    last: u64,
    done: bool,
    stop: watch::Receiver<bool>,
    slot: ClientSlot,
}

impl Client {
    /// The current state, queued (first connection, or after lagging).
    fn resync(&mut self) {
        let st = self.slot.0.state();
        self.queue = st.replay().into();
        self.last = st.last_id;
    }
}

fn sse_event(m: &Msg) -> Event {
    Event::default()
        .event(m.event)
        .id(m.id.to_string())
        .data(&*m.data)
}

/// A client's place among the `/events` clients, or `None` when all
/// [`MAX_CLIENTS`] are taken.
fn join(s: &Arc<Shared>) -> Option<Client> {
    if s.clients.fetch_add(1, Ordering::Relaxed) >= MAX_CLIENTS {
        s.clients.fetch_sub(1, Ordering::Relaxed);
        return None;
    }
    let slot = ClientSlot(s.clone());
    // Subscribed under the state's lock, which the sink holds while it
    // sends: the replay and the live records neither overlap nor miss one.
    let st = s.state();
    Some(Client {
        queue: st.replay().into(),
        rx: s.tx.subscribe(),
        last: st.last_id,
        done: false,
        stop: s.shutdown.subscribe(),
        slot,
    })
}

/// A client's records: the state, then live records; the state again
/// after it lagged; it ends after the summary (or when the server closes).
fn records(c: Client) -> impl futures_util::Stream<Item = Msg> {
    futures_util::stream::unfold(c, |mut c| async move {
        loop {
            if let Some(m) = c.queue.pop_front() {
                if m.event == "summary" {
                    // The trace ended: this is the stream's last record.
                    c.done = true;
                }
                return Some((m, c));
            }
            if c.done {
                return None;
            }
            let r = tokio::select! {
                biased;
                r = c.rx.recv() => r,
                _ = c.stop.wait_for(|v| *v) => {
                    // The server closes: what was sent still goes out (the
                    // summary last), then the stream ends.
                    while let Ok(m) = c.rx.try_recv() {
                        if m.id > c.last {
                            c.last = m.id;
                            c.queue.push_back(m);
                        }
                    }
                    c.done = true;
                    continue;
                }
            };
            match r {
                Ok(m) if m.id > c.last => {
                    c.last = m.id;
                    c.queue.push_back(m);
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    c.slot.0.lagged.fetch_add(1, Ordering::Relaxed);
                    c.resync();
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

async fn events_route(AxState(s): AxState<Arc<Shared>>) -> Response {
    let Some(c) = join(&s) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            format!("mmtrace serves at most {MAX_CLIENTS} /events clients at once\n"),
        )
            .into_response();
    };
    use futures_util::StreamExt as _;
    let mut first = true;
    let stream = records(c).map(move |m| {
        let mut e = sse_event(&m);
        if std::mem::take(&mut first) {
            // EventSource reconnects after 2 s (and gets the state).
            e = e.retry(Duration::from_secs(2));
        }
        Ok::<_, Infallible>(e)
    });
    (
        [(
            header::HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        )],
        Sse::new(stream).keep_alive(KeepAlive::new()),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct PagemapQuery {
    dev: Option<String>,
    ino: Option<u64>,
    path: Option<String>,
}

fn json_error(code: StatusCode, msg: &str) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "error": msg }).to_string(),
    )
        .into_response()
}

async fn pagemap_route(
    AxState(s): AxState<Arc<Shared>>,
    Query(q): Query<PagemapQuery>,
) -> Response {
    let found = {
        let st = s.state();
        let hit = match (&q.dev, q.ino, &q.path) {
            (Some(d), Some(ino), _) => match parse_dev(d) {
                Some(dev) => st.files.by_id(dev, ino),
                None => return json_error(StatusCode::BAD_REQUEST, "dev must be MAJOR:MINOR"),
            },
            (_, _, Some(p)) => st.files.by_path(p),
            _ => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "give dev=MAJOR:MINOR&ino=N or path=PATH of a file of the trace",
                );
            }
        };
        hit.map(|(dev, ino, k)| (dev, ino, k, st.files.counts(dev, ino), st.page_size))
    };
    let Some((dev, ino, known, counts, page_size)) = found else {
        return json_error(
            StatusCode::NOT_FOUND,
            "not a file of this trace (only files in the records' file rows can be mapped)",
        );
    };
    let cached = s
        .pagemaps
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(dev, ino);
    let body = match cached {
        Some(b) => b,
        None => {
            let r = tokio::task::spawn_blocking(move || {
                pagemap::measure(dev, ino, &known, counts.as_ref(), page_size)
            })
            .await;
            let map = match r {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => return json_error(StatusCode::CONFLICT, &e.to_string()),
                Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            };
            let b: Arc<str> = serde_json::to_string(&map).unwrap_or_default().into();
            s.pagemaps
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .put(dev, ino, b.clone());
            b
        }
    };
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// `MAJOR:MINOR` in decimal, as the JSON's `dev` (not the hex of
/// /proc/<pid>/maps).
fn parse_dev(s: &str) -> Option<Dev> {
    let (a, b) = s.split_once(':')?;
    Some(Dev::new(a.parse().ok()?, b.parse().ok()?))
}

mod assets {
    include!(concat!(env!("OUT_DIR"), "/dashboard_assets.rs"));
}

/// The Content-Type of an embedded file, from its extension.
pub fn content_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map_or("", |(_, e)| e);
    match ext.to_ascii_lowercase().as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" | "md" | "" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Shown at `/` when the build had no assets/dashboard/index.html.
const FALLBACK_INDEX: &str = "<!doctype html>
<html lang=\"en\"><head><meta charset=\"utf-8\"><title>mmtrace</title></head>
<body><h1>mmtrace</h1>
<p>This build has no dashboard (assets/dashboard/index.html was missing). The API:</p>
<ul>
<li><a href=\"/metrics\">/metrics</a>: Prometheus text 0.0.4 (OpenMetrics with <code>Accept: application/openmetrics-text</code>)</li>
<li><a href=\"/events\">/events</a>: Server-Sent Events, the records of <code>--json</code></li>
<li><a href=\"/api/snapshot\">/api/snapshot</a>: the current state and its history, JSON</li>
<li><code>/api/pagemap?dev=MAJ:MIN&amp;ino=N</code> or <code>?path=PATH</code>: a traced file's pages in the page cache</li>
</ul></body></html>
";

async fn asset_route(req: Request) -> Response {
    let name = req.uri().path().trim_start_matches('/');
    let name = if name.is_empty() { "index.html" } else { name };
    if let Some((_, body)) = assets::ASSETS.iter().find(|(n, _)| *n == name) {
        return (
            [
                (header::CONTENT_TYPE, content_type(name)),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response();
    }
    if name == "index.html" {
        return (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            FALLBACK_INDEX,
        )
            .into_response();
    }
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked_in_one_sentence() {
        assert_eq!(
            parse_addr("127.0.0.1:9723", false),
            Ok("127.0.0.1:9723".parse().unwrap())
        );
        assert_eq!(
            parse_addr("[::1]:80", false),
            Ok("[::1]:80".parse().unwrap())
        );
        assert_eq!(
            parse_addr("localhost:1234", false),
            Ok("127.0.0.1:1234".parse().unwrap())
        );
        assert_eq!(
            parse_addr("8080", false),
            Ok("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            parse_addr("127.0.0.2", false),
            Ok("127.0.0.2:9723".parse().unwrap())
        );
        let e = parse_addr("0.0.0.0:9723", false).unwrap_err();
        assert!(e.contains("--serve-public") && !e.contains('\n'), "{e}");
        assert_eq!(
            parse_addr("0.0.0.0:9723", true),
            Ok("0.0.0.0:9723".parse().unwrap())
        );
        for bad in ["example.com:80", "1.2.3.4:99999", "", "abc"] {
            let e = parse_addr(bad, true).unwrap_err();
            assert!(e.contains("not an address"), "{bad}: {e}");
        }
    }

    #[test]
    fn only_local_hosts_reach_a_loopback_server() {
        for ok in [
            "localhost",
            "localhost:9723",
            "127.0.0.1:9723",
            "[::1]:9723",
            "127.1.2.3",
            "LOCALHOST:1",
        ] {
            assert!(host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example:9723",
            "",
            "10.0.0.1:9723",
            "localhost.evil.example",
            "[::2]:80",
        ] {
            assert!(!host_allowed(bad), "{bad}");
        }
    }

    // The same records as the state tests use.
    use super::state::tests::{interval, meta};

    fn summary() -> Record {
        Record::Summary(crate::record::Summary {
            elapsed_s: 9.0,
            end_reason: crate::record::EndReason::Duration,
            error: None,
            report: Default::default(),
            cgroups: vec![],
            cgroup: None,
            command: None,
            bpf_stats: None,
            verdicts: vec![],
            oom_kills: vec![],
            events_dropped: None,
        })
    }

    #[tokio::test]
    async fn a_lagging_client_is_resynced_and_every_client_ends_with_the_summary() {
        use futures_util::StreamExt as _;
        let s = Shared::new(State::new(50, vec![]), true);
        s.record(&meta());
        s.record(&interval(1));
        let early = join(&s).unwrap();
        // Nobody reads while far more records than the queue holds go out:
        // sending never waits.
        for seq in 2..(CLIENT_QUEUE as u64 + 50) {
            s.record(&interval(seq));
        }
        let late = join(&s).unwrap();
        assert_eq!(s.clients.load(Ordering::Relaxed), 2);
        s.record(&summary());

        let got: Vec<Msg> = records(early).collect().await;
        let names: Vec<&str> = got.iter().map(|m| m.event).collect();
        assert_eq!(&names[..2], ["meta", "interval"], "the state first");
        assert_eq!(got[1].id, 2);
        // It lagged: the state again (meta, the latest interval), then on.
        let again = names.iter().skip(1).position(|n| *n == "meta").unwrap() + 1;
        assert_eq!(names[again + 1], "interval");
        assert_eq!(*names.last().unwrap(), "summary");
        assert_eq!(s.lagged.load(Ordering::Relaxed), 1);
        let after: Vec<u64> = got[again..].iter().map(|m| m.id).collect();
        assert!(after.windows(2).skip(1).all(|w| w[0] < w[1]), "{after:?}");

        // The late client: meta, the latest interval, then the summary.
        let got: Vec<Msg> = records(late).collect().await;
        let names: Vec<&str> = got.iter().map(|m| m.event).collect();
        assert_eq!(names, ["meta", "interval", "summary"]);
        assert_eq!(got[1].id, CLIENT_QUEUE as u64 + 50);
        assert_eq!(s.clients.load(Ordering::Relaxed), 0, "slots freed");

        // After the end: the state with the summary, then the stream ends.
        let got: Vec<Msg> = records(join(&s).unwrap()).collect().await;
        assert_eq!(got.last().unwrap().event, "summary");
        // At most MAX_CLIENTS at once.
        let held: Vec<Client> = (0..MAX_CLIENTS).map(|_| join(&s).unwrap()).collect();
        assert!(join(&s).is_none());
        drop(held);
        assert!(join(&s).is_some());
    }

    #[test]
    fn devices_are_decimal_as_in_the_json() {
        assert_eq!(parse_dev("254:0"), Some(Dev::new(254, 0)));
        assert_eq!(
            parse_dev(&Dev::new(8, 17).to_string()),
            Some(Dev::new(8, 17))
        );
        assert_eq!(parse_dev("fe:00"), None);
        assert_eq!(parse_dev("8"), None);
    }

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert!(content_type("vendor/uPlot.iife.min.js").starts_with("text/javascript"));
        assert!(content_type("app.css").starts_with("text/css"));
        assert_eq!(content_type("logo.svg"), "image/svg+xml");
        assert!(content_type("LICENSE").starts_with("text/plain"));
    }
}
