//! The cockpit's web page in a real browser: headless Chromium driven through chromedriver (WebDriver), against a real etcd, real agents and a real `autopilot cockpit`.
//!
//! One scenario, in steps, because each needs the whole fleet:
//! 1. the fleet page lists the service `web` with both instances passing;
//! 2. h1's health check starts failing: its row turns red
//!    (`data-status=critical`) within 1 s of the catalog change, in the
//!    same document (a JS marker set before survives: no reload);
//! 3. with an admin token entered in the page, the node page's maintenance
//!    button (confirmed in the dialog) puts h2 in maintenance: its `_nodes`
//!    entry shows `maintenance=true` and its instance leaves the catalog;
//! 4. first contentful paint and the bytes transferred are measured and the
//!    page weight (html + js + css) is asserted under 200 KB; screenshots
//!    (desktop, phone 390x844, dark mode) go to
//!    `$CARGO_TARGET_DIR/cockpit-screenshots/`.
//!
//! Every wait polls a condition under a deadline; every process started
//! (etcd, agents, cockpit, chromedriver and its Chromium) is stopped on drop.
// Tests start the real binary, etcd, chromedriver and Chromium as child processes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use autopilot_testkit::{Etcd, free_port};
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

/// The longest any one step may take.
const STEP: Duration = Duration::from_secs(30);
/// How soon after the catalog change the page must show it.
const LIVE: Duration = Duration::from_secs(1);
/// The admin token the cockpit is started with.
const ADMIN: &str = "admin-token-0123456789abcdef";
/// WebDriver's Escape and Enter keys.
const ESCAPE: &str = "\u{e00c}";
const ENTER: &str = "\u{e007}";
/// The read token.
const READ: &str = "read-token-0123456789abcdef";

/// A child process in its own process group; dropping it stops the group
/// (chromedriver's Chromium, a job's children): SIGTERM, then SIGKILL.
struct Group(Child);

impl Group {
    fn spawn(cmd: &mut Command, what: &str) -> Group {
        cmd.process_group(0);
        Group(cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}")))
    }

