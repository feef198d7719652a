//! The web page in a real headless browser: Debian's `chromium` driven through WebDriver
//! (`chromedriver`, spoken to over plain HTTP) against the `tapio` binary. On the replayed
//! shipped recording the incidents view lists the OOM incident, its graph draws every hop of
//! the chain with its evidence, and the root cause's timeline opens; on a live `tapio run`
//! the incident appears on the open page without a reload. A screenshot of each view is
//! written to `target/screenshots/`.

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::api::{Running, live, replayed};
use crate::support::scratch;

const PROCESS: &str = "process/kind-control-plane/2315/1621357851120000000";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The WebDriver name of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

// === A small WebDriver client ===

/// One HTTP/1.1 request with a JSON body to `127.0.0.1:port`; the JSON answer.
fn request(port: u16, method: &str, path: &str, body: Option<&Value>) -> Value {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to chromedriver");
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send to chromedriver");
    // chromedriver keeps the connection open: read the head, then as many bytes as it says.
    let mut reader = std::io::BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let read = reader.read_line(&mut line).expect("read from chromedriver");
        assert!(
            read > 0,
            "{method} {path}: chromedriver closed the connection"
        );
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    let body = match length {
        Some(length) => {
            let mut body = vec![0; length];
            reader
                .read_exact(&mut body)
                .expect("read from chromedriver");
            String::from_utf8_lossy(&body).into_owned()
        }
        None => {
            let mut body = String::new();
            reader
                .read_to_string(&mut body)
                .expect("read from chromedriver");
            if head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked")
            {
                dechunk(&body)
            } else {
                body
            }
        }
    };
    let value: Value = serde_json::from_str(&body).unwrap_or_else(|error| {
        panic!("{method} {path}: no JSON from chromedriver ({error}): {body}")
    });
    if let Some(error) = value["value"]["error"].as_str() {
        panic!(
            "{method} {path}: WebDriver error `{error}`: {}",
            value["value"]["message"]
        );
    }
    value["value"].clone()
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
        if size == 0 {
            break;
        }
        out.push_str(after.get(..size).expect("a whole chunk"));
        rest = after.get(size + 2..).unwrap_or_default();
    }
    out
}

/// Decodes standard base64 (the screenshots).
fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            other => panic!("not base64: {}", other as char),
        }
    };
    let clean: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    for quad in clean.chunks(4) {
        let digits: Vec<u8> = quad.iter().copied().filter(|c| *c != b'=').collect();
        let bits = digits
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, c)| acc | (value(*c) << (18 - 6 * i)));
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..digits.len()]);
    }
    out
}

/// A running chromedriver with one headless chromium session, both ended when dropped.
struct Browser {
    driver: Child,
    port: u16,
    session: String,
}

