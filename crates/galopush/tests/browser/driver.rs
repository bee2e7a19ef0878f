//! Headless Chromium driven over WebDriver (fantoccini): Debian's `chromium` and its
//! `chromedriver`, the driver started on a free port for each test and killed when the test's
//! [`Browser`] is dropped. One browser at a time in this test binary: Chromium is heavy, and the
//! machines these tests run on have two cores. A test opens its browser first, before it starts
//! its gateway, so that the gateway does not sit idle while another test has the browser.
//!
//! Without the two programs a test prints `SKIPPED: …` and passes, outside CI; in CI (`CI=true`)
//! it fails, since `.ci/run` installs them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use tokio::sync::{Mutex, MutexGuard};

use crate::common::terminal::SOON;

/// Taken by each [`Browser`] for its life.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// How long chromedriver may take to answer after it starts; generous for loaded machines.
const DRIVER_START: Duration = Duration::from_secs(60);

/// A program on `PATH`, or in `/usr/bin`.
fn program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// `chromedriver` on a port of its own. When dropped — the test passed or panicked — it ends
/// its browser session (which quits Chromium) and is then killed by its process id.
struct Chromedriver {
    child: Child,
    port: u16,
    url: String,
    session: Option<String>,
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        if let Some(session) = &self.session {
            end_session(self.port, session);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `DELETE /session/<id>`, written by hand: a drop cannot wait on the async client, and a
/// chromedriver killed with a session open would leave its Chromium running.
fn end_session(port: u16, session: &str) {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let request = format!(
        "DELETE /session/{session} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_ok() {
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
    }
}

impl Chromedriver {
    /// Starts chromedriver on a free port. The port is found by binding and letting go, so
    /// another process may take it first: a chromedriver that exits at once is started again on
    /// a fresh port, a few times. Its log goes to a file, quoted when it never answers.
    async fn start(program: &Path) -> Chromedriver {
        let log =
            std::env::temp_dir().join(format!("galopush-chromedriver-{}.log", std::process::id()));
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let child = Command::new(program)
                .arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1")
                .arg(format!("--log-path={}", log.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver starts");
            let mut driver = Chromedriver {
                child,
                port,
                url: format!("http://127.0.0.1:{port}"),
                session: None,
            };
            let status = format!("{}/status", driver.url);
            let deadline = tokio::time::Instant::now() + DRIVER_START;
            loop {
                if reqwest::get(&status).await.is_ok() {
                    return driver;
                }
                if let Ok(Some(exit)) = driver.child.try_wait() {
                    eprintln!("chromedriver on port {port} exited ({exit}); starting another");
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    let said = std::fs::read_to_string(&log).unwrap_or_default();
                    panic!("chromedriver did not answer on {status}; its log:\n{said}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        panic!("chromedriver exited three times; its log:\n{said}");
    }
}

/// A headless Chromium for one test.
pub struct Browser {
    pub client: Client,
    name: String,
    _driver: Chromedriver,
    _turn: MutexGuard<'static, ()>,
}

impl Browser {
    /// A browser window of `width` × `height` for the test `name`, or `None` (after saying so)
    /// when Chromium or chromedriver is missing outside CI.
    pub async fn open(name: &str, width: u32, height: u32) -> Option<Browser> {
        let (Some(chromium), Some(chromedriver)) = (program("chromium"), program("chromedriver"))
        else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "chromium and chromedriver are required in CI (apt-get install chromium chromium-driver)"
            );
            eprintln!(
                "SKIPPED: {name}: chromium or chromedriver is missing \
                 (apt-get install chromium chromium-driver)"
            );
            return None;
        };
        let turn = ONE_AT_A_TIME.lock().await;
        let mut driver = Chromedriver::start(&chromedriver).await;
        let mut capabilities = fantoccini::wd::Capabilities::new();
        capabilities.insert("browserName".into(), "chrome".into());
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium,
                "args": [
                    "--headless=new",
                    // Root in a container has no user namespace for Chromium's sandbox.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--hide-scrollbars",
                    format!("--window-size={width},{height}"),
                ],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&driver.url)
            .await
            .expect("a Chromium session");
        driver.session = client.session_id().await.expect("session id");
        client
            .set_window_size(width, height)
            .await
            .expect("window size");
        Some(Browser {
            client,
            name: name.to_owned(),
            _driver: driver,
            _turn: turn,
        })
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigate");
    }

    /// The element `css` matches, waiting for it to be there.
    pub async fn find(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(SOON)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{}: no {css}: {e}", self.name))
    }

    /// Types `text` into the field `css`, replacing what it held.
    pub async fn type_into(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.expect("clear");
        field.send_keys(text).await.expect("type");
    }

    pub async fn click(&self, css: &str) {
        self.find(css).await.click().await.expect("click");
    }

    /// Waits until the text of `css` contains `wanted`; returns that text.
    pub async fn wait_text(&self, css: &str, wanted: &str) -> String {
        self.wait_for_text(css, wanted, |text| text.contains(wanted))
            .await
    }

    /// Waits until the text of `css` is `wanted`, whitespace around it aside.
    pub async fn wait_exact(&self, css: &str, wanted: &str) {
        self.wait_for_text(css, wanted, |text| text.trim() == wanted)
            .await;
    }

    /// Waits until the text of `css` passes `check`; returns that text. On time-out the
    /// screenshot is saved (as `<test>-failed.png`) and the test fails showing the text.
    async fn wait_for_text(&self, css: &str, wanted: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + SOON;
        loop {
            let text = match self.client.find(Locator::Css(css)).await {
                Ok(element) => element.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if check(&text) {
                return text;
            }
            if tokio::time::Instant::now() >= deadline {
                self.screenshot(&format!("{}-failed", self.name)).await;
                panic!(
                    "{}: {css} never showed {wanted:?}; it shows {text:?}",
                    self.name
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `script` in the page; its result.
    pub async fn run(&self, script: &str) -> serde_json::Value {
        self.client
            .execute(script, Vec::new())
            .await
            .expect("script")
    }

    /// Saves a screenshot of the page from its top as
    /// `<target dir>/browser-screenshots/<name>.png`, for a person to look at; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        self.run("window.scrollTo(0, 0)").await;
        let png = self.client.screenshot().await.expect("screenshot");
        let dir = target_dir().join("browser-screenshots");
        std::fs::create_dir_all(&dir).expect("screenshot folder");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        eprintln!("screenshot: {}", path.display());
        path
    }
}

/// Cargo's target directory: `CARGO_TARGET_DIR` when it is an absolute path, else the one this
/// test binary was built in (`<target>/<profile>/deps/browser-…`).
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from)
        && dir.is_absolute()
    {
        return dir;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "deps"))
        .and_then(|deps| deps.parent()?.parent())
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir)
}
