//! Prometheus metrics: the user's configured metrics, the agent's built-ins (repair and watchdog families included), and text exposition.
//!
//! Hand-rolled rather than prometheus-client because that crate has no
//! summary type and renames counters to `*_total`, which would break the
//! metric names ContainerPilot users already scrape.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;
use std::sync::Mutex;

use autopilot_config::{MetricConfig, MetricKind};

const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const QUANTILES: [f64; 3] = [0.5, 0.9, 0.99];
/// Observations a summary keeps for its quantiles.
const SUMMARY_WINDOW: usize = 1024;

/// The agent's own metrics.
const BUILT_IN: &[(&str, &str, MetricKind)] = &[
    (
        "autopilot_announce_state",
        "1 for each announce prefix's current state (announced, withdrawn, disabled), 0 for the others.",
        MetricKind::Gauge,
    ),
    (
        "autopilot_announce_changes_total",
        "Announcements and withdrawals the BGP speaker confirmed, by job (not counting the first write at start).",
        MetricKind::Counter,
    ),
    (
        "autopilot_artifact_info",
        "1 for the artifact version each job (or the config bundle, job \"\") runs.",
        MetricKind::Gauge,
    ),
    (
        "autopilot_template_renders",
        "Template renders by template and result (written, unchanged, waiting, failed).",
        MetricKind::Counter,
    ),
    (
        "autopilot_template_command_failures",
        "Failed runs of a template's command (each is retried).",
        MetricKind::Counter,
    ),
    (
        "autopilot_job_restarts",
        "Restarts of each job after an exit.",
        MetricKind::Counter,
    ),
    (
        "autopilot_job_running",
        "1 while the job's process is running.",
        MetricKind::Gauge,
    ),
    (
        "autopilot_job_healthy",
        "1 healthy, 0 unhealthy, -1 unknown.",
        MetricKind::Gauge,
    ),
    (
        "autopilot_health_checks",
        "Health-check results by job and result.",
        MetricKind::Counter,
    ),
    (
        "autopilot_health_check_duration_seconds",
        "How long health checks take.",
        MetricKind::Histogram,
    ),
    (
        "autopilot_events",
        "Events published on the agent's bus.",
        MetricKind::Counter,
    ),
    (
        "autopilot_catalog_degraded",
        "1 while the catalog is unreachable or failing (supervision goes on).",
        MetricKind::Gauge,
    ),
    (
        "autopilot_repair_state",
        "1 for the node state (healthy, failure, probation) of each job with a repair block, 0 for the others.",
        MetricKind::Gauge,
    ),
    (
        "autopilot_repair_actions_total",
        "Repair steps by job, step and outcome (succeeded, failed, interrupted, replaced).",
        MetricKind::Counter,
    ),
    (
        "autopilot_watchdog_status",
        "1 for the reported status (ok, warning, error) of each watchdog, 0 for the others.",
        MetricKind::Gauge,
    ),
    (
        "autopilot_catalog_registered",
        "Entries of this agent the catalog holds now (0 once a lost session let them expire).",
        MetricKind::Gauge,
    ),
    (
        "autopilot_maintenance_intent_invalid_total",
        "Reads of this node's maintenance intent that were not a usable intent (ignored).",
        MetricKind::Counter,
    ),
    (
        "autopilot_maintenance",
        "1 while the agent is in maintenance (its jobs out of the catalog).",
        MetricKind::Gauge,
    ),
    (
        "autopilot_build_info",
        "1, labelled with the agent's version and git commit.",
        MetricKind::Gauge,
    ),
    (
        "autopilot_election_leader",
        "1 while a job of this agent leads the election, else 0.",
        MetricKind::Gauge,
    ),
    (
        "autopilot_election_term",
        "The term of the election's current leader as this agent sees it (0: none known).",
        MetricKind::Gauge,
    ),
    (
        "autopilot_election_transitions_total",
        "New leaders (new terms) of the election this agent has seen.",
        MetricKind::Counter,
    ),
    (
        "autopilot_catalog_request_duration_seconds",
        "How long the agent's catalog requests take, by operation.",
        MetricKind::Histogram,
    ),
    (
        "autopilot_catalog_request_errors_total",
        "Catalog requests of the agent that failed, by operation.",
        MetricKind::Counter,
    ),
    (
        "autopilot_snapshot_last_success_timestamp_seconds",
        "When this agent last recorded a snapshot of the set (unix seconds).",
        MetricKind::Gauge,
    ),
    (
        "autopilot_snapshot_duration_seconds",
        "How long the last successful snapshot of the set took.",
        MetricKind::Gauge,
    ),
    (
        "autopilot_rollout_state",
        "1 for the member state (pending, installing, probation, ok, failed, ...) of each artifact unit this agent runs.",
        MetricKind::Gauge,
    ),
    (
        "autopilot_repair_budget_exhausted",
        "1 while the repair budget of the job's service is exhausted (nodes wait for a slot).",
        MetricKind::Gauge,
    ),
];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MetricError {
    #[error("unknown metric {0:?}: it is not configured in telemetry.metrics")]
    Unknown(String),
    #[error("metric {name:?}: {message}")]
    Invalid { name: String, message: String },
}

