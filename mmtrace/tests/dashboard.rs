//! The web dashboard end to end: the real `mmtrace --serve` traces a known
//! workload, headless Chromium loads the page, and the Chrome DevTools
//! protocol (over a WebSocket) reads the file table twice. Needs root (eBPF)
//! and `chromium` (`cargo xtask setup` installs it; `MMTRACE_CHROMIUM`
//! overrides the path). `MMTRACE_SCREENSHOT=1` also writes the page to
//! docs/dashboard.png.
mod common;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket, stream::MaybeTlsStream};

/// Kills (SIGINT, then SIGKILL) and reaps a child when dropped, so a failed
/// assertion leaves no tracer or browser behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let pid = self.0.id() as i32;
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.1 GET: (status, body). Reads up to Content-Length when
/// there is one (Chromium's DevTools server keeps the connection open).
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let n = s.read(&mut buf)?;
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            });
            if n == 0 || len.is_some_and(|len| body.len() >= len) {
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                return Ok((status, body.to_string()));
            }
        } else if n == 0 {
            return Ok((0, String::new()));
        }
    }
}

fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One page of headless Chromium driven over the DevTools protocol.
struct Browser {
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Uncaught exceptions and console errors seen so far.
    errors: Vec<String>,
    _child: Reaped,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn launch() -> Self {
        let exe = std::env::var("MMTRACE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        assert!(
            Path::new(&exe).exists(),
            "{exe} missing: install chromium (cargo xtask setup) or set MMTRACE_CHROMIUM"
        );
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(&exe)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--window-size=1400,1000",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromium");
        let child = Reaped(child);
        let active = profile.path().join("DevToolsActivePort");
        let port: u16 = wait_for("DevToolsActivePort", 30, || {
            std::fs::read_to_string(&active)
                .ok()?
                .lines()
                .next()?
                .parse()
                .ok()
        });
        let url = wait_for("a page target", 30, || {
            let (_, body) = http_get(port, "/json/list").ok()?;
            let list: Value = serde_json::from_str(&body).ok()?;
            list.as_array()?.iter().find(|t| t["type"] == "page")?["webSocketDebuggerUrl"]
                .as_str()
                .map(str::to_string)
        });
        let (ws, _) = tungstenite::connect(url.as_str()).expect("connecting to the page");
        let mut b = Browser {
            ws,
            next_id: 0,
            errors: Vec::new(),
            _child: child,
            _profile: profile,
        };
        b.call("Runtime.enable", json!({}));
        b.call("Log.enable", json!({}));
        b.call("Page.enable", json!({}));
        b
    }

    /// Sends a command and returns its result, noting errors reported on the way.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({ "id": id, "method": method, "params": params }).to_string();
        self.ws
            .send(Message::text(msg))
            .expect("sending to chromium");
        loop {
            let m = self.ws.read().expect("reading from chromium");
            let Ok(text) = m.to_text() else { continue };
            let Ok(v) = serde_json::from_str::<Value>(text) else {
                continue;
            };
            match v["method"].as_str() {
                Some("Runtime.exceptionThrown") => {
                    self.errors
                        .push(v["params"]["exceptionDetails"].to_string());
                }
                Some("Runtime.consoleAPICalled") if v["params"]["type"] == "error" => {
                    self.errors.push(v["params"]["args"].to_string());
                }
                // Content-Security-Policy violations (network errors such
                // as a 404 are the server's business, not the page's).
                Some("Log.entryAdded") if v["params"]["entry"]["source"] == "security" => {
                    self.errors.push(v["params"]["entry"]["text"].to_string());
                }
                _ => {}
            }
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `js` in the page (promises awaited) and returns its value.
    fn eval(&mut self, js: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": js, "returnByValue": true, "awaitPromise": true }),
        );
        assert!(r.get("exceptionDetails").is_none(), "{js}: {r}");
        r["result"]["value"].clone()
    }

    /// The whole page as PNG.
    fn screenshot(&mut self) -> Vec<u8> {
        let m = self.call("Page.getLayoutMetrics", json!({}));
        let h = m["cssContentSize"]["height"]
            .as_f64()
            .unwrap_or(1000.0)
            .ceil();
        let r = self.call(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true,
                    "clip": { "x": 0, "y": 0, "width": 1400, "height": h, "scale": 1 } }),
        );
        base64(r["data"].as_str().expect("screenshot data"))
    }
}

fn base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let digits: Vec<u8> = s
        .bytes()
        .filter(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
        .map(val)
        .collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, d)| n | (u32::from(*d) << (18 - 6 * i)));
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

/// The cells of the file table's row for `path`, by column (`data-col`).
fn file_row(b: &mut Browser, path: &str) -> Option<Value> {
    let js = format!(
        "(() => {{ const r = [...document.querySelectorAll('[data-testid=file-row]')]\
         .find((r) => r.dataset.path === {p}); \
         return r ? Object.fromEntries([...r.querySelectorAll('td')]\
         .map((td) => [td.dataset.col, td.textContent])) : null; }})()",
        p = serde_json::to_string(path).unwrap()
    );
    Some(b.eval(&js)).filter(|v| !v.is_null())
}