    fn pgid(&self) -> i32 {
        i32::try_from(self.0.id()).unwrap_or(-1)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        killpg(self.pgid(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        killpg(self.pgid(), libc::SIGKILL);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Fleet {
    // Field order is drop order: the browser first, then the cockpit, the
    // agents, etcd, and the directory last.
    cockpit: Group,
    agents: Vec<(String, Dir, Agent)>,
    _etcd: Etcd,
    catalog: String,
    url: String,
    dir: Dir,
}

impl Fleet {
    fn new() -> Fleet {
        let dir = Dir::new("cockpit-page");
        let etcd = Etcd::single(&dir.0);
        let catalog = format!("etcd://{}/cockpit", etcd.endpoint());
        let mut agents = Vec::new();
        for host in ["h1", "h2"] {
            let sub = dir.child(host);
            let port = free_port();
            let cfg = format!(
                r#"{{
  control: {{ socket: "@SOCKET@" }},
  stopTimeout: "2s",
  jobs: [{{ name: "web", exec: "sleep 600", port: {port}, interfaces: ["static:127.0.0.1"], tags: ["v1"],
            health: {{ exec: "test ! -e @DIR@/fail", interval: "100ms", ttl: 2, timeout: "1s" }} }}]
}}"#
            );
            let a = start_with(
                &sub,
                &cfg,
                &[],
                &[
                    ("AUTOPILOT_CATALOG", &catalog),
                    ("AUTOPILOT_HOSTNAME", host),
                    ("AUTOPILOT_INTERFACE", "static:127.0.0.1"),
                    ("AUTOPILOT_ETCD_TTL", "3s"),
                ],
            );
            a.ready();
            agents.push((host.to_string(), sub, a));
        }
        let tokens = dir.write(
            "tokens",
            &format!("# role name token\nadmin ops {ADMIN}\nread viewer {READ}\n"),
        );
        std::fs::set_permissions(&tokens, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod tokens");
        let log = dir.path("cockpit.log");
        let out = std::fs::File::create(&log).expect("cockpit log");
        let listen = format!("127.0.0.1:{}", free_port());
        let cockpit = Group::spawn(
            Command::new(bin())
                .args(["cockpit", "--listen", &listen, "--catalog", &catalog])
                .arg("--token-file")
                .arg(&tokens)
                .env("AUTOPILOT_CATALOG", &catalog)
                .env_remove("CONTAINERPILOT")
                .env_remove("AUTOPILOT_CONFIG")
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("dup"))
                .stderr(out),
            "autopilot cockpit",
        );
        let mut url = String::new();
        let up = wait_for(STEP, || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            match text
                .lines()
                .find_map(|l| l.split("cockpit listening on ").nth(1))
            {
                Some(u) => {
                    url = u.trim().to_string();
                    true
                }
                None => false,
            }
        });
        assert!(
            up,
            "the cockpit never said it was listening; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Fleet {
            cockpit,
            agents,
            _etcd: etcd,
            catalog,
            url,
            dir,
        }
    }

    /// A service's instances as `autopilot catalog instances NAME --json` prints them.
    fn instances(&self, service: &str) -> Vec<Value> {
        let out = Command::new(bin())
            .args([
                "catalog",
                "--catalog",
                &self.catalog,
                "instances",
                service,
                "--json",
            ])
            .env_remove("CONTAINERPILOT")
            .env_remove("AUTOPILOT_CONFIG")
            .stdin(Stdio::null())
            .output()
            .expect("run autopilot catalog");
        if !out.status.success() {
            return Vec::new();
        }
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    fn status_of(&self, service: &str, id: &str) -> Option<String> {
        self.instances(service)
            .iter()
            .find(|i| i["id"] == id)
            .and_then(|i| i["status"].as_str().map(str::to_string))
    }

    fn logs(&self) -> String {
        let mut s = format!(
            "--- cockpit (pid {}):\n{}",
            self.cockpit.0.id(),
            self.dir.read("cockpit.log")
        );
        for (h, _, a) in &self.agents {
            s.push_str(&format!("--- agent {h}:\n{}", a.log()));
        }
        s
    }
}

/// chromedriver and its headless Chromium, stopped (with the temporary
/// profile removed) on drop.
struct Browser {
    client: Option<Client>,
    _driver: Group,
    _profile: Dir,
}

impl Browser {
    async fn start(tag: &str, extra: &[&str]) -> Browser {
        let profile = Dir::new(&format!("cockpit-chromium-{tag}"));
        let port = free_port();
        let driver = Group::spawn(
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            "chromedriver (apt-get install chromium-driver)",
        );
        assert!(
            wait_for(Duration::from_secs(10), || {
                TcpStream::connect(("127.0.0.1", port)).is_ok()
            }),
            "chromedriver did not listen on port {port}"
        );
        let mut args = vec![
            "--headless=new".to_string(),
            // CI runs as root: Chromium's sandbox refuses to start as root.
            "--no-sandbox".to_string(),
            "--disable-gpu".to_string(),
            "--disable-dev-shm-usage".to_string(),
            "--no-first-run".to_string(),
            "--window-size=1280,1000".to_string(),
            format!("--user-data-dir={}", profile.0.display()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut opts = json!({ "args": args });
        if let Some(bin) = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .iter()
            .find(|p| Path::new(p).exists())
        {
            opts["binary"] = json!(bin);
        }
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), opts);
        let client = tokio::time::timeout(
            STEP,
            ClientBuilder::new(HttpConnector::new())
                .capabilities(caps)
                .connect(&format!("http://127.0.0.1:{port}")),
        )
        .await
        .expect("chromedriver session within 30 s")
        .expect("chromedriver session");
        Browser {
            client: Some(client),
            _driver: driver,
            _profile: profile,
        }
    }

    fn c(&self) -> &Client {
        self.client.as_ref().expect("browser session")
    }

    async fn js(&self, script: &str) -> Value {
        tokio::time::timeout(STEP, self.c().execute(script, vec![]))
            .await
            .expect("script within 30 s")
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Polls `script` (returning a boolean) every 50 ms until it is true.
    async fn until(&self, limit: Duration, script: &str) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.js(script).await == Value::Bool(true) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clicks the element `css` finds. A live update re-renders the screen,
    /// so an element found may be replaced before the click: find it again.
    async fn click(&self, css: &str, what: &str) {
        let deadline = Instant::now() + STEP;
        loop {
            let tried = match self.c().find(Locator::Css(css)).await {
                Ok(e) => e.click().await.map(|_| ()),
                Err(e) => Err(e),
            };
            match tried {
                Ok(()) => return,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("click {what}: {e}; again");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("click {what} ({css}): {e}"),
            }
        }
    }

    /// Waits until the confirmation dialog is open (or closed).
    async fn dialog_open(&self, open: bool) {
        assert!(
            self.until(
                STEP,
                &format!(r#"return document.getElementById("confirm").open === {open};"#)
            )
            .await,
            "the confirmation dialog open: {open}"
        );
    }

    /// Presses a key in the focused element.
    async fn key(&self, key: &str) {
        let el = self.c().active_element().await.expect("focused element");
        el.send_keys(key).await.expect("press a key");
    }

    /// Types `token` into the page's token form and submits it.
    async fn use_token(&self, token: &str) {
        let input = self
            .c()
            .find(Locator::Id("token-input"))
            .await
            .expect("token input");
        input.send_keys(token).await.expect("type the token");
        self.c()
            .find(Locator::Id("token-save"))
            .await
            .expect("token button")
            .click()
            .await
            .expect("use the token");
    }

    async fn shot(&self, dir: &Path, name: &str) -> PathBuf {
        let png = tokio::time::timeout(STEP, self.c().screenshot())
            .await
            .expect("screenshot within 30 s")
            .expect("screenshot");
        let p = dir.join(name);
        std::fs::write(&p, png).expect("write screenshot");
        p
    }

    async fn close(mut self) {
        if let Some(c) = self.client.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), c.close()).await;
        }
    }
}

fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let d = target.join("cockpit-screenshots");
    std::fs::create_dir_all(&d).expect("screenshot dir");
    d
}

