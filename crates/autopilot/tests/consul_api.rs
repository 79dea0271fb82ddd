//! The Consul-compatible API end to end, with clients nobody here wrote: `curl` for the HTTP semantics (kv, sessions, agent, blocking queries, errors, tokens), python-consul (Debian `python3-consul`), and autopilot agents' instances followed by a blocking health watch as Prometheus's `consul_sd_configs` does it (Debian's Prometheus 2.42 is built with Consul SD disabled, so the real one cannot run here).
// Tests start the real binary, curl, prometheus and python3 as child processes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use autopilot_testkit::free_port;
use common::*;

/// A child process stopped on drop: SIGTERM, then SIGKILL.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        kill(i32::try_from(self.0.id()).unwrap_or(0), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `autopilot consul-api` on a free port; waits until it answers.
fn consul_api(d: &Dir, catalog: &str, extra: &[&str]) -> (Proc, String) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let log = std::fs::File::create(d.path(&format!("consul-{port}.log"))).unwrap();
    let p = Proc(
        Command::new(bin())
            .args(["consul-api", "--listen", &addr, "--catalog", catalog])
            .args(["--node", "n1"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let base = format!("http://{addr}");
    assert!(
        wait_for(Duration::from_secs(20), || {
            http_tcp(&addr, "/v1/status/leader").is_some()
        }),
        "consul-api never answered:\n{}",
        std::fs::read_to_string(d.path(&format!("consul-{port}.log"))).unwrap_or_default()
    );
    (p, base)
}

/// One HTTP exchange through curl.
struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    fn index(&self) -> u64 {
        self.headers
            .get("x-consul-index")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no X-Consul-Index: {:?}", self.headers))
    }
}

fn curl(method: &str, url: &str, body: Option<&[u8]>, headers: &[&str]) -> Reply {
    let mut c = Command::new("curl");
    c.args(["-s", "-i", "--max-time", "30", "-X", method, url]);
    for h in headers {
        c.args(["-H", h]);
    }
    if body.is_some() {
        c.args(["--data-binary", "@-"]);
    }
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run curl");
    if let Some(b) = body {
        child.stdin.take().unwrap().write_all(b).unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no reply from {method} {url}: {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

fn get(url: &str) -> Reply {
    curl("GET", url, None, &[])
}

fn put(url: &str, body: &str) -> Reply {
    curl("PUT", url, Some(body.as_bytes()), &[])
}

#[test]
fn curl_kv_sessions_agent_blocking_queries_errors_and_tokens() {
    let d = Dir::new("consul-api");
    let catalog = format!("local://{}", d.path("catalog").display());
    let (_srv, base) = consul_api(&d, &catalog, &[]);
    let u = |p: &str| format!("{base}{p}");

    // ---- kv ------------------------------------------------------------
    let missing = get(&u("/v1/kv/app/config"));
    assert_eq!(missing.status, 404);
    assert!(missing.index() > 0, "X-Consul-Index is never 0");
    assert_eq!(put(&u("/v1/kv/app/config?cas=0"), "hello").body, "true");
    assert_eq!(
        put(&u("/v1/kv/app/config?cas=0"), "again").body,
        "false",
        "cas=0 only creates"
    );
    let r = get(&u("/v1/kv/app/config"));
    assert_eq!(r.status, 200);
    let e = &r.json()[0];
    assert_eq!(e["Key"], "app/config");
    assert_eq!(e["Value"], "aGVsbG8=", "base64 of hello");
    assert_eq!(e["Flags"], 0);
    assert_eq!(e["LockIndex"], 0);
    assert!(e.get("Session").is_none());
    let m1 = e["ModifyIndex"].as_u64().unwrap();
    assert_eq!(e["CreateIndex"].as_u64().unwrap(), m1);
    assert!(r.index() >= m1);
    assert_eq!(
        put(&u(&format!("/v1/kv/app/config?cas={m1}&flags=42")), "v2").body,
        "true"
    );
    assert_eq!(
        put(&u(&format!("/v1/kv/app/config?cas={m1}")), "v3").body,
        "false",
        "a stale cas loses"
    );
    let e2 = get(&u("/v1/kv/app/config")).json()[0].clone();
    assert_eq!(e2["Flags"], 42);
    assert_eq!(e2["CreateIndex"].as_u64().unwrap(), m1);
    let m2 = e2["ModifyIndex"].as_u64().unwrap();
    assert!(m2 > m1);
    let raw = get(&u("/v1/kv/app/config?raw"));
    assert_eq!((raw.status, raw.body.as_str()), (200, "v2"));
    assert_eq!(put(&u("/v1/kv/app/db/host"), "h").body, "true");
    assert_eq!(put(&u("/v1/kv/other"), "o").body, "true");
    assert_eq!(
        get(&u("/v1/kv/app/?keys&separator=/")).json(),
        serde_json::json!(["app/config", "app/db/"])
    );
    assert_eq!(
        get(&u("/v1/kv/app?keys")).json(),
        serde_json::json!(["app/config", "app/db/host"])
    );
    let rec = get(&u("/v1/kv/app?recurse")).json();
    assert_eq!(rec.as_array().unwrap().len(), 2);
    assert_eq!(get(&u("/v1/kv/nothing?recurse")).status, 404);
    assert_eq!(get(&u("/v1/kv/nothing?keys")).status, 404);
    assert_eq!(
        curl(
            "DELETE",
            &u(&format!("/v1/kv/app/config?cas={m1}")),
            None,
            &[]
        )
        .body,
        "false"
    );
    assert_eq!(
        curl(
            "DELETE",
            &u(&format!("/v1/kv/app/config?cas={m2}")),
            None,
            &[]
        )
        .body,
        "true"
    );
    assert_eq!(get(&u("/v1/kv/app/config")).status, 404);
    assert_eq!(
        curl("DELETE", &u("/v1/kv/app?recurse"), None, &[]).body,
        "true"
    );
    assert_eq!(get(&u("/v1/kv/app/db/host")).status, 404);
    assert_eq!(get(&u("/v1/kv/other")).status, 200);

    // ---- blocking queries ----------------------------------------------
    let before = get(&u("/v1/kv/watched"));
    let i0 = before.index();
    let t = Instant::now();
    let url = u(&format!("/v1/kv/watched?index={i0}&wait=20s"));
    let waiter = std::thread::spawn(move || get(&url));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!waiter.is_finished(), "a blocking query waits for a change");
    // A write elsewhere does not end it; one to the key does.
    assert_eq!(put(&u("/v1/kv/unrelated"), "x").body, "true");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !waiter.is_finished(),
        "a change that does not alter the answer does not end the wait"
    );
    assert_eq!(put(&u("/v1/kv/watched"), "now").body, "true");
    let woke = waiter.join().unwrap();
    let took = t.elapsed();
    assert_eq!(woke.status, 200);
    assert_eq!(woke.json()[0]["Value"], "bm93");
    assert!(woke.index() > i0, "the index grows");
    assert!(took < Duration::from_secs(5), "woke after {took:?}");
    // No change: the wait ends with the same index.
    let i1 = woke.index();
    let t = Instant::now();
    let same = get(&u(&format!("/v1/kv/watched?index={i1}&wait=1s")));
    let took = t.elapsed();
    assert_eq!(same.index(), i1);
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(1500),
        "a 1s wait (plus at most 1/16 jitter) took {took:?}"
    );
    // An index from the future (a reset): answered at once.
    let t = Instant::now();
    let reset = get(&u(&format!("/v1/kv/watched?index={}&wait=10s", i1 + 1000)));
    assert_eq!(reset.status, 200);
    assert!(t.elapsed() < Duration::from_secs(2));
    // index=0: at once.
    let t = Instant::now();
    get(&u("/v1/kv/watched?index=0&wait=10s"));
    assert!(t.elapsed() < Duration::from_secs(2));

    // ---- sessions and locks --------------------------------------------
    let s1 = put(
        &u("/v1/session/create"),
        r#"{"Name":"one","TTL":"10s","LockDelay":"0s"}"#,
    )
    .json()["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let s2 = put(
        &u("/v1/session/create"),
        r#"{"Name":"two","TTL":"10s","Behavior":"delete","LockDelay":"0s"}"#,
    )
    .json()["ID"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(s1.len(), 36);
    assert_ne!(s1, s2);
    let info = get(&u(&format!("/v1/session/info/{s1}"))).json();
    assert_eq!(info[0]["Name"], "one");
    assert_eq!(info[0]["TTL"], "10s");
    assert_eq!(info[0]["Behavior"], "release");
    assert_eq!(
        get(&u("/v1/session/list")).json().as_array().unwrap().len(),
        2
    );
    assert_eq!(
        put(&u(&format!("/v1/kv/lock?acquire={s1}")), "me").body,
        "true"
    );
    assert_eq!(
        put(&u(&format!("/v1/kv/lock?acquire={s2}")), "them").body,
        "false",
        "a held lock is not taken"
    );
    let l = get(&u("/v1/kv/lock")).json()[0].clone();
    assert_eq!(l["Session"], s1.as_str());
    assert_eq!(l["LockIndex"], 1);
    assert_eq!(
        put(&u(&format!("/v1/kv/lock?release={s2}")), "").body,
        "false",
        "only the holder releases"
    );
    assert_eq!(
        put(&u(&format!("/v1/kv/lock?release={s1}")), "free").body,
        "true"
    );
    assert!(get(&u("/v1/kv/lock")).json()[0].get("Session").is_none());
    assert_eq!(
        put(&u(&format!("/v1/kv/lock?acquire={s2}")), "them").body,
        "true"
    );
    assert_eq!(get(&u("/v1/kv/lock")).json()[0]["LockIndex"], 2);
    // A key list's blocking query wakes on a release too (its index follows
    // every ModifyIndex under the prefix, as Consul's).
    let ki = get(&u("/v1/kv/lo?keys")).index();
    let url = u(&format!("/v1/kv/lo?keys&index={ki}&wait=20s"));
    let t = Instant::now();
    let waiter = std::thread::spawn(move || get(&url));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        put(&u(&format!("/v1/kv/lock?release={s2}")), "them").body,
        "true"
    );
    let woke = waiter.join().unwrap();
    assert!(woke.index() > ki && t.elapsed() < Duration::from_secs(5));
    assert_eq!(woke.json(), serde_json::json!(["lock"]));
    assert_eq!(
        put(&u(&format!("/v1/kv/lock?acquire={s2}")), "them").body,
        "true"
    );
    assert_eq!(
        put(
            &u("/v1/kv/lock?acquire=00000000-0000-4000-8000-000000000000"),
            ""
        )
        .status,
        500,
        "an unknown session"
    );
    let renewed = put(&u(&format!("/v1/session/renew/{s1}")), "");
    assert_eq!(renewed.status, 200);
    assert_eq!(renewed.json()[0]["ID"], s1.as_str());
    assert_eq!(
        put(
            &u("/v1/session/renew/00000000-0000-4000-8000-000000000000"),
            ""
        )
        .status,
        404
    );
    // Destroying a delete-behavior session deletes what it holds.
    assert_eq!(
        put(&u(&format!("/v1/session/destroy/{s2}")), "").body,
        "true"
    );
    assert_eq!(get(&u("/v1/kv/lock")).status, 404);
    assert_eq!(get(&u(&format!("/v1/session/info/{s2}"))).body, "[]");
    assert_eq!(put(&u("/v1/session/create"), r#"{"TTL":"5s"}"#).status, 400);
    assert_eq!(
        put(&u("/v1/session/create"), r#"{"Behavior":"explode"}"#).status,
        400
    );

    // ---- agent: TTL checks ---------------------------------------------
    let reg = r#"{"Name":"api","ID":"api-1","Address":"127.0.0.9","Port":9000,"Tags":["v1","blue"],
                  "Check":{"TTL":"2s"}}"#;
    assert_eq!(put(&u("/v1/agent/service/register"), reg).status, 200);
    let svcs = get(&u("/v1/agent/services")).json();
    assert_eq!(svcs["api-1"]["Service"], "api");
    assert_eq!(svcs["api-1"]["Port"], 9000);
    let h = get(&u("/v1/health/service/api")).json();
    assert_eq!(h[0]["Service"]["ID"], "api-1");
    assert_eq!(h[0]["Node"]["Node"], "n1");
    let status_of = |h: &serde_json::Value| -> Vec<String> {
        h[0]["Checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                format!(
                    "{}={}",
                    c["CheckID"].as_str().unwrap(),
                    c["Status"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(
        status_of(&h),
        ["serfHealth=passing", "service:api-1=critical"],
        "a TTL check starts critical"
    );
    assert_eq!(get(&u("/v1/health/service/api?passing")).body, "[]");
    let hi = get(&u("/v1/health/service/api")).index();
    let url = u(&format!(
        "/v1/health/service/api?index={hi}&wait=20s&passing=0"
    ));
    let waiter = std::thread::spawn(move || get(&url));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        put(&u("/v1/agent/check/pass/service:api-1?note=ok"), "").status,
        200
    );
    let woke = waiter.join().unwrap();
    assert!(woke.index() > hi);
    assert_eq!(status_of(&woke.json())[1], "service:api-1=passing");
    assert_eq!(woke.json()[0]["Checks"][1]["Output"], "ok");
    let passing = get(&u("/v1/health/service/api?passing&tag=v1&tag=blue")).json();
    assert_eq!(passing.as_array().unwrap().len(), 1);
    assert_eq!(passing[0]["Service"]["Address"], "127.0.0.9");
    assert_eq!(
        get(&u("/v1/health/service/api?passing&tag=green")).body,
        "[]"
    );
    let cat = get(&u("/v1/catalog/service/api")).json();
    assert_eq!(cat[0]["ServiceID"], "api-1");
    assert_eq!(cat[0]["ServiceName"], "api");
    assert_eq!(cat[0]["ServicePort"], 9000);
    assert_eq!(cat[0]["ServiceAddress"], "127.0.0.9");
    assert_eq!(cat[0]["ServiceTags"], serde_json::json!(["v1", "blue"]));
    assert_eq!(
        get(&u("/v1/catalog/services")).json()["api"],
        serde_json::json!(["blue", "v1"])
    );
    // No pass within the TTL: critical again.
    assert!(
        wait_for(Duration::from_secs(6), || {
            get(&u("/v1/health/state/critical"))
                .json()
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["CheckID"] == "service:api-1")
        }),
        "the TTL check never lapsed"
    );
    assert_eq!(
        put(
            &u("/v1/agent/check/update/service:api-1"),
            r#"{"Status":"warning","Output":"slow"}"#
        )
        .status,
        200
    );
    assert_eq!(
        status_of(&get(&u("/v1/health/service/api")).json())[1],
        "service:api-1=warning"
    );
    assert_eq!(
        put(
            &u("/v1/agent/check/update/service:api-1"),
            r#"{"Status":"bad"}"#
        )
        .status,
        400
    );
    assert_eq!(put(&u("/v1/agent/check/pass/nope"), "").status, 404);
    // DeregisterCriticalServiceAfter removes a service left critical.
    let reg =
        r#"{"Name":"gone","Port":1,"Checks":[{"TTL":"1s","DeregisterCriticalServiceAfter":"1s"}]}"#;
    assert_eq!(put(&u("/v1/agent/service/register"), reg).status, 200);
    assert!(get(&u("/v1/agent/services")).json().get("gone").is_some());
    assert!(
        wait_for(Duration::from_secs(8), || get(&u("/v1/agent/services"))
            .json()
            .get("gone")
            .is_none()),
        "never deregistered"
    );
    assert_eq!(get(&u("/v1/health/service/gone")).body, "[]");
    assert_eq!(
        put(&u("/v1/agent/service/deregister/api-1"), "").status,
        200
    );
    assert_eq!(
        put(&u("/v1/agent/service/deregister/api-1"), "").status,
        404
    );
    assert_eq!(get(&u("/v1/catalog/service/api")).body, "[]");
    assert_eq!(
        put(
            &u("/v1/agent/service/register"),
            r#"{"Name":"h","Check":{"HTTP":"http://x","Interval":"1s"}}"#
        )
        .status,
        400,
        "only TTL checks"
    );

    // ---- status, errors --------------------------------------------------
    assert_eq!(
        get(&u("/v1/status/leader")).json(),
        serde_json::json!(base.trim_start_matches("http://"))
    );
    assert_eq!(
        get(&u("/v1/status/peers")).json().as_array().unwrap().len(),
        1
    );
    let self_ = get(&u("/v1/agent/self")).json();
    assert_eq!(self_["Config"]["Datacenter"], "dc1");
    assert_eq!(self_["Config"]["NodeName"], "n1");
    assert_eq!(get(&u("/v1/acl/tokens")).status, 404);
    assert_eq!(get(&u("/v1/kv/x?filter=a")).status, 400);
    assert_eq!(curl("POST", &u("/v1/status/leader"), None, &[]).status, 405);
    assert_eq!(get(&u("/v1/health/state/bogus")).status, 400);
    assert_eq!(get(&u("/v1/kv/x?dc=elsewhere")).status, 500);
    assert_eq!(get(&u("/v1/kv/other?dc=dc1")).status, 200);
    let big = vec![b'x'; 512 * 1024 + 1];
    assert_eq!(curl("PUT", &u("/v1/kv/big"), Some(&big), &[]).status, 413);
    let fits = vec![b'x'; 512 * 1024];
    assert_eq!(curl("PUT", &u("/v1/kv/big"), Some(&fits), &[]).body, "true");
    assert_eq!(get(&u("/v1/kv/big?raw")).body.len(), 512 * 1024);

    // ---- tokens ------------------------------------------------------------
    let tokens = d.write(
        "tokens",
        "admin ops 0123456789abcdef0123\nread viewer rrrrrrrrrrrrrrrrrrrr\n",
    );
    std::fs::set_permissions(&tokens, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let (_secured, sbase) = consul_api(&d, &catalog, &["--token-file", tokens.to_str().unwrap()]);
    let su = |p: &str| format!("{sbase}{p}");
    assert_eq!(get(&su("/v1/kv/other")).status, 403);
    assert_eq!(
        curl(
            "GET",
            &su("/v1/kv/other"),
            None,
            &["X-Consul-Token: wrongwrongwrongwrong"]
        )
        .status,
        403
    );
    assert_eq!(
        curl(
            "GET",
            &su("/v1/kv/other"),
            None,
            &["X-Consul-Token: rrrrrrrrrrrrrrrrrrrr"]
        )
        .status,
        200
    );
    assert_eq!(
        curl(
            "PUT",
            &su("/v1/kv/other"),
            Some(b"y"),
            &["X-Consul-Token: rrrrrrrrrrrrrrrrrrrr"]
        )
        .status,
        403,
        "a read token cannot write"
    );
    assert_eq!(
        get(&su("/v1/agent/check/pass/x?token=rrrrrrrrrrrrrrrrrrrr")).status,
        403,
        "a legacy GET write is a write"
    );
    assert_eq!(
        put(&su("/v1/kv/other?token=0123456789abcdef0123"), "y").body,
        "true"
    );
    // Without tokens a non-loopback listen is refused.
    let out = Command::new(bin())
        .args(["consul-api", "--listen", "0.0.0.0:0", "--catalog", &catalog])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--token-file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn agent_config(ip: &str, port: u16) -> String {
    format!(
        r#"{{
  control: {{ socket: "@SOCKET@" }},
  jobs: [
    {{ name: "web", exec: "sleep 300", port: {port}, interfaces: ["static:{ip}"], tags: ["blue"],
       health: {{ exec: "test ! -e @DIR@/sick", interval: "100ms", ttl: 3 }} }},
  ]
}}"#
    )
}

/// What Prometheus's `consul_sd_configs` does (Debian's Prometheus 2.42 is
/// built with Consul SD disabled, so the real one cannot run here): a
/// blocking query on `/v1/health/service/NAME` from the last index.
#[test]
fn agents_instances_are_consul_services_and_a_failed_one_leaves_a_blocking_watch_within_seconds() {
    let d = Dir::new("consul-agents");
    let catalog = format!("local://{}", d.path("catalog").display());
    let node = |host: &str, ip: &str, port: u16| {
        let dir = d.child(host);
        let a = start_with(
            &dir,
            &agent_config(ip, port),
            &[],
            &[
                ("AUTOPILOT_CATALOG", catalog.as_str()),
                ("AUTOPILOT_HOSTNAME", host),
            ],
        );
        a.ready();
        (dir, a)
    };
    let (_da, _a) = node("a", "127.0.0.2", 8080);
    let (db, _b) = node("b", "127.0.0.3", 8081);
    let (_srv, base) = consul_api(&d, &catalog, &[]);
    let passing_addrs = |r: &Reply| -> Vec<String> {
        r.json()
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                format!(
                    "{}:{}",
                    e["Service"]["Address"].as_str().unwrap(),
                    e["Service"]["Port"]
                )
            })
            .collect()
    };
    assert!(
        wait_for(Duration::from_secs(20), || passing_addrs(&get(&format!(
            "{base}/v1/health/service/web?passing"
        ))) == [
            "127.0.0.2:8080",
            "127.0.0.3:8081"
        ]),
        "both agents' instances never passed"
    );
    let h = get(&format!("{base}/v1/health/service/web")).json();
    let nodes: Vec<&str> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Node"]["Node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["a", "b"], "the node is the agent's host");
    assert_eq!(h[0]["Service"]["Tags"], serde_json::json!(["blue"]));
    assert_eq!(
        get(&format!("{base}/v1/catalog/services")).json()["web"],
        serde_json::json!(["blue"])
    );
    // A watcher blocks on the passing instances; b's health check fails.
    let idx = get(&format!("{base}/v1/health/service/web?passing")).index();
    let watch = base.clone();
    let watcher = std::thread::spawn(move || {
        let mut at = idx;
        let deadline = Instant::now() + Duration::from_secs(30);
        // As Prometheus does: follow the index until the answer changes.
        loop {
            let r = get(&format!(
                "{watch}/v1/health/service/web?passing&index={at}&wait=30s"
            ));
            if r.json().as_array().is_some_and(|a| a.len() == 1) || Instant::now() > deadline {
                return (r, Instant::now());
            }
            at = r.index();
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let sick = Instant::now();
    std::fs::write(db.path("sick"), "").unwrap();
    let (r, at) = watcher.join().unwrap();
    assert_eq!(passing_addrs(&r), ["127.0.0.2:8080"], "b never left");
    assert!(r.index() > idx);
    let took = at.duration_since(sick);
    eprintln!("the watch dropped b {took:?} after its check started failing");
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Both are still listed without ?passing, b critical.
    let all = get(&format!("{base}/v1/health/service/web")).json();
    assert_eq!(all.as_array().unwrap().len(), 2);
    assert_eq!(all[1]["Checks"][1]["Status"], "critical");
}

#[test]
fn python_consul_registers_passes_blocks_does_cas_and_session_locks() {
    let d = Dir::new("consul-py");
    let catalog = format!("local://{}", d.path("catalog").display());
    let (_srv, base) = consul_api(&d, &catalog, &[]);
    let port = base.rsplit(':').next().unwrap().to_string();
    let script = r#"
import sys, threading, time, consul
c = consul.Consul(host="127.0.0.1", port=int(sys.argv[1]))
assert c.agent.service.register("pyweb", service_id="pyweb-1", address="127.0.0.5", port=7000,
                                tags=["py"], check=consul.Check.ttl("10s"))
idx, nodes = c.health.service("pyweb")
assert len(nodes) == 1 and nodes[0]["Service"]["ID"] == "pyweb-1", nodes
assert c.health.service("pyweb", passing=True)[1] == [], "a TTL check starts critical"
result = {}
def watch():
    t = time.time()
    result["answer"] = c.health.service("pyweb", index=idx, wait="20s", passing=True)
    result["took"] = time.time() - t
w = threading.Thread(target=watch); w.start()
time.sleep(0.5)
assert w.is_alive(), "the blocking query returned before any change"
assert c.agent.check.ttl_pass("service:pyweb-1", "fine")
w.join(30)
idx2, passing = result["answer"]
assert int(idx2) > int(idx), (idx, idx2)
assert [n["Service"]["ID"] for n in passing] == ["pyweb-1"], passing
assert result["took"] < 5, result["took"]
# kv CAS
assert c.kv.put("py/k", "v1", cas=0)
assert not c.kv.put("py/k", "x", cas=0)
_, e = c.kv.get("py/k")
assert e["Value"] == b"v1", e
assert c.kv.put("py/k", "v2", cas=e["ModifyIndex"])
assert not c.kv.put("py/k", "v3", cas=e["ModifyIndex"])
assert c.kv.get("py/k")[1]["Value"] == b"v2"
assert c.kv.get("py/missing")[1] is None
# a session lock
s = c.session.create(name="locker", ttl=10, lock_delay=0, behavior="release")
s2 = c.session.create(name="other", ttl=10, lock_delay=0)
assert c.kv.put("py/lock", "held", acquire=s)
assert not c.kv.put("py/lock", "mine", acquire=s2)
assert c.kv.get("py/lock")[1]["Session"] == s
assert c.session.renew(s)["ID"] == s
assert c.kv.put("py/lock", "done", release=s)
assert "Session" not in c.kv.get("py/lock")[1]
assert c.kv.put("py/lock", "mine", acquire=s2)
assert c.session.destroy(s2)
assert "Session" not in c.kv.get("py/lock")[1], "destroying releases"
assert c.session.info(s2)[1] is None
assert c.agent.service.deregister("pyweb-1")
assert c.health.service("pyweb")[1] == []
print("ok")
"#;
    let out = Command::new("/usr/bin/python3")
        .args(["-c", script, &port])
        .output()
        .expect("run /usr/bin/python3 (Debian python3-consul)");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "python-consul failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