fn number(row: &Value, col: &str) -> u64 {
    let t = row[col].as_str().unwrap_or_default();
    t.replace(',', "")
        .parse()
        .unwrap_or_else(|_| panic!("{col}: not a plain number: {t:?} in {row}"))
}

#[test]
fn the_page_shows_the_traced_file_live() {
    let _g = lock();
    require_root();
    let dir = scratch();
    // 96 MiB read at 8 MiB/s in a 64 MiB cgroup: 12 s of steady page-cache
    // traffic with evictions under the limit.
    let file = make_file(dir.path(), "dashboard-data.bin", 96 << 20);
    let path = file.to_str().unwrap().to_string();
    drop_cache(&file); // read from disk, evicted by the trace's own reclaim only
    let cg = TestCgroup::new("dashboard", 64 << 20);
    let port = free_port();
    let tracer = mmtrace()
        .args(["--serve", &format!("127.0.0.1:{port}")])
        .args(["--quiet", "--events", "all", "--serve-linger", "60"])
        .args(["--cgroup", cg.path(), "--"])
        .arg(env!("CARGO_BIN_EXE_mmtrace"))
        .args(["workload", "mmap-read", "--path", &path])
        .args(["--pace-mib-s", "8", "--hold", "--pause-ms", "1500"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting mmtrace --serve");
    let _tracer = Reaped(tracer);
    wait_for("the server", 30, || {
        http_get(port, "/api/snapshot")
            .ok()
            .filter(|(s, _)| *s == 200)
    });

    let mut b = Browser::launch();
    b.call(
        "Page.navigate",
        json!({ "url": format!("http://127.0.0.1:{port}/") }),
    );
    let first = wait_for("the file's row with pages added", 30, || {
        file_row(&mut b, &path).filter(|r| number(r, "pages_added") > 0)
    });
    let name = first["path"].as_str().unwrap();
    assert!(name.contains(&path), "the name is shown whole: {name:?}");
    std::thread::sleep(Duration::from_secs(3));
    let second = file_row(&mut b, &path).expect("the row is still there");
    assert!(
        number(&second, "pages_added") > number(&first, "pages_added"),
        "the row follows the trace: {first} then {second}"
    );
    assert!(number(&second, "minor_faults") + number(&second, "major_faults") > 0);
    assert_eq!(
        b.eval("document.getElementById('status').textContent"),
        "live"
    );

    // The charts drew, and the page map of the file answers.
    let plots = b.eval("document.querySelectorAll('.uplot').length");
    assert!(plots.as_u64().unwrap() >= 5, "charts: {plots}");
    b.eval(&format!(
        "[...document.querySelectorAll('[data-testid=file-row]')].find((r) => r.dataset.path === {}).click()",
        serde_json::to_string(&path).unwrap()
    ));
    wait_for("the page map", 15, || {
        let shown = b.eval("!document.getElementById('pm-canvas').hidden");
        (shown == true).then_some(())
    });
    let note = b.eval("document.getElementById('pm-note').textContent");
    assert!(
        note.as_str().unwrap_or_default().contains("resident"),
        "{note}"
    );
    names_read_as_in_the_terminal(&mut b);
    assert!(b.errors.is_empty(), "errors in the page: {:?}", b.errors);

    if std::env::var_os("MMTRACE_SCREENSHOT").is_some_and(|v| v == "1") {
        std::thread::sleep(Duration::from_secs(4)); // more history on the charts
        let png = b.screenshot();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/dashboard.png");
        std::fs::write(&out, png).unwrap();
        eprintln!("wrote {}", out.display());
    }
}

/// The page escapes hostile names exactly as the terminal table does
/// (`output::escape::display_name`), invalid UTF-8 given as path_bytes_hex.
fn names_read_as_in_the_terminal(b: &mut Browser) {
    use mmtrace::output::escape::display_name;
    let texts = [
        "/tmp/a\nb\tc\\d\re",
        "/x/\u{202e}gpj.exe",
        "/x/\u{1b}[31mred\u{7f}",
        "/x/\u{85}nel\u{9f}",
        "/x/caf\u{e9} \"quoted\" <b>&amp;",
        "/x/\u{feff}bom\u{200b}\u{2066}",
        "/x/emoji \u{1f600}",
    ];
    let bytes: [&[u8]; 5] = [
        b"/tmp/a\xffb\n\\c",
        b"/x/\xe2\x82z",
        b"/x/\xed\xa0\x80",
        b"/x/\xf4\x90\x80\x80",
        b"/x/\xc0\xaf\xe2\x82\xac",
    ];
    let mut cases: Vec<(String, Option<String>)> =
        texts.iter().map(|t| (t.to_string(), None)).collect();
    for raw in bytes {
        let hex: String = raw.iter().map(|x| format!("{x:02x}")).collect();
        cases.push((String::from_utf8_lossy(raw).into_owned(), Some(hex)));
    }
    let want: Vec<String> = cases
        .iter()
        .map(|(t, h)| display_name(t, h.as_deref()).into_owned())
        .collect();
    let got = b.eval(&format!(
        "{}.map(([t, h]) => displayName(t, h))",
        serde_json::to_string(&cases).unwrap()
    ));
    assert_eq!(got, json!(want));
}
