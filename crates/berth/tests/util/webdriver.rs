//! A small W3C WebDriver client over reqwest, driving Debian's headless Chromium through
//! `chromedriver` (both from the `chromium` and `chromium-driver` packages; `.ci/run` installs
//! them). Only what the console's browser tests use.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A running chromedriver with one browser session.
pub struct Browser {
    driver: Child,
    http: reqwest::Client,
    /// The tests are synchronous: calls block on this runtime.
    rt: tokio::runtime::Runtime,
    base: String,
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

impl Browser {
    /// Starts chromedriver on a port it picks itself and opens a headless Chromium session with
    /// a `width`x`height` window. Panics naming the packages when either is missing.
    pub fn start(width: u32, height: u32) -> Browser {
        let driver_bin = which("chromedriver").unwrap_or_else(|| {
            panic!("chromedriver is not on PATH: install Debian's chromium and chromium-driver (.ci/run does)")
        });
        let chromium =
            which("chromium").unwrap_or_else(|| panic!("chromium is not on PATH: install Debian's chromium"));
        // `--port=0`: chromedriver binds a port the kernel chooses and says which on stdout
        // ("... started successfully on port N."), so no other process can hold it meanwhile.
        let mut driver = Command::new(driver_bin)
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let port = started_on(driver.stdout.take().expect("chromedriver's stdout"));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut b = Browser { driver, http: reqwest::Client::new(), rt, base: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(20);
        while b.call("GET", "/status", None).map(|v| v["ready"] == true).ok() != Some(true) {
            assert!(Instant::now() < deadline, "chromedriver did not become ready within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--no-first-run", "--disable-extensions", format!("--window-size={width},{height}")],
            },
        }}});
        let session = b.call("POST", "/session", Some(caps)).expect("a browser session");
        let id = session["sessionId"].as_str().expect("a session id").to_string();
        b.base = format!("{}/session/{id}", b.base);
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self.http.post(&url).json(&body.unwrap_or_else(|| json!({}))),
        };
        self.rt.block_on(async {
            let resp = req.timeout(Duration::from_secs(60)).send().await.map_err(|e| e.to_string())?;
            let v: Value = resp.json().await.map_err(|e| e.to_string())?;
            if v["value"]["error"].is_string() {
                return Err(format!("{}: {}", v["value"]["error"], v["value"]["message"]));
            }
            Ok(v.get("value").cloned().unwrap_or(v))
        })
    }

    fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, path, body).unwrap_or_else(|e| panic!("webdriver {method} {path}: {e}"))
    }

    /// Opens `url`.
    pub fn goto(&self, url: &str) {
        self.ok("POST", "/url", Some(json!({"url": url})));
    }

    /// The current URL.
    pub fn url(&self) -> String {
        self.ok("GET", "/url", None).as_str().unwrap_or_default().to_string()
    }

    /// The element matching `css`, if any.
    pub fn find(&self, css: &str) -> Option<String> {
        let v = self.call("POST", "/element", Some(json!({"using": "css selector", "value": css}))).ok()?;
        v[ELEMENT].as_str().map(String::from)
    }

    /// The element matching `css`, waiting up to 10 s for it (a click that navigates can
    /// return before the next page is there); panics when none comes.
    pub fn get(&self, css: &str) -> String {
        let what = format!("an element matching {css}");
        self.wait_until(10, &what, |b| b.find(css))
    }

    /// How many elements match `css`.
    pub fn count(&self, css: &str) -> usize {
        let v = self.ok("POST", "/elements", Some(json!({"using": "css selector", "value": css})));
        v.as_array().map(Vec::len).unwrap_or(0)
    }

    /// Clicks the element.
    pub fn click(&self, element: &str) {
        self.ok("POST", &format!("/element/{element}/click"), None);
    }

    /// Types `text` into the element.
    pub fn type_into(&self, element: &str, text: &str) {
        self.ok("POST", &format!("/element/{element}/value"), Some(json!({"text": text})));
    }

    /// The element's visible text.
    pub fn text(&self, element: &str) -> String {
        self.ok("GET", &format!("/element/{element}/text"), None).as_str().unwrap_or_default().to_string()
    }

    /// The visible text of the element matching `css`, if there is one now. For polling a page
    /// that is loading or being changed by its scripts: an element that goes stale between
    /// the lookup and the read counts as not there yet.
    pub fn text_of(&self, css: &str) -> Option<String> {
        let element = self.find(css)?;
        let v = self.call("GET", &format!("/element/{element}/text"), None).ok()?;
        v.as_str().map(String::from)
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns its value.
    pub fn run(&self, script: &str, args: Value) -> Value {
        self.ok("POST", "/execute/sync", Some(json!({"script": script, "args": args})))
    }

    /// Runs `script`, which calls `arguments[arguments.length - 1]` with its result.
    pub fn run_async(&self, script: &str, args: Value) -> Value {
        self.ok("POST", "/execute/async", Some(json!({"script": script, "args": args})))
    }

    /// Polls `check` every 100 ms for at most `secs` seconds.
    pub fn wait_until<T>(&self, secs: u64, what: &str, mut check: impl FnMut(&Browser) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = check(self) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out after {secs} s waiting for {what} on {}", self.url());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Presses and releases `key` (a character, or a WebDriver key code such as `\u{E004}`
    /// for Tab) on whatever has the focus.
    pub fn press(&self, key: &str) {
        let actions = json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
            {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}]}]});
        self.ok("POST", "/actions", Some(actions));
    }

    /// Makes the page see `prefers-color-scheme: dark` (or light), as a system setting would
    /// (Chromium's DevTools emulation, through chromedriver).
    pub fn prefer_dark(&self, dark: bool) {
        let scheme = if dark { "dark" } else { "light" };
        let params = json!({"features": [{"name": "prefers-color-scheme", "value": scheme}]});
        self.ok("POST", "/goog/cdp/execute", Some(json!({"cmd": "Emulation.setEmulatedMedia", "params": params})));
    }

    /// The page's current HTML (as the browser has it, scripts' changes included).
    pub fn html(&self) -> String {
        self.run("return document.documentElement.outerHTML;", json!([])).as_str().unwrap_or_default().to_string()
    }

    /// The cookies the browser holds for the current page, as WebDriver lists them.
    pub fn cookies(&self) -> Value {
        self.ok("GET", "/cookie", None)
    }

    /// Saves a PNG screenshot of the window to `path`.
    pub fn screenshot(&self, path: &Path) {
        let b64 = self.ok("GET", "/screenshot", None);
        let png = super::decode_base64(b64.as_str().expect("base64 screenshot"));
        assert!(png.starts_with(b"\x89PNG"), "a screenshot is a PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.call("DELETE", "", None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Reads chromedriver's stdout until it names the port it listens on; the rest of its output
/// is drained in the background, so chromedriver never blocks on a full pipe.
fn started_on(stdout: std::process::ChildStdout) -> u16 {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if !sent {
                let port = line.split_once("started successfully on port ").map(|(_, p)| p.trim_end_matches('.'));
                if let Some(port) = port.and_then(|p| p.trim().parse::<u16>().ok()) {
                    sent = tx.send(port).is_ok();
                }
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20)).expect("chromedriver did not say which port it listens on within 20 s")
}