#[derive(Debug, Clone)]
enum Value {
    Counter(f64),
    Gauge(f64),
    Histogram {
        counts: [u64; BUCKETS.len()],
        sum: f64,
        count: u64,
    },
    Summary {
        window: VecDeque<f64>,
        sum: f64,
        count: u64,
    },
}

impl Value {
    fn new(kind: MetricKind) -> Value {
        match kind {
            MetricKind::Counter => Value::Counter(0.0),
            MetricKind::Gauge => Value::Gauge(0.0),
            MetricKind::Histogram => Value::Histogram {
                counts: [0; BUCKETS.len()],
                sum: 0.0,
                count: 0,
            },
            MetricKind::Summary => Value::Summary {
                window: VecDeque::new(),
                sum: 0.0,
                count: 0,
            },
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Value::Counter(_) => "counter",
            Value::Gauge(_) => "gauge",
            Value::Histogram { .. } => "histogram",
            Value::Summary { .. } => "summary",
        }
    }
}

#[derive(Debug)]
struct Family {
    help: String,
    kind: MetricKind,
    series: BTreeMap<Vec<(String, String)>, Value>,
}

/// All metrics the agent exposes. Label sets are kept sorted so output is stable.
#[derive(Debug, Default)]
pub struct Metrics {
    families: Mutex<BTreeMap<String, Family>>,
}

impl Metrics {
    pub fn new(user: &[MetricConfig]) -> Metrics {
        let m = Metrics::default();
        for (name, help, kind) in BUILT_IN {
            m.declare(name, help, *kind);
        }
        m.set_user(user);
        m
    }

