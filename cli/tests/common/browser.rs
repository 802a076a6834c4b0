//! A headless Chromium driven over WebDriver for the dashboard's browser tests: `chromedriver`
//! on a free port, one session per [`Browser`] (its own profile directory), screenshots saved
//! into `target/screenshots/` as the tests' artifacts, and the browser's console log.
//!
//! A missing `chromedriver` is a test failure with the install command, never a skip.

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use prx_ci_shared::testing::{free_port, tool_path, wait_until, workspace_root};
use reqwest::{Method, Url};

/// How long chromedriver and the browser session may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`Browser::wait_for`] and friends wait unless told otherwise.
pub const WAIT: Duration = Duration::from_secs(20);

/// The window of a laptop, in CSS pixels.
const DESKTOP: (u32, u32) = (1280, 900);
/// A phone's viewport (an iPhone 12 to 15), in CSS pixels. Chromium's windows are at least 500
/// pixels wide, so a phone is emulated (`mobileEmulation`), not a smaller window.
const PHONE: (u32, u32) = (390, 844);

/// One entry of the browser's console log (chromedriver's `se/log`, type `browser`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ConsoleEntry {
    /// `SEVERE`, `WARNING`, `INFO`, `DEBUG`.
    pub level: String,
    pub message: String,
    #[serde(default)]
    pub source: String,
}

/// A headless Chromium session and the chromedriver serving it; both are killed on drop.
pub struct Browser {
    client: Client,
    /// chromedriver, the leader of its own process group (Chromium and its helpers join it).
    driver: Child,
    /// The browser's profile (`--user-data-dir`) and temporary files (`TMPDIR`), removed on
    /// drop.
    _dir: tempfile::TempDir,
    /// Every console entry read so far: reading chromedriver's log empties it.
    console: Mutex<Vec<ConsoleEntry>>,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("chromedriver", &self.driver.id())
            .finish_non_exhaustive()
    }
}

impl Browser {
    /// A laptop-sized (1280x900) headless Chromium.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// A headless Chromium emulating a phone (390x844, touch, a mobile user agent's layout).
    pub async fn start_phone() -> Self {
        Self::start_with(Some(PHONE)).await
    }

