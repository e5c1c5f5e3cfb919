//! The live dashboard in a real browser: headless Chromium (Debian's `chromium`, which
//! `scripts/test` installs) opens it before the demo starts a scenario where the payment
//! dependency goes down and comes back (`--dashboard-wait`: the demo waits for the page's
//! live stream), and the page lists the payment circuit going closed → open → … → closed
//! from the transitions the stream pushed as they happened — not from the state embedded in
//! the page when it loaded. The test drives Chromium over the DevTools protocol (on a pipe)
//! and waits on the page's own list, not on time. A screenshot is kept in the target
//! directory.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The browser: `STORMWALL_CHROMIUM`, else `chromium` on the path.
fn chromium() -> PathBuf {
    std::env::var_os("STORMWALL_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("chromium"))
}

/// Long enough for the quick recovery scenario on a loaded 2-core machine (it takes a few
/// seconds unloaded); the test waits on the page, so a pass never takes this long.
const DEADLINE: Duration = Duration::from_secs(120);

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Headless Chromium driven over `--remote-debugging-pipe`: commands are written to its
/// fd 3 and answers read from its fd 4, one JSON message each, NUL-terminated.
struct Browser {
    commands: ChildStdin,
    /// Everything Chromium says (answers and events), read on a thread.
    messages: mpsc::Receiver<Value>,
    /// Events that arrived while waiting for something else.
    events: Vec<Value>,
    next_id: u64,
    session: Option<String>,
    _process: Killed,
}

impl Browser {
    fn start(profile: &Path, stderr: &Path) -> Browser {
        // The shell hands our stdin to Chromium as fd 3 and our stdout as fd 4.
        let mut process = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>&2"#)
            .arg(chromium())
            .args([
                "--headless",
                "--remote-debugging-pipe",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1200,900",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{} must be installed (scripts/test does): {e}",
                    chromium().display()
                )
            });
        let commands = process.stdin.take().unwrap();
        let mut answers = BufReader::new(process.stdout.take().unwrap());
        let (send, messages) = mpsc::channel();
        std::thread::spawn(move || loop {
            let mut message = Vec::new();
            match answers.read_until(0, &mut message) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            message.pop();
            if let Ok(value) = serde_json::from_slice(&message) {
                if send.send(value).is_err() {
                    return;
                }
            }
        });
        Browser {
            commands,
            messages,
            events: Vec::new(),
            next_id: 0,
            session: None,
            _process: Killed(process),
        }
    }

    /// The next message, or `None` once `deadline` passed (or Chromium quit).
    fn receive(&mut self, deadline: Instant) -> Option<Value> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.messages.recv_timeout(left).ok()
    }

    /// Sends a command (to the page once attached) and returns its result, or the error
    /// Chromium answered, or `Err("deadline")`.
    fn call(&mut self, method: &str, params: Value, deadline: Instant) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            command["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&command).unwrap();
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .and_then(|()| self.commands.flush())
            .map_err(|e| format!("writing to chromium: {e}"))?;
        loop {
            let Some(message) = self.receive(deadline) else {
                return Err(format!("no answer to {method} by the deadline"));
            };
            if message["id"] == json!(id) {
                return match message.get("error") {
                    Some(error) => Err(format!("{method}: {error}")),
                    None => Ok(message["result"].clone()),
                };
            }
            self.events.push(message);
        }
    }

    /// Waits for the event `method` (of the page once attached).
    fn event(&mut self, method: &str, deadline: Instant) -> Result<Value, String> {
        let matches = |m: &Value| m["method"] == json!(method);
        if let Some(i) = self.events.iter().position(matches) {
            return Ok(self.events.remove(i));
        }
        loop {
            match self.receive(deadline) {
                Some(message) if matches(&message) => return Ok(message),
                Some(_) => {}
                None => return Err(format!("no {method} by the deadline")),
            }
        }
    }

    /// Opens a tab, attaches to it and loads `url`.
    fn open(&mut self, url: &str, deadline: Instant) -> Result<(), String> {
        let target = self.call(
            "Target.createTarget",
            json!({ "url": "about:blank" }),
            deadline,
        )?;
        let attached = self.call(
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
            deadline,
        )?;
        self.session = attached["sessionId"].as_str().map(str::to_owned);
        self.call("Page.enable", json!({}), deadline)?;
        self.call("Page.navigate", json!({ "url": url }), deadline)?;
        self.event("Page.loadEventFired", deadline).map(drop)
    }

    /// Evaluates `expression` in the page; a promise is awaited. Returns its value.
    fn evaluate(&mut self, expression: &str, deadline: Instant) -> Result<Value, String> {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
            deadline,
        )?;
        match result.get("exceptionDetails") {
            Some(e) => Err(format!("the page threw: {e}")),
            None => Ok(result["result"]["value"].clone()),
        }
    }
}