impl Browser {
    fn start() -> Browser {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: the web page test needs Debian's `{package}` package; run \
                 .ci/install"
            );
        }
        let port = tapio_tests::free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let mut browser = Browser {
            driver,
            port,
            session: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        let capabilities = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": [
                        "--headless=new", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", "--window-size=1400,1000",
                        "--user-data-dir=".to_owned()
                            + scratch(&format!("chromium-{port}")).to_str().expect("UTF-8"),
                    ],
                },
            }}
        });
        let session = request(port, "POST", "/session", Some(&capabilities));
        browser.session = session["sessionId"]
            .as_str()
            .expect("a WebDriver session id")
            .to_owned();
        browser
    }

    fn command(&self, method: &str, what: &str, body: Option<&Value>) -> Value {
        request(
            self.port,
            method,
            &format!("/session/{}/{what}", self.session),
            body,
        )
    }

    fn open(&self, url: &str) {
        self.command("POST", "url", Some(&json!({ "url": url })));
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    fn run(&self, script: &str, args: Value) -> Value {
        self.command(
            "POST",
            "execute/sync",
            Some(&json!({ "script": script, "args": args })),
        )
    }

    /// Waits until `script` returns something truthy and returns it.
    fn until(&self, what: &str, script: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let value = self.run(script, json!([]));
            if !(value.is_null() || value == json!(false) || value == json!(0)) {
                return value;
            }
            assert!(Instant::now() < deadline, "the page never showed {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Clicks the first element `css` selects, as a user would (WebDriver element click).
    fn click(&self, css: &str) {
        let found = self.command(
            "POST",
            "element",
            Some(&json!({ "using": "css selector", "value": css })),
        );
        let id = found[ELEMENT].as_str().expect("an element").to_owned();
        self.command("POST", &format!("element/{id}/click"), Some(&json!({})));
    }

    fn screenshot(&self, name: &str) -> PathBuf {
        let png = base64(
            self.command("GET", "screenshot", None)
                .as_str()
                .expect("a base64 screenshot"),
        );
        assert_eq!(png.get(1..4), Some(&b"PNG"[..]), "a PNG screenshot");
        let dir = tapio_tests::repo_root().join("target").join("screenshots");
        std::fs::create_dir_all(&dir).expect("create target/screenshots");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = std::panic::catch_unwind(|| {
                request(
                    self.port,
                    "DELETE",
                    &format!("/session/{}", self.session),
                    None,
                )
            });
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn page(api: &Running) -> String {
    format!("http://127.0.0.1:{}/", api.port)
}

// === The tests ===

#[test]
fn the_page_shows_the_oom_incident_its_graph_and_the_timeline() {
    let browser = Browser::start();
    let api = replayed(&[]);
    browser.open(&page(&api));

    // Incidents: the OOM kill, one root cause; ownership is a context filter, not listed.
    browser.until(
        "the incidents",
        "return document.querySelector('#groups')?.dataset.loaded",
        Duration::from_secs(30),
    );
    let groups = browser.run(
        "return [...document.querySelectorAll('#groups article')].map(a => ({ \
           root: a.dataset.rootCause, \
           kinds: [...a.querySelectorAll('.incident-link')].map(l => l.dataset.kind), \
           text: a.textContent }))",
        json!([]),
    );
    let groups = groups.as_array().expect("groups");
    assert_eq!(groups.len(), 1, "{groups:#?}");
    assert_eq!(groups[0]["root"], PROCESS);
    assert_eq!(groups[0]["kinds"], json!(["oom_restart"]));
    assert!(
        groups[0]["text"]
            .as_str()
            .expect("text")
            .contains("OOM killer"),
        "{groups:#?}"
    );
    let chips = browser.run(
        "return [...document.querySelectorAll('#filters .chip')].map(c => c.dataset.family)",
        json!([]),
    );
    assert!(
        chips
            .as_array()
            .expect("chips")
            .contains(&json!("ownership")),
        "{chips}"
    );
    let shot = browser.screenshot("incidents");
    assert!(shot.exists());

    // The incident: every hop of the chain is in the graph, each with its evidence.
    browser.click("#groups .incident-link");
    let hops = browser
        .until(
            "the incident's graph",
            "return document.querySelectorAll('#chain-table tbody tr').length",
            Duration::from_secs(30),
        )
        .as_u64()
        .expect("a count");
    assert_eq!(hops, 6, "the OOM chain has six hops");
    let drawn = browser.run(
        "return [...new Set([...document.querySelectorAll('#graph svg [data-hop]')] \
           .map(e => Number(e.dataset.hop)))].sort((a, b) => a - b)",
        json!([]),
    );
    assert_eq!(drawn, json!([0, 1, 2, 3, 4, 5]), "every hop drawn once");
    let titled = browser.run(
        "return [...document.querySelectorAll('#graph svg [data-hop]')] \
           .every(e => e.querySelector('title')?.textContent.includes(' s'))",
        json!([]),
    );
    assert_eq!(titled, json!(true), "every hop has its evidence on hover");
    let entities = browser.run(
        "return [...document.querySelectorAll('#graph svg .node')].map(n => n.dataset.entity)",
        json!([]),
    );
    assert!(
        entities
            .as_array()
            .expect("nodes")
            .contains(&json!(PROCESS)),
        "{entities}"
    );
    browser.click("#graph svg .edge");
    let evidence = browser.until(
        "a hop's evidence",
        "const e = document.querySelector('#evidence'); \
         return e.dataset.hop !== undefined && e.textContent",
        Duration::from_secs(10),
    );
    let evidence = evidence.as_str().expect("text");
    assert!(
        evidence.contains("from the root") && evidence.contains("kind-control-plane"),
        "{evidence}"
    );
    browser.screenshot("incident");

    // The root cause's timeline: its facts (the OOM kill among them) and the incident.
    browser.click(".incident-head .facts-row a");
    browser.until(
        "the timeline",
        "return document.querySelector('#timeline')?.dataset.loaded",
        Duration::from_secs(30),
    );
    let entries = browser.run(
        "return [...document.querySelectorAll('#timeline .entry')].map(e => \
           [e.className, e.querySelector('.type').textContent])",
        json!([]),
    );
    let entries = entries.as_array().expect("entries");
    let has = |class: &str, label: &str| {
        entries
            .iter()
            .any(|entry| entry[0].as_str().is_some_and(|c| c.contains(class)) && entry[1] == label)
    };
    assert!(has("fact", "oom kill"), "{entries:#?}");
    assert!(has("fact", "process exec"), "{entries:#?}");
    assert!(has("correlation", "oom_restart began"), "{entries:#?}");
    let marks = browser.run(
        "return document.querySelectorAll('#timeline-axis rect.hit').length",
        json!([]),
    );
    assert_eq!(
        marks,
        json!(entries.len()),
        "one mark per entry on the axis"
    );
    browser.screenshot("timeline");
}

#[test]
fn a_live_incident_appears_on_the_open_page_without_a_reload() {
    let browser = Browser::start();
    // A quarter of the original pace: the OOM kill comes about 16 s in, after the page is up.
    let run = live("web-live", 0.25, "120s");
    browser.open(&page(&run));
    browser.until(
        "the incidents",
        "return document.querySelector('#groups')?.dataset.loaded",
        Duration::from_secs(30),
    );
    browser.until(
        "the live stream connected",
        "return document.querySelector('#live').classList.contains('on')",
        Duration::from_secs(30),
    );
    let before = browser.run(
        "window.tapioNotReloaded = true; \
         return document.querySelectorAll('#groups .incident-link').length",
        json!([]),
    );
    assert_eq!(before, json!(0), "the OOM kill has not happened yet");
    browser.screenshot("live-before");
    let kind = browser.until(
        "the OOM incident, live",
        "return document.querySelector('#groups .incident-link')?.dataset.kind",
        Duration::from_secs(90),
    );
    assert_eq!(kind, "oom_restart");
    let state = browser.run(
        "return [window.tapioNotReloaded === true, \
                 Number(document.querySelector('#live').dataset.received || 0), \
                 document.querySelector('#groups article').classList.contains('fresh')]",
        json!([]),
    );
    assert_eq!(state[0], json!(true), "the page was not reloaded");
    assert!(
        state[1].as_u64().expect("count") > 0,
        "changes came over SSE"
    );
    assert_eq!(state[2], json!(true), "the new incident is marked as new");
    browser.screenshot("live");
}