    /// Starts chromedriver and a session; `phone` is the emulated phone's viewport.
    async fn start_with(phone: Option<(u32, u32)>) -> Self {
        let program = tool_path("chromedriver");
        let port = free_port();
        let dir = tempfile::tempdir().expect("browser directory");
        let (profile, tmp) = (dir.path().join("profile"), dir.path().join("tmp"));
        std::fs::create_dir(&tmp).expect("browser temporary directory");
        let mut command = Command::new(&program);
        command
            .arg(format!("--port={port}"))
            .env("TMPDIR", &tmp)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own process group, so that drop kills Chromium with it.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let driver = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let driver_url = format!("http://127.0.0.1:{port}");
        // Owned by `Browser` from here on, so a failure below still kills chromedriver.
        let pending = PendingDriver(Some(driver));

        let status = format!("{driver_url}/status");
        wait_until(START_TIMEOUT, "chromedriver's /status to be ready", || {
            let status = status.clone();
            async move {
                let body: serde_json::Value =
                    reqwest::get(&status).await.ok()?.json().await.ok()?;
                (body["value"]["ready"] == true).then_some(())
            }
        })
        .await;

        let (width, height) = DESKTOP;
        let mut chrome = serde_json::json!({
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                format!("--window-size={width},{height}"),
                format!("--user-data-dir={}", profile.display()),
            ],
        });
        if let Some((width, height)) = phone {
            chrome["mobileEmulation"] = serde_json::json!({
                "deviceMetrics": {
                    "width": width, "height": height, "pixelRatio": 1.0, "mobile": true, "touch": true,
                },
            });
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), "chrome".into());
        capabilities.insert("goog:chromeOptions".into(), chrome);
        capabilities.insert(
            "goog:loggingPrefs".into(),
            serde_json::json!({"browser": "ALL"}),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = tokio::time::timeout(
            START_TIMEOUT,
            ClientBuilder::new(connector)
                .capabilities(capabilities)
                .connect(&driver_url),
        )
        .await
        .unwrap_or_else(|_| panic!("no browser session from chromedriver within {START_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("chromedriver could not start Chromium (is Debian's `chromium` installed? run `scripts/install-tools`): {e}"));

        Self {
            client,
            driver: pending.into_inner(),
            _dir: dir,
            console: Mutex::new(Vec::new()),
        }
    }

    /// The WebDriver client, for what the helpers here do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Navigates to `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    }

    /// The current page's URL.
    pub async fn current_url(&self) -> Url {
        self.client.current_url().await.expect("current URL")
    }

    // Pages swap their live region at any time, so an element found a moment ago may be gone
    // (stale): every helper below looks its element up by selector and retries, up to `WAIT`.

    /// Waits until an element matches `css`; panics after `timeout`.
    pub async fn wait_for(&self, css: &str, timeout: Duration) {
        wait_until(timeout, &format!("an element matching `{css}`"), || async {
            self.client.find(Locator::Css(css)).await.ok().map(drop)
        })
        .await
    }

    /// Waits until an element matching `css` has `text` in its visible text; panics after
    /// `timeout`.
    pub async fn wait_for_text(&self, css: &str, text: &str, timeout: Duration) {
        wait_until(
            timeout,
            &format!("an element matching `{css}` with the text {text:?}"),
            || async {
                for element in self.client.find_all(Locator::Css(css)).await.ok()? {
                    if element.text().await.is_ok_and(|t| t.contains(text)) {
                        return Some(());
                    }
                }
                None
            },
        )
        .await
    }

    /// How many elements match `css` now.
    pub async fn count(&self, css: &str) -> usize {
        self.client
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("cannot search for `{css}`: {e}"))
            .len()
    }

    /// The visible text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        self.with_element(css, "its text", |e| async move { e.text().await })
            .await
    }

    /// The attribute `name` of the first element matching `css` (waits until it has one).
    pub async fn attr(&self, css: &str, name: &str) -> String {
        let what = format!("its attribute `{name}`");
        wait_until(
            WAIT,
            &format!("an element matching `{css}`: {what}"),
            || async {
                let element = self.client.find(Locator::Css(css)).await.ok()?;
                element.attr(name).await.ok().flatten()
            },
        )
        .await
    }

    /// The attribute `name` of every element matching `css`, in document order.
    pub async fn attrs(&self, css: &str, name: &str) -> Vec<String> {
        wait_until(WAIT, &format!("the `{name}` of every `{css}`"), || async {
            let mut values = Vec::new();
            for element in self.client.find_all(Locator::Css(css)).await.ok()? {
                values.push(element.attr(name).await.ok()?.unwrap_or_default());
            }
            Some(values)
        })
        .await
    }

    /// Clicks the first element matching `css`.
    pub async fn click(&self, css: &str) {
        self.with_element(css, "a click", |e| async move { e.click().await.map(drop) })
            .await
    }

    /// Types `text` into the first element matching `css`.
    pub async fn type_into(&self, css: &str, text: &str) {
        self.with_element(css, "typing", |e| async move { e.send_keys(text).await })
            .await
    }

    /// Scrolls the first element matching `css` into view (for a screenshot of it).
    pub async fn scroll_into_view(&self, css: &str) {
        self.with_element(css, "scrolling to it", |e| async move {
            let element = serde_json::to_value(&e).expect("an element as JSON");
            self.client
                .execute(
                    "arguments[0].scrollIntoView({block: 'center'}); return null;",
                    vec![element],
                )
                .await
                .map(drop)
        })
        .await
    }

    /// Runs `act` on the first element matching `css`, again on a fresh lookup while it fails
    /// (none yet, or stale), up to `WAIT`.
    async fn with_element<T, F, Fut>(&self, css: &str, what: &str, act: F) -> T
    where
        F: Fn(Element) -> Fut,
        Fut: Future<Output = Result<T, fantoccini::error::CmdError>>,
    {
        wait_until(
            WAIT,
            &format!("an element matching `{css}`: {what}"),
            || async {
                let element = self.client.find(Locator::Css(css)).await.ok()?;
                act(element).await.ok()
            },
        )
        .await
    }

    /// Saves a screenshot of the window as `target/screenshots/<name>.png`; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let dir = screenshots_dir();
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }

    /// Every console entry of level `SEVERE` (errors, failed loads, uncaught exceptions) the
    /// browser logged since the session started.
    pub async fn console_errors(&self) -> Vec<ConsoleEntry> {
        self.console_log()
            .await
            .into_iter()
            .filter(|e| e.level == "SEVERE")
            .collect()
    }

    /// Every console entry the browser logged since the session started.
    pub async fn console_log(&self) -> Vec<ConsoleEntry> {
        let value = self
            .client
            .issue_cmd(BrowserLog)
            .await
            .expect("chromedriver's browser log");
        let new: Vec<ConsoleEntry> = serde_json::from_value(value).expect("browser log entries");
        let mut seen = self.console.lock().expect("console log lock");
        seen.extend(new);
        seen.clone()
    }

    /// Ends the browser session (Chromium quits) and stops chromedriver.
    pub async fn close(self) {
        self.client
            .clone()
            .close()
            .await
            .expect("close the browser session");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.driver);
    }
}

/// `target/screenshots/` (under `$CARGO_TARGET_DIR` when set).
pub fn screenshots_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("screenshots")
}

/// chromedriver's (non-standard, Selenium-era) log endpoint: `POST /session/{id}/se/log`
/// `{"type": "browser"}` returns the console entries logged since the last call.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base_url: &Url, session_id: Option<&str>) -> Result<Url, url::ParseError> {
        let session = session_id.expect("a browser session");
        base_url.join(&format!("session/{session}/se/log"))
    }

    fn method_and_body(&self, _request_url: &Url) -> (Method, Option<String>) {
        (Method::POST, Some(r#"{"type":"browser"}"#.to_owned()))
    }
}

/// chromedriver until [`Browser`] owns it: killed if the start fails half-way.
struct PendingDriver(Option<Child>);

impl PendingDriver {
    fn into_inner(mut self) -> Child {
        self.0.take().expect("chromedriver")
    }
}

impl Drop for PendingDriver {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            kill_group(child);
        }
    }
}

/// Kills `child`'s process group (chromedriver, Chromium and its helpers) and reaps `child`.
fn kill_group(child: &mut Child) {
    let _ = rustix::process::kill_process_group(
        rustix::process::Pid::from_child(child),
        rustix::process::Signal::KILL,
    );
    let _ = child.wait();
}