/// Resolves, as JSON, with the page's transition list once it shows the payment circuit
/// open and later closed; watches the list (a MutationObserver), no polling.
const SEEN_OPEN_THEN_CLOSED: &str = r#"new Promise(resolve => {
  const list = document.getElementById('transitions');
  const read = () => [...list.children].map(li => ({
    source: li.dataset.source, route: li.dataset.route, from: li.dataset.from, to: li.dataset.to,
    received_ms: li.dataset.receivedMs === undefined ? null : parseFloat(li.dataset.receivedMs)
  }));
  const done = () => {
    const to = read().filter(t => t.route === 'payment').map(t => t.to);
    const open = to.indexOf('open');
    return open >= 0 && to.indexOf('closed', open) > open;
  };
  if (done()) { resolve(JSON.stringify(read())); return; }
  new MutationObserver((_, observer) => {
    if (done()) { observer.disconnect(); resolve(JSON.stringify(read())); }
  }).observe(list, { childList: true });
})"#;

/// Standard base64 (a screenshot), padding optional.
fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let sextets: Vec<u8> = text.bytes().filter_map(value).collect();
    sextets
        .chunks(4)
        .flat_map(|c| {
            let n = c
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, s)| n | u32::from(*s) << (18 - 6 * i));
            let bytes = n.to_be_bytes();
            bytes[1..c.len()].to_vec()
        })
        .collect()
}

#[test]
fn the_page_sees_the_payment_circuit_open_and_close_live_from_the_stream() {
    let artifacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&artifacts).unwrap();
    let demo_stderr = artifacts.join("demo.stderr");
    // The demo: payment down for a while, then back; it starts once the page is watching,
    // and keeps serving after the run.
    let mut demo = Command::new(env!("CARGO_BIN_EXE_stormwall"))
        .args([
            "demo",
            "--quick",
            "--no-report",
            "--dashboard-wait",
            "--dashboard-port",
            "0",
            "--scenario",
            "recovery",
        ])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&demo_stderr).unwrap())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(demo.stdout.take().unwrap());
    let demo = Killed(demo);
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let url = first
        .trim()
        .strip_prefix("dashboard: ")
        .unwrap_or_else(|| panic!("the first line names the dashboard: {first:?}"))
        .to_owned();
    // The rest of its output, kept for a failure's message.
    let (send, demo_output) = mpsc::channel();
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stdout.read_to_string(&mut rest);
        let _ = send.send(rest);
    });

    let chromium_stderr = artifacts.join("chromium.stderr");
    let mut browser = Browser::start(&artifacts.join("profile"), &chromium_stderr);
    let deadline = Instant::now() + DEADLINE;
    let seen = browser
        .open(&url, deadline)
        .and_then(|()| browser.evaluate(SEEN_OPEN_THEN_CLOSED, deadline));
    let mut demo = Some(demo);
    let seen = seen.unwrap_or_else(|e| {
        let page = browser
            .evaluate(
                "document.body.innerText",
                Instant::now() + Duration::from_secs(10),
            )
            .unwrap_or_default();
        // Its output ends when it does.
        drop(demo.take());
        panic!(
            "the page did not list the payment circuit opening then closing: {e}\n\
             page:\n{}\ndemo stdout:\n{}\ndemo stderr:\n{}\nchromium stderr:\n{}",
            page.as_str().unwrap_or_default(),
            demo_output
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_default(),
            std::fs::read_to_string(&demo_stderr).unwrap_or_default(),
            std::fs::read_to_string(&chromium_stderr).unwrap_or_default(),
        )
    });
    let seen: Vec<Value> = serde_json::from_str(seen.as_str().unwrap()).unwrap();
    eprintln!("the page's transitions: {seen:?}");
    let payment: Vec<&Value> = seen.iter().filter(|t| t["route"] == "payment").collect();
    // Every one came as a transition event of the live stream: none was in the page when
    // it loaded, none caught up from a view (the demo started after the page connected).
    for t in &payment {
        assert_eq!(t["source"], "event", "{seen:#?}");
    }
    // closed → open first, a closed at the end, in the order the page received them.
    assert_eq!(
        (payment[0]["from"].as_str(), payment[0]["to"].as_str()),
        (Some("closed"), Some("open")),
        "{seen:#?}"
    );
    assert_eq!(payment.last().unwrap()["to"], "closed", "{seen:#?}");
    for pair in payment.windows(2) {
        assert_eq!(pair[0]["to"], pair[1]["from"], "a chain: {seen:#?}");
        assert!(
            pair[0]["received_ms"].as_f64() <= pair[1]["received_ms"].as_f64(),
            "{seen:#?}"
        );
    }
    // A screenshot of the page as it ended, to look at.
    let screenshot = artifacts.join("dashboard.png");
    let png = browser
        .call(
            "Page.captureScreenshot",
            json!({ "format": "png" }),
            Instant::now() + Duration::from_secs(30),
        )
        .unwrap();
    let png = base64(png["data"].as_str().unwrap());
    assert!(png.starts_with(b"\x89PNG") && png.len() > 1000);
    std::fs::write(&screenshot, png).unwrap();
    drop(demo);
}