    fn declare(&self, name: &str, help: &str, kind: MetricKind) {
        self.lock().insert(
            name.to_string(),
            Family {
                help: help.to_string(),
                kind,
                series: BTreeMap::new(),
            },
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Family>> {
        self.families.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the user-configured metrics (on reload), keeping values of
    /// metrics that are still configured with the same type.
    pub fn set_user(&self, user: &[MetricConfig]) {
        let mut f = self.lock();
        f.retain(|name, _| name.starts_with("autopilot_"));
        for m in user {
            f.entry(m.full_name.clone()).or_insert_with(|| {
                let mut series = BTreeMap::new();
                series.insert(Vec::new(), Value::new(m.kind));
                Family {
                    help: m.help.clone(),
                    kind: m.kind,
                    series,
                }
            });
        }
    }

    /// Whether `put` would accept the value, without applying it.
    pub fn check(&self, name: &str, v: f64) -> Result<(), MetricError> {
        if name.starts_with("autopilot_") || !self.lock().contains_key(name) {
            return Err(MetricError::Unknown(name.to_string()));
        }
        if !v.is_finite() {
            return Err(MetricError::Invalid {
                name: name.to_string(),
                message: format!("{v} is not a finite number"),
            });
        }
        let counter = self.lock().get(name).map(|f| f.kind) == Some(MetricKind::Counter);
        if counter && v < 0.0 {
            return Err(MetricError::Invalid {
                name: name.to_string(),
                message: "a counter cannot be decreased".into(),
            });
        }
        Ok(())
    }

    /// Applies a value from `-putmetric`/`POST /v3/metric`: counters add,
    /// gauges set, histograms and summaries observe.
    pub fn put(&self, name: &str, v: f64) -> Result<(), MetricError> {
        self.check(name, v)?;
        let mut f = self.lock();
        let fam = f
            .get_mut(name)
            .ok_or_else(|| MetricError::Unknown(name.to_string()))?;
        let kind = fam.kind;
        observe(
            fam.series
                .entry(Vec::new())
                .or_insert_with(|| Value::new(kind)),
            v,
        );
        Ok(())
    }

    /// Adds to / sets / observes a built-in series.
    pub fn record(&self, name: &str, labels: &[(&str, &str)], v: f64) {
        let mut f = self.lock();
        let Some(fam) = f.get_mut(name) else { return };
        let mut key: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        key.sort();
        let kind = fam.kind;
        observe(fam.series.entry(key).or_insert_with(|| Value::new(kind)), v);
    }

    /// Sets an info gauge to 1 for `labels`, dropping the series of the
    /// same `key` label with other values (a job's previous version).
    pub fn info(&self, name: &str, key: (&str, &str), labels: &[(&str, &str)]) {
        let mut all: Vec<(String, String)> = std::iter::once(key)
            .chain(labels.iter().copied())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        all.sort();
        let mut f = self.lock();
        let Some(fam) = f.get_mut(name) else { return };
        if fam.series.contains_key(&all) {
            return;
        }
        fam.series
            .retain(|l, _| !l.iter().any(|(k, v)| k == key.0 && v == key.1));
        fam.series.insert(all, Value::Gauge(1.0));
    }

    /// The Prometheus text exposition format (version 0.0.4), with the
    /// process metrics read from `/proc/self` now.
    pub fn render(&self) -> String {
        let mut out = self.render_families();
        out.push_str(&crate::procstat::render());
        out
    }

    fn render_families(&self) -> String {
        let f = self.lock();
        let mut out = String::new();
        for (name, fam) in f.iter() {
            if fam.series.is_empty() {
                continue;
            }
            let kind = fam.series.values().next().map_or("untyped", Value::kind);
            let _ = writeln!(out, "# HELP {name} {}", escape_help(&fam.help));
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, v) in &fam.series {
                let l = |extra: Option<(&str, String)>| {
                    let mut parts: Vec<String> = labels
                        .iter()
                        .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                        .collect();
                    if let Some((k, v)) = extra {
                        parts.push(format!("{k}=\"{v}\""));
                    }
                    if parts.is_empty() {
                        String::new()
                    } else {
                        format!("{{{}}}", parts.join(","))
                    }
                };
                match v {
                    Value::Counter(x) | Value::Gauge(x) => {
                        let _ = writeln!(out, "{name}{} {}", l(None), num(*x));
                    }
                    Value::Histogram { counts, sum, count } => {
                        let mut cum = 0;
                        for (b, c) in BUCKETS.iter().zip(counts) {
                            cum += c;
                            let _ =
                                writeln!(out, "{name}_bucket{} {cum}", l(Some(("le", num(*b)))));
                        }
                        let _ = writeln!(
                            out,
                            "{name}_bucket{} {count}",
                            l(Some(("le", "+Inf".into())))
                        );
                        let _ = writeln!(out, "{name}_sum{} {}", l(None), num(*sum));
                        let _ = writeln!(out, "{name}_count{} {count}", l(None));
                    }
                    Value::Summary { window, sum, count } => {
                        let mut sorted: Vec<f64> = window.iter().copied().collect();
                        sorted.sort_by(f64::total_cmp);
                        for q in QUANTILES {
                            let v = if sorted.is_empty() {
                                f64::NAN
                            } else {
                                sorted[((sorted.len() - 1) as f64 * q).round() as usize]
                            };
                            let _ =
                                writeln!(out, "{name}{} {}", l(Some(("quantile", num(q)))), num(v));
                        }
                        let _ = writeln!(out, "{name}_sum{} {}", l(None), num(*sum));
                        let _ = writeln!(out, "{name}_count{} {count}", l(None));
                    }
                }
            }
        }
        out
    }
}

fn observe(v: &mut Value, x: f64) {
    match v {
        Value::Counter(c) => *c += x,
        Value::Gauge(g) => *g = x,
        Value::Histogram { counts, sum, count } => {
            for (b, c) in BUCKETS.iter().zip(counts.iter_mut()) {
                if x <= *b {
                    *c += 1;
                    break;
                }
            }
            *sum += x;
            *count += 1;
        }
        Value::Summary { window, sum, count } => {
            if window.len() == SUMMARY_WINDOW {
                window.pop_front();
            }
            window.push_back(x);
            *sum += x;
            *count += 1;
        }
    }
}

fn num(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        if x > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{x}")
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> Vec<MetricConfig> {
        [
            ("c", MetricKind::Counter),
            ("g", MetricKind::Gauge),
            ("h", MetricKind::Histogram),
            ("s", MetricKind::Summary),
        ]
        .iter()
        .map(|(n, k)| MetricConfig {
            full_name: n.to_string(),
            help: format!("help {n}"),
            kind: *k,
        })
        .collect()
    }

    #[test]
    fn an_info_gauge_keeps_one_series_per_job() {
        let m = Metrics::new(&[]);
        let name = "autopilot_artifact_info";
        m.info(
            name,
            ("job", "api"),
            &[("artifact", "api"), ("version", "1.0")],
        );
        m.info(
            name,
            ("job", "web"),
            &[("artifact", "web"), ("version", "7")],
        );
        m.info(
            name,
            ("job", "api"),
            &[("artifact", "api"), ("version", "2.0")],
        );
        let out = m.render();
        assert!(
            out.contains(
                "autopilot_artifact_info{artifact=\"api\",job=\"api\",version=\"2.0\"} 1\n"
            ) && out.contains("version=\"7\"")
                && !out.contains("version=\"1.0\""),
            "{out}"
        );
    }

    #[test]
    fn put_semantics_and_rendering() {
        let m = Metrics::new(&user());
        m.put("c", 2.0).unwrap();
        m.put("c", 3.0).unwrap();
        m.put("g", 42.5).unwrap();
        m.put("g", 7.0).unwrap();
        m.put("h", 0.3).unwrap();
        m.put("s", 1.0).unwrap();
        m.put("s", 3.0).unwrap();
        assert_eq!(m.put("nope", 1.0), Err(MetricError::Unknown("nope".into())));
        assert!(m.put("c", -1.0).is_err());
        assert!(m.put("autopilot_events", 1.0).is_err());
        m.record(
            "autopilot_events",
            &[("source", "a\"b"), ("code", "x")],
            1.0,
        );
        let out = m.render();
        assert!(out.contains("# TYPE c counter\nc 5\n"), "{out}");
        assert!(out.contains("g 7\n"), "{out}");
        assert!(out.contains("h_bucket{le=\"0.5\"} 1\n"), "{out}");
        assert!(out.contains("h_bucket{le=\"0.25\"} 0\n"), "{out}");
        assert!(out.contains("s{quantile=\"0.99\"} 3\n"), "{out}");
        assert!(out.contains("s_count 2\n"), "{out}");
        assert!(
            out.contains("autopilot_events{code=\"x\",source=\"a\\\"b\"} 1\n"),
            "{out}"
        );
    }
}