/// A JS expression: the row of `id` in the page's tables has status `status`.
fn row_is(id: &str, status: &str) -> String {
    format!(
        r#"return !!document.querySelector('#view tr[data-id="{id}"][data-status="{status}"]');"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cockpit_page_in_a_real_browser() {
    let fleet = Fleet::new();
    let shots = screenshots();
    assert!(
        wait_for(STEP, || {
            let i = fleet.instances("web");
            i.len() == 2 && i.iter().all(|i| i["status"] == "passing")
        }),
        "both web instances passing in the catalog; {}",
        fleet.logs()
    );

    let b = Browser::start("desktop", &[]).await;
    // 1. The fleet page lists `web` with 2/2 passing.
    b.c()
        .goto(&format!("{}/#/", fleet.url))
        .await
        .expect("open the page");
    // Reads need a token once token files are configured: a read token first.
    b.use_token(READ).await;
    assert!(
        b.until(
            STEP,
            r#"return document.getElementById("whoami").dataset.role === "read";"#
        )
        .await,
        "whoami shows read; page:\n{}",
        b.js("return document.body.innerText;").await
    );
    assert!(
        b.until(
            STEP,
            r#"const r = document.querySelector('#view tr[data-id="web"]');
               return !!r && r.dataset.status === "passing" && r.textContent.includes("2/2");"#
        )
        .await,
        "fleet page: web 2/2 passing; page:\n{}\n{}",
        b.js("return document.body.innerText;").await,
        fleet.logs()
    );
    assert!(
        b.until(
            STEP,
            r#"return document.getElementById("live").dataset.state === "live";"#
        )
        .await,
        "the live indicator says live"
    );

    // 4a. First paint and weight of the first load.
    let perf = b
        .js(r#"const p = performance.getEntriesByName("first-contentful-paint")[0];
               const n = performance.getEntriesByType("navigation")[0];
               const r = performance.getEntriesByType("resource");
               const assets = r.filter((x) => x.name.includes("/assets/"));
               return {
                 fcp: p ? p.startTime : null,
                 weight: n.decodedBodySize + assets.reduce((a, x) => a + x.decodedBodySize, 0),
                 transferred: n.transferSize + r.reduce((a, x) => a + x.transferSize, 0),
                 files: [[n.name, n.decodedBodySize]].concat(assets.map((x) => [x.name, x.decodedBodySize])),
               };"#)
        .await;
    eprintln!("cockpit page first load: {perf}");
    let weight = perf["weight"].as_u64().unwrap_or(0);
    assert!(
        perf["files"].as_array().map_or(0, Vec::len) >= 3,
        "html, app.js and app.css measured: {perf}"
    );
    assert!(
        weight > 0 && weight < 200 * 1024,
        "page weight {weight} bytes, the limit is 200 KB: {perf}"
    );
    assert!(
        perf["fcp"].as_f64().is_some_and(|f| f > 0.0),
        "first-contentful-paint recorded: {perf}"
    );

    // 2. h1 fails its health check: the row turns red without a reload.
    b.js("window.__cockpitMarker = 4242; return true;").await;
    fleet.agents[0].1.write("fail", "");
    let started = Instant::now();
    let (mut in_catalog, mut on_page) = (None, None);
    while (in_catalog.is_none() || on_page.is_none()) && started.elapsed() < STEP {
        if on_page.is_none() && b.js(&row_is("web-h1", "critical")).await == Value::Bool(true) {
            on_page = Some(Instant::now());
        }
        if in_catalog.is_none() && fleet.status_of("web", "web-h1").as_deref() == Some("critical") {
            in_catalog = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (Some(cat_at), Some(page_at)) = (in_catalog, on_page) else {
        panic!(
            "web-h1 critical: catalog {in_catalog:?}, page {on_page:?}; page:\n{}\n{}",
            b.js("return document.body.innerText;").await,
            fleet.logs()
        );
    };
    let lag = page_at.saturating_duration_since(cat_at);
    eprintln!(
        "web-h1 critical in the catalog after {:?}, on the page after {:?} (lag {lag:?})",
        cat_at - started,
        page_at - started
    );
    assert!(
        lag <= LIVE,
        "the page showed the failure {lag:?} after the catalog"
    );
    assert_eq!(
        b.js("return window.__cockpitMarker === 4242;").await,
        Value::Bool(true),
        "the page reloaded instead of updating in place"
    );
    assert!(
        b.until(
            STEP,
            r#"const r = document.querySelector('#view tr[data-id="web"]');
               return !!r && r.dataset.status === "critical" && r.textContent.includes("1/2");"#
        )
        .await,
        "the service row shows 1/2 and critical"
    );
    let desktop = b.shot(&shots, "desktop-fleet.png").await;

    // 3. Admin token, node page, maintenance on, confirmed: the agent acts.
    b.use_token(ADMIN).await;
    assert!(
        b.until(
            STEP,
            r#"return document.getElementById("whoami").dataset.role === "admin";"#
        )
        .await,
        "whoami shows admin; page:\n{}",
        b.js("return document.body.innerText;").await
    );
    b.click(r##"#view a[href="#/nodes/h2"]"##, "the link to node h2")
        .await;
    assert!(
        b.until(
            STEP,
            r#"const x = document.querySelector('#view button[data-op="on"]');
               return !!x && !x.disabled;"#
        )
        .await,
        "node page with an enabled maintenance button; page:\n{}",
        b.js("return document.body.innerText;").await
    );
    b.shot(&shots, "desktop-node.png").await;
    // Escape cancels the dialog: nothing is sent.
    b.click(r#"#view button[data-op="on"]"#, "maintenance on")
        .await;
    b.dialog_open(true).await;
    b.key(ESCAPE).await;
    b.dialog_open(false).await;
    assert_eq!(
        b.js(r#"return document.getElementById("notice").hidden;"#)
            .await,
        Value::Bool(true),
        "a cancelled action sent nothing"
    );
    // Enter confirms (the focused default button).
    b.click(r#"#view button[data-op="on"]"#, "maintenance on")
        .await;
    b.dialog_open(true).await;
    b.key(ENTER).await;
    b.dialog_open(false).await;
    let mut node = Value::Null;
    let acted = wait_for(STEP, || {
        node = fleet
            .instances("_nodes")
            .into_iter()
            .find(|n| n["id"] == "h2")
            .unwrap_or(Value::Null);
        let tagged = node["tags"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t == "maintenance=true"));
        tagged && fleet.status_of("web", "web-h2").is_none()
    });
    assert!(
        acted,
        "h2 in maintenance (_nodes entry {node}, web: {:?}); page:\n{}\n{}",
        fleet.instances("web"),
        b.js("return document.body.innerText;").await,
        fleet.logs()
    );
    assert!(
        b.until(
            STEP,
            r#"const m = document.getElementById("maintenance-state");
                          return !!m && m.dataset.on === "true";"#
        )
        .await,
        "the node page shows maintenance on; page:\n{}",
        b.js("return document.body.innerText;").await
    );

    // 4b. Phone-sized viewport.
    b.c().set_window_size(390, 844).await.expect("resize");
    b.c()
        .goto(&format!("{}/#/", fleet.url))
        .await
        .expect("reopen");
    assert!(
        b.until(
            STEP,
            r#"return document.getElementById("view").getAttribute("aria-busy") === "false";"#
        )
        .await,
        "fleet page rendered on a phone viewport"
    );
    let overflow = b
        .js("return document.documentElement.scrollWidth - document.documentElement.clientWidth;")
        .await;
    b.shot(&shots, "phone-fleet.png").await;
    assert!(
        overflow.as_i64().is_some_and(|o| o <= 0),
        "no horizontal scrolling at 390 px: overflow {overflow}"
    );
    b.close().await;

    // 4c. Dark mode (prefers-color-scheme: dark).
    let dark = Browser::start(
        "dark",
        &[
            "--force-dark-mode",
            "--blink-settings=preferredColorScheme=0",
        ],
    )
    .await;
    dark.c()
        .goto(&format!("{}/#/", fleet.url))
        .await
        .expect("open dark");
    // The token lives in the tab's sessionStorage: this is a new browser.
    dark.js(&format!(
        r#"sessionStorage.setItem("autopilot.cockpit.token", "{ADMIN}"); return true;"#
    ))
    .await;
    dark.c().refresh().await.expect("reload with the token");
    assert!(
        dark.until(STEP, r#"return matchMedia("(prefers-color-scheme: dark)").matches
                             && document.getElementById("view").getAttribute("aria-busy") === "false";"#)
            .await,
        "dark mode page rendered"
    );
    dark.shot(&shots, "dark-fleet.png").await;
    dark.close().await;
    eprintln!(
        "screenshots in {} (desktop: {})",
        shots.display(),
        desktop.display()
    );
}
