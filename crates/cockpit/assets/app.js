// autopilot cockpit: hash-routed screens over /api/v1, live via SSE. No framework, no build step.
"use strict";
(() => {
  const API = "/api/v1";
  const TOKEN_KEY = "autopilot.cockpit.token";
  const $ = (id) => document.getElementById(id);
  const view = $("view");
  const state = { role: "anonymous", name: "", revision: null, renderSeq: 0, timer: null };

  // ---------- small helpers ----------
  const dash = "—";
  const show = (v) => (v === null || v === undefined || v === "" ? dash : String(v));
  const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : 0);
  const arr = (v) => (Array.isArray(v) ? v : []);
  const enc = encodeURIComponent;

  /** h("tag.class", {attrs}, ...children): builds DOM nodes; text is never parsed as HTML. */
  function h(sel, attrs, ...kids) {
    const [tag, ...cls] = sel.split(".");
    const el = document.createElement(tag || "div");
    if (cls.length) el.className = cls.join(" ");
    if (attrs && (typeof attrs !== "object" || attrs instanceof Node || Array.isArray(attrs))) {
      kids.unshift(attrs);
      attrs = null;
    }
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "dataset") Object.assign(el.dataset, v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    add(el, kids);
    return el;
  }
  function add(el, kids) {
    for (const k of kids) {
      if (k === null || k === undefined || k === false) continue;
      if (Array.isArray(k)) add(el, k);
      else el.append(k instanceof Node ? k : document.createTextNode(String(k)));
    }
  }
  const link = (href, text) => h("a", { href }, show(text));

  function ago(v) {
    let ms = null;
    if (typeof v === "number") ms = v > 1e12 ? v : v * 1000;
    else if (typeof v === "string" && v) {
      const t = Date.parse(v);
      if (!Number.isNaN(t)) ms = t;
    }
    if (ms === null) return show(v);
    const s = Math.round((Date.now() - ms) / 1000);
    if (s < 0) return "now";
    if (s < 90) return s + "s ago";
    if (s < 5400) return Math.round(s / 60) + "m ago";
    if (s < 172800) return Math.round(s / 3600) + "h ago";
    return Math.round(s / 86400) + "d ago";
  }
  const when = (v) => h("time", { title: show(v), datetime: typeof v === "string" ? v : null }, ago(v));
  function bytes(n) {
    if (typeof n !== "number") return show(n);
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + u[i];
  }

  /** A status badge: colour plus its word (never colour alone). */
  function badge(status) {
    const s = show(status).toLowerCase();
    const kind = ["passing", "healthy", "ok", "applied", "accepted", "completed", "done", "passed", "leader", "succeeded"].includes(s)
      ? "ok"
      : ["warning", "waiting", "paused", "running", "repairing", "maintenance"].includes(s)
        ? "warning"
        : ["critical", "failed", "exhausted", "aborted", "refused", "gone", "rolledback", "unhealthy"].some((w) => s.startsWith(w))
          ? "critical"
          : "other";
    const cls = { ok: "st-passing", warning: "st-warning", critical: "st-critical", other: "st-other" }[kind];
    return h("span.st." + cls, { "data-status": s }, show(status));
  }
  function bar(done, total, label) {
    const d = num(done), t = num(total);
    const pct = t > 0 ? Math.min(100, Math.round((d / t) * 100)) : 0;
    const cls = t > 0 && d < t ? (d === 0 ? "bar.bad" : "bar.warn") : "bar";
    return h("span", null,
      h("span." + cls, { role: "progressbar", "aria-valuemin": 0, "aria-valuemax": t, "aria-valuenow": d, "aria-label": label || "progress" },
        h("span", { style: null, dataset: { pct: String(pct) } })),
      `${d}/${t}`);
  }
  function tags(list) {
    const t = arr(list);
    return t.length ? h("span.tags", null, t.map((x) => h("span.tag", null, String(x)))) : dash;
  }
  /** A table: cols = [[label, fn(row) → node|text, opts?]]; rows get data-status from rowStatus. */
  function table(cols, rows, opts = {}) {
    const list = arr(rows);
    if (!list.length) return h("p.muted", null, opts.empty || "None.");
    return h("table.stack", { "aria-label": opts.label || null },
      h("thead", null, h("tr", null, cols.map((c) => h("th", { scope: "col" }, c[0])))),
      h("tbody", null, list.map((r) => {
        const st = opts.status ? opts.status(r) : null;
        return h("tr", { "data-status": st || null, "data-id": opts.id ? opts.id(r) : null },
          cols.map((c) => {
            let v;
            try { v = c[1](r); } catch (_) { v = dash; }
            return h("td", { "data-label": c[0], class: c[2] || null }, v === undefined || v === null || v === "" ? dash : v);
          }));
      })));
  }
  function dl(pairs) {
    return h("dl.kv", null, pairs.map(([k, v]) => [h("dt", null, k), h("dd", null, v === null || v === undefined || v === "" ? dash : v)]));
  }
  /** Widths can't be set inline under CSP style-src 'self' from markup, but CSSOM is fine. */
  function paintBars(root) {
    for (const s of root.querySelectorAll("[data-pct]")) s.style.width = s.dataset.pct + "%";
  }

  // ---------- API ----------
  const token = () => sessionStorage.getItem(TOKEN_KEY) || "";
  function headers(extra) {
    const hd = Object.assign({ Accept: "application/json" }, extra || {});
    const t = token();
    if (t) hd.Authorization = "Bearer " + t;
    return hd;
  }
  class ApiError extends Error {
    constructor(status, msg) { super(msg); this.status = status; }
  }
  async function api(path, opts = {}) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), opts.timeout || 10000);
    try {
      const res = await fetch(API + path, {
        method: opts.method || "GET",
        headers: headers(opts.body !== undefined ? { "Content-Type": "application/json" } : null),
        body: opts.body !== undefined ? JSON.stringify(opts.body) : undefined,
        signal: ctl.signal,
        cache: "no-store",
      });
      const text = await res.text();
      let data = null;
      try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
      if (!res.ok) {
        const msg = (data && data.error) || text || res.statusText;
        throw new ApiError(res.status, `${res.status}: ${msg}`);
      }
      return data;
    } catch (e) {
      if (e.name === "AbortError") throw new ApiError(0, `timed out: ${path}`);
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }
  /** GET that yields null on 404 (so detail screens can say "not found"). */
  async function maybe(path) {
    try { return await api(path); } catch (e) { if (e.status === 404) return null; throw e; }
  }
  /** GET that yields {error} instead of throwing: a side panel must not break the screen. */
  async function soft(path) {
    try { return await api(path); } catch (e) { return { __error: e.message }; }
  }

  function notice(msg, ok) {
    const n = $("notice");
    if (!msg) { n.hidden = true; return; }
    n.textContent = msg;
    n.className = ok ? "notice ok" : "notice";
    n.hidden = false;
  }

  // ---------- auth ----------
  const isAdmin = () => state.role === "admin";
  async function whoami() {
    let w;
    try { w = await api("/whoami"); } catch (e) { w = { role: e.status === 401 ? "unauthorized" : "unknown" }; }
    state.role = (w && w.role) || "anonymous";
    state.name = (w && w.name) || "";
    $("whoami").textContent = state.name ? `${state.name} (${state.role})` : state.role;
    $("whoami").dataset.role = state.role;
  }

  // ---------- confirmation dialog ----------
  function confirmDialog(text) {
    const d = $("confirm");
    $("confirm-text").textContent = text;
    return new Promise((resolve) => {
      const done = () => { d.removeEventListener("close", done); resolve(d.returnValue === "ok"); };
      d.returnValue = "";
      d.addEventListener("close", done);
      if (typeof d.showModal === "function") {
        d.showModal();
        $("confirm-ok").focus();
      } else {
        d.removeEventListener("close", done);
        resolve(window.confirm(text));
      }
    });
  }

  /** An action form: fields = [{name, label, type?, placeholder?, value?}], body(form) → JSON. */
  function actionForm(opts) {
    const disabled = !isAdmin();
    const form = h("form.act", { "data-action": opts.id, "aria-label": opts.title });
    for (const f of opts.fields || []) {
      const id = `f-${opts.id}-${f.name}`;
      form.append(h("label", { for: id }, f.label,
        f.options
          ? h("select", { id, name: f.name, disabled }, f.options.map((o) => h("option", { value: o[0] }, o[1])))
          : h("input", { id, name: f.name, type: f.type || "text", placeholder: f.placeholder || null, value: f.value || null, required: f.required || null, disabled })));
    }
    for (const b of opts.buttons) {
      form.append(h("button" + (b.danger ? ".danger" : ""), {
        type: "submit", name: "op", value: b.value, disabled, "data-op": b.value,
        title: disabled ? "needs an admin token" : null,
      }, b.label));
    }
    if (disabled) form.append(h("span.muted", null, state.role === "read" ? "read-only token: actions disabled" : "enter an admin token to act"));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const op = (ev.submitter && ev.submitter.value) || opts.buttons[0].value;
      const data = Object.fromEntries(new FormData(form).entries());
      const b = opts.buttons.find((x) => x.value === op) || opts.buttons[0];
      const ok = await confirmDialog(typeof b.confirm === "function" ? b.confirm(data) : b.confirm);
      if (!ok) return;
      try {
        const res = await api(b.path(data), { method: "POST", body: b.body ? b.body(data) : {} });
        notice(`${b.label}: accepted${res && res.audit ? " (audit " + res.audit + ")" : ""}`, true);
        schedule(0);
      } catch (e) {
        notice(`${b.label}: ${e.message}`);
      }
    });
    return form;
  }

  // ---------- screens ----------
  const svcStatus = (s) => (num(s.critical) > 0 ? "critical" : num(s.warning) > 0 ? "warning" : num(s.total) > 0 ? "passing" : "other");
  const instanceCols = (withService) => [
    ["Instance", (i) => h("code", null, show(i.id))],
    withService ? ["Service", (i) => link("#/services/" + enc(i.name || ""), i.name)] : null,
    ["Address", (i) => (i.address || i.port ? `${show(i.address)}:${show(i.port)}` : dash)],
    ["Status", (i) => badge(i.status)],
    ["Tags", (i) => tags(i.tags)],
    ["Heartbeat", (i) => when(i.lastHeartbeat)],
  ].filter(Boolean);
  const instanceOpts = (extra) => Object.assign({ status: (i) => show(i.status).toLowerCase(), id: (i) => i.id }, extra || {});
  function tagValue(i, key) {
    const t = arr(i.tags).find((x) => String(x).startsWith(key + "="));
    return t ? String(t).slice(key.length + 1) : null;
  }
  const rolloutState = (r) => show(r.state);

  async function fleetScreen() {
    const o = (await api("/overview")) || {};
    const services = arr(o.services);
    const failing = arr(o.failing);
    const nodes = arr(o.nodes);
    const critical = services.reduce((a, s) => a + num(s.critical), 0);
    return [
      h("h1", null, "Fleet"),
      h("p.muted", null, `revision ${show(o.revision)} · generated `, when(o.generated_ms)),
      h("div.cards", null,
        h("div.card", null, h("b", null, services.length), "services"),
        h("div.card", { "data-status": critical ? "critical" : "passing" }, h("b", null, failing.length), "failing instances"),
        h("div.card", null, h("b", null, nodes.length), "nodes"),
        h("div.card", null, h("b", null, arr(o.elections).length), "elections")),
      h("h2", null, "Services"),
      table([
        ["Service", (s) => link("#/services/" + enc(s.name), s.name)],
        ["Passing", (s) => bar(s.passing, s.total, `${s.name} passing`)],
        ["Status", (s) => badge(svcStatus(s) === "other" ? "empty" : svcStatus(s))],
        ["Warning", (s) => show(s.warning), "num"],
        ["Critical", (s) => show(s.critical), "num"],
        ["Leader", (s) => show(s.leader)],
      ], services, { label: "services", status: svcStatus, id: (s) => s.name, empty: "No services registered." }),
      h("h2", null, "Failing instances"),
      table(instanceCols(true), failing, instanceOpts({ label: "failing instances", empty: "Every instance is passing." })),
      h("h2", null, "Elections"),
      table([
        ["Election", (e) => link("#/elections/" + enc(e.name), e.name)],
        ["Leader", (e) => (e.leader ? h("code", null, show(e.leader.id)) : badge("no leader"))],
        ["Term", (e) => show(e.leader && e.leader.term), "num"],
        ["Healthy", (e) => bar(e.healthy, e.members, `${e.name} healthy`)],
        ["Paused", (e) => (e.paused ? badge("paused") : "no")],
      ], o.elections, { label: "elections", status: (e) => (!e.leader ? "critical" : e.paused ? "warning" : null), id: (e) => e.name, empty: "No elections." }),
      h("h2", null, "Nodes"),
      table(nodeCols, nodes, { label: "nodes", status: nodeStatus, id: (n) => n.node, empty: "No agent has registered a node entry." }),
      h("h2", null, "Repairs"),
      table(repairCols, o.repairs, { label: "repairs", status: (r) => (r.exhausted ? "critical" : num(r.in_repair) > 0 ? "warning" : null), id: (r) => r.service, empty: "No repair policies in use." }),
      h("h2", null, "Rollouts"),
      table(rolloutCols, o.rollouts, { label: "rollouts", status: (r) => stateStatus(r.state), id: (r) => r.artifact, empty: "No rollouts." }),
    ];
  }
  const nodeStatus = (n) => (n.maintenance ? "warning" : show(n.status).toLowerCase());
  const nodeCols = [
    ["Node", (n) => link("#/nodes/" + enc(n.node), n.node)],
    ["Status", (n) => badge(n.status)],
    ["Maintenance", (n) => (n.maintenance ? badge("maintenance") : "off")],
    ["Jobs", (n) => tags(n.jobs)],
    ["Version", (n) => show(n.version)],
    ["Started", (n) => when(n.started)],
    ["Heartbeat", (n) => when(n.last_heartbeat)],
  ];
  const repairCols = [
    ["Service", (r) => link("#/repairs/" + enc(r.service), r.service)],
    ["In repair", (r) => show(r.in_repair), "num"],
    ["Budget", (r) => show(r.budget), "num"],
    ["Exhausted", (r) => (r.exhausted ? badge("exhausted") : "no")],
  ];
  const stateStatus = (s) => {
    const v = show(s).toLowerCase();
    return ["failed", "aborted"].includes(v) ? "critical" : ["paused", "running"].includes(v) ? "warning" : null;
  };
  const rolloutCols = [
    ["Artifact", (r) => link("#/rollouts/" + enc(r.artifact), r.artifact)],
    ["Id", (r) => show(r.id), "num"],
    ["State", (r) => badge(rolloutState(r))],
    ["From → to", (r) => `${show(r.from)} → ${show(r.to)}`],
    ["Progress", (r) => (r.total === null || r.total === undefined ? dash : bar(r.done, r.total, `${r.artifact} progress`))],
  ];

  async function serviceScreen(name) {
    const d = await maybe("/services/" + enc(name));
    if (!d) return notFound("service", name);
    const inst = arr(d.instances).slice().sort((a, b) => rank(a.status) - rank(b.status) || show(a.id).localeCompare(show(b.id)));
    const elections = arr(d.elections);
    const views = await Promise.all(elections.map((e) => soft("/elections/" + enc(e))));
    const roles = {};
    for (const v of views) for (const m of arr(v && v.members)) roles[m.id] = m;
    const passing = inst.filter((i) => i.status === "passing").length;
    const out = [
      h("h1", null, "Service ", h("code", null, name)),
      h("p", null, bar(passing, inst.length, "passing"), " passing"),
      h("h2", null, "Instances"),
      table([
        ...instanceCols(false),
        ["Role", (i) => show(roles[i.id] && roles[i.id].role)],
        ["Lag", (i) => show(roles[i.id] && roles[i.id].lag), "num"],
      ], inst, instanceOpts({ label: "instances", empty: "No instances registered." })),
    ];
    if (elections.length) {
      out.push(h("h2", null, "Elections"));
      views.forEach((v, k) => {
        const l = v && v.leader;
        out.push(dl([
          ["election", link("#/elections/" + enc(elections[k]), elections[k])],
          ["leader", l ? h("code", null, show(l.id)) : v && v.__error ? v.__error : "none"],
          ["term", show(l && l.term)],
          ["paused", v && v.paused ? badge("paused") : "no"],
        ]));
      });
    }
    out.push(h("h2", null, "Repairs"));
    const rep = d.repair && d.repair.services ? arr(d.repair.services)[0] : d.repair;
    out.push(rep ? repairView(rep) : h("p.muted", null, "No repair policy for this service."));
    return out;
  }
  const rank = (s) => ({ critical: 0, warning: 1, passing: 3 })[s] ?? 2;

  function repairView(r) {
    const hist = arr(r.history);
    return [
      dl([
        ["in repair", show(r.inRepair)],
        ["slots held", show(r.slotsHeld)],
        ["waiting for budget", show(r.waitingForBudget)],
        ["budget exhausted", r.budgetExhausted ? h("span", null, badge("exhausted"), " since ", when(r.budgetExhausted.since), " by ", show(r.budgetExhausted.by)) : "no"],
      ]),
      table([
        ["Node", (n) => h("code", null, show(n.id))],
        ["State", (n) => badge(n.state)],
        ["Step", (n) => show(n.step)],
        ["Attempt", (n) => show(n.attempt), "num"],
        ["Reason", (n) => show(n.reason)],
        ["Since", (n) => when(n.since)],
        ["Flags", (n) => tags([n.holdsSlot && "slot", n.waitingForBudget && "waiting", n.leader && "leader", n.exhausted && "exhausted", n.live === false && "gone"].filter(Boolean))],
      ], r.nodes, { label: "repair nodes", status: (n) => (n.exhausted ? "critical" : n.state && n.state !== "idle" ? "warning" : null), empty: "No node records." }),
      h("h2", null, `History (${show(r.historyTotal ?? hist.length)})`),
      table([
        ["Node", (x) => show(x.node)],
        ["Job", (x) => show(x.job)],
        ["Step", (x) => show(x.step)],
        ["Attempt", (x) => show(x.attempt), "num"],
        ["Reason", (x) => show(x.reason)],
        ["Started", (x) => when(x.started)],
        ["Ended", (x) => when(x.ended)],
        ["Outcome", (x) => badge(x.outcome)],
      ], hist, { label: "repair history", status: (x) => (x.outcome && x.outcome !== "succeeded" ? "critical" : null), empty: "No repairs yet." }),
      arr(r.notes).length ? h("ul", null, arr(r.notes).map((n) => h("li", null, String(n)))) : null,
    ];
  }

  async function nodeScreen(node) {
    const raw = await maybe("/nodes/" + enc(node));
    if (!raw) return notFound("node", node);
    const d = raw.node && typeof raw.node === "object" ? Object.assign({}, raw, raw.node) : raw;
    // `intent` is the maintenance intent (or null); `maintenance` is what the
    // agent applied, from its `_nodes` entry.
    const intent = d.intent && typeof d.intent === "object" ? d.intent : null;
    const inMaint = typeof d.maintenance === "boolean" ? d.maintenance : !!(intent && intent.on && intent.applied_ms);
    const health = arr(d.health).slice().reverse();
    return [
      h("h1", null, "Node ", h("code", null, node)),
      dl([
        ["status", badge(d.status)],
        ["maintenance", h("span", { id: "maintenance-state", "data-on": String(inMaint) }, inMaint ? badge("maintenance") : "off")],
        ["jobs", tags(d.jobs)],
        ["version", show(d.version)],
        ["started", when(d.started)],
        ["heartbeat", when(d.last_heartbeat)],
        ["intent", intent ? `${intent.on ? "on" : "off"} by ${show(intent.by)} ${ago(intent.at_ms)} · ${intent.outcome ? "outcome: " + intent.outcome : "not applied yet"}` : "none"],
        ["address", show(d.address)],
        ["notes", arr(d.notes).length ? arr(d.notes).join("; ") : null],
      ]),
      actionForm({
        id: "maintenance",
        title: "maintenance",
        buttons: [inMaint
          ? { value: "off", label: "Maintenance off", confirm: `Take ${node} out of maintenance? Its jobs register again.`, path: () => `/nodes/${enc(node)}/maintenance`, body: () => ({ on: false }) }
          : { value: "on", label: "Maintenance on", danger: true, confirm: `Put ${node} in maintenance? Its instances leave the catalog.`, path: () => `/nodes/${enc(node)}/maintenance`, body: () => ({ on: true }) }],
      }),
      h("h2", null, "Instances"),
      table(instanceCols(true), d.instances, instanceOpts({ label: "node instances", empty: "No instances." })),
      h("h2", null, "Health history"),
      table([
        ["Job", (x) => show(x.job)],
        ["Status", (x) => badge(x.status)],
        ["At", (x) => when(x.at_ms)],
      ], health, { label: "health history", status: (x) => show(x.status).toLowerCase(), empty: "No health transitions recorded." }),
      h("h2", null, "Repairs"),
      table([
        ["Service", (r) => link("#/repairs/" + enc(r.service || ""), r.service)],
        ["State", (r) => badge(r.state)],
        ["Step", (r) => show(r.step)],
        ["Attempt", (r) => show(r.attempt), "num"],
        ["Reason", (r) => show(r.reason)],
        ["Since", (r) => when(r.since)],
      ], d.repairs, { label: "node repairs", empty: "No repair records." }),
      h("h2", null, "Watchdogs"),
      table([
        ["Watchdog", (w) => show(w.watchdog || w.name || w.id)],
        ["Status", (w) => badge(w.health || w.status)],
        ["Detail", (w) => show(w.message || w.detail || w.reason)],
      ], d.watchdogs, { label: "watchdogs", status: (w) => show(w.health || w.status).toLowerCase(), empty: "No watchdogs." }),
    ];
  }

  async function electionScreen(name) {
    const v = await maybe("/elections/" + enc(name));
    if (!v) return notFound("election", name);
    const members = arr(v.members);
    const l = v.leader;
    const cand = members.filter((m) => !l || m.id !== l.id).map((m) => [m.id, m.id]);
    return [
      h("h1", null, "Election ", h("code", null, name)),
      dl([
        ["leader", l ? h("code", null, show(l.id)) : badge("no leader")],
        ["address", l ? `${show(l.address)}:${show(l.port)}` : dash],
        ["term", show(l && l.term)],
        ["paused", v.paused ? badge("paused") : "no"],
        ["switchover", v.switchover ? JSON.stringify(v.switchover) : "none"],
        ["failover", v.failover ? JSON.stringify(v.failover) : "none"],
      ]),
      h("h2", null, "Members"),
      table([
        ["Member", (m) => h("code", null, show(m.id))],
        ["Address", (m) => `${show(m.address)}:${show(m.port)}`],
        ["Role", (m) => (m.role === "leader" ? badge("leader") : show(m.role))],
        ["Health", (m) => badge(m.health)],
        ["Position", (m) => show(m.position), "num"],
        ["Lag", (m) => show(m.lag), "num"],
        ["Priority", (m) => show(m.priority), "num"],
        ["Heartbeat", (m) => when(m.lastHeartbeat)],
        ["Suspect", (m) => (m.suspect ? badge("suspect") : "no")],
      ], members, { label: "members", status: (m) => show(m.health).toLowerCase(), id: (m) => m.id, empty: "No members." }),
      h("h2", null, "Actions"),
      actionForm({
        id: "pause",
        title: "pause or resume",
        buttons: [v.paused
          ? { value: "resume", label: "Resume failover", confirm: `Resume automatic failover of ${name}?`, path: () => `/elections/${enc(name)}/resume` }
          : { value: "pause", label: "Pause failover", danger: true, confirm: `Pause automatic failover of ${name}?`, path: () => `/elections/${enc(name)}/pause` }],
      }),
      actionForm({
        id: "switchover",
        title: "switchover",
        fields: [{ name: "to", label: "to (optional)", options: [["", "best candidate"], ...cand] }],
        buttons: [{
          value: "switchover", label: "Switchover", danger: true,
          confirm: (d) => `Hand ${name}'s leadership to ${d.to || "the best candidate"}?`,
          path: () => `/elections/${enc(name)}/switchover`,
          body: (d) => (d.to ? { to: d.to } : {}),
        }],
      }),
    ];
  }

  async function rolloutsScreen() {
    const list = await api("/rollouts");
    const rows = arr(list).map(rolloutRow);
    return [
      h("h1", null, "Rollouts"),
      table(rolloutCols, rows, { label: "rollouts", status: (r) => stateStatus(r.state), id: (r) => r.artifact, empty: "No rollouts." }),
      h("h2", null, "Start a rollout"),
      startForm(""),
    ];
  }
  /** Accepts the overview row shape or a `deploy status` document. */
  function rolloutRow(x) {
    if (x && x.rollout) {
      const r = x.rollout;
      const units = arr(x.units);
      return {
        artifact: r.artifact, id: r.id, state: r.state,
        from: r.from && r.from.version, to: r.target && r.target.version,
        done: units.reduce((a, u) => a + num(u.onTarget), 0), total: units.reduce((a, u) => a + num(u.instances), 0),
      };
    }
    if (x && x.target) {
      return { artifact: x.artifact, id: x.id, state: x.state, from: x.from && x.from.version, to: x.target.version, done: null, total: null };
    }
    return x || {};
  }
  function startForm(artifact) {
    return actionForm({
      id: "start",
      title: "start a rollout",
      fields: [
        { name: "artifact", label: "artifact", value: artifact, required: true },
        { name: "version", label: "version", placeholder: "v2", required: true },
        { name: "units", label: "units (optional)", placeholder: "1,25%,100%" },
        { name: "probation", label: "probation (optional)", placeholder: "30s" },
      ],
      buttons: [{
        value: "start", label: "Start rollout", danger: true,
        confirm: (d) => `Roll ${d.artifact} to ${d.version}?`,
        path: () => "/rollouts",
        body: (d) => {
          const b = { artifact: d.artifact, version: d.version };
          if (d.units) b.units = d.units;
          if (d.probation) b.probation = d.probation;
          return b;
        },
      }],
    });
  }

  async function rolloutScreen(artifact) {
    const s = await maybe("/rollouts/" + enc(artifact));
    if (!s) return notFound("rollout of", artifact);
    const hist = await soft("/rollouts/" + enc(artifact) + "/history");
    const r = s.rollout || {};
    const units = arr(s.units);
    const done = units.reduce((a, u) => a + num(u.onTarget), 0);
    const total = units.reduce((a, u) => a + num(u.instances), 0);
    const acts = [["pause", "Pause"], ["resume", "Resume"], ["abort", "Abort"], ["rollback", "Roll back"]];
    return [
      h("h1", null, "Rollout ", h("code", null, artifact), " #", show(r.id)),
      dl([
        ["state", badge(r.state)],
        ["from", show(r.from && r.from.version)],
        ["to", show(r.target && r.target.version)],
        ["progress", bar(done, total, "rollout progress")],
        ["unit being rolled", show(typeof r.unit === "number" ? r.unit + 1 : null)],
        ["probation", r.probation_ms !== undefined ? `${r.probation_ms} ms` : dash],
        ["max failures", show(r.max_failures)],
        ["created", h("span", null, when(r.created), " by ", show(r.by))],
        ["superseded by", show(r.superseded_by)],
      ]),
      actionForm({
        id: "rollout",
        title: "rollout actions",
        buttons: acts.map(([v, label]) => ({
          value: v, label, danger: v !== "resume",
          confirm: `${label} the rollout of ${artifact}?`,
          path: () => `/rollouts/${enc(artifact)}/${v}`,
        })),
      }),
      h("h2", null, "Scale units"),
      table([
        ["Unit", (u) => show(u.unit), "num"],
        ["Spec", (u) => show(u.spec)],
        ["Phase", (u) => badge(u.phase)],
        ["On target", (u) => bar(u.onTarget, u.instances, `unit ${u.unit}`)],
        ["Ok", (u) => show(u.ok), "num"],
        ["Failed", (u) => show(u.failed), "num"],
      ], units, { label: "scale units", status: (u) => (num(u.failed) > 0 ? "critical" : null), empty: "No units." }),
      h("h2", null, "Waiting for"),
      table([
        ["Instance", (w) => h("code", null, show(w.instance))],
        ["Why", (w) => show(w.why)],
      ], s.waiting_for, { label: "waiting for", empty: "Nothing." }),
      h("h2", null, "Members"),
      table([
        ["Instance", (m) => h("code", null, show(m.instance))],
        ["Unit", (m) => show(m.unit), "num"],
        ["Version", (m) => show(m.version)],
        ["State", (m) => badge(m.state)],
        ["Passing", (m) => (m.passing === true ? badge("passing") : m.passing === false ? badge("critical") : dash)],
        ["Reason", (m) => show(m.reason)],
      ], s.members, { label: "rollout members", status: (m) => (m.passing === false ? "critical" : null), empty: "No members." }),
      h("h2", null, "Events"),
      table([["At", (e) => when(e.at)], ["By", (e) => show(e.by)], ["What", (e) => show(e.what)]],
        arr(r.events).slice().reverse(), { label: "events", empty: "No events." }),
      h("h2", null, "History"),
      hist && hist.__error ? h("p.muted", null, hist.__error)
        : table(rolloutCols, arr(hist && (hist.rollouts || hist)).map(rolloutRow), { label: "history", status: (x) => stateStatus(x.state), empty: "No history." }),
      h("h2", null, "Start a new rollout"),
      startForm(artifact),
    ];
  }

  async function repairsScreen(service) {
    if (service) {
      const raw = await maybe("/repairs/" + enc(service));
      const v = raw && raw.services ? arr(raw.services).find((x) => x.service === service) || arr(raw.services)[0] : raw;
      if (!v) return notFound("repair view of", service);
      return [h("h1", null, "Repairs of ", link("#/services/" + enc(service), service)), repairView(v)];
    }
    const raw = await api("/repairs");
    const list = arr(raw && raw.services ? raw.services : raw);
    return [
      h("h1", null, "Repairs"),
      table([
        ["Service", (r) => link("#/repairs/" + enc(r.service), r.service)],
        ["In repair", (r) => show(r.in_repair ?? r.inRepair), "num"],
        ["Slots held", (r) => show(r.budget ?? r.slotsHeld), "num"],
        ["Waiting", (r) => show(r.waitingForBudget), "num"],
        ["Nodes", (r) => show(r.nodes ? arr(r.nodes).length : null), "num"],
        ["History", (r) => show(r.historyTotal), "num"],
        ["Exhausted", (r) => (r.exhausted || r.budgetExhausted ? badge("exhausted") : "no")],
      ], list, { label: "repairs", status: (r) => (r.exhausted || r.budgetExhausted ? "critical" : null), empty: "No repair policies in use." }),
    ];
  }

  async function snapshotsScreen() {
    const list = arr(await api("/snapshots"));
    return [
      h("h1", null, "Snapshots"),
      table([
        ["Set", (s) => show(s.set || s.name)],
        ["Snapshots", (s) => show(s.count ?? (s.snapshots && arr(s.snapshots).length)), "num"],
        ["Newest", (s) => { const n = newest(s); return n ? h("code", { title: show(n.sha256) }, show(n.sha256).slice(0, 12)) : dash; }],
        ["By", (s) => show(newest(s) && newest(s).by)],
        ["Age", (s) => (newest(s) ? when(newest(s).created_ms) : dash)],
        ["Size", (s) => (newest(s) ? bytes(newest(s).size) : dash)],
        ["Bootstrap", (s) => show(s.bootstrap)],
      ], list, { label: "snapshots", status: (s) => (s.unreadable ? "critical" : null), empty: "No snapshot sets." }),
    ];
  }

  const newest = (s) => arr(s.snapshots)[0] || null;

  async function auditScreen() {
    const raw = await api("/audit?limit=200");
    const list = arr(raw && raw.entries ? raw.entries : raw);
    return [
      h("h1", null, "Audit log"),
      table([
        ["When", (a) => when(a.at_ms)],
        ["Who", (a) => show(a.who)],
        ["Action", (a) => show(a.action)],
        ["Target", (a) => show(a.target)],
        ["Params", (a) => (a.params && typeof a.params === "object" ? h("code", null, JSON.stringify(a.params)) : show(a.params))],
        ["Outcome", (a) => badge(a.outcome)],
      ], list, { label: "audit log", status: (a) => (a.outcome && a.outcome !== "accepted" ? "critical" : null), empty: "No actions recorded." }),
    ];
  }

  function notFound(what, name) {
    return [h("h1", null, "Not found"), h("p", null, `No ${what} `, h("code", null, name), ". ", link("#/", "Back to the fleet"))];
  }

  // ---------- router ----------
  function route() {
    const parts = (location.hash.replace(/^#\/?/, "") || "").split("/").filter((p) => p !== "").map((p) => {
      try { return decodeURIComponent(p); } catch (_) { return p; }
    });
    const [screen, arg] = parts;
    switch (screen || "") {
      case "": return { nav: "fleet", title: "Fleet", run: fleetScreen };
      case "services": return arg ? { nav: "fleet", title: arg, run: () => serviceScreen(arg) } : { nav: "fleet", title: "Fleet", run: fleetScreen };
      case "nodes": return arg ? { nav: "fleet", title: arg, run: () => nodeScreen(arg) } : { nav: "fleet", title: "Fleet", run: fleetScreen };
      case "elections": return arg ? { nav: "fleet", title: arg, run: () => electionScreen(arg) } : { nav: "fleet", title: "Fleet", run: fleetScreen };
      case "rollouts": return arg ? { nav: "rollouts", title: "Rollout " + arg, run: () => rolloutScreen(arg) } : { nav: "rollouts", title: "Rollouts", run: rolloutsScreen };
      case "repairs": return { nav: "repairs", title: "Repairs", run: () => repairsScreen(arg) };
      case "snapshots": return { nav: "snapshots", title: "Snapshots", run: snapshotsScreen };
      case "audit": return { nav: "audit", title: "Audit", run: auditScreen };
      default: return { nav: "", title: "Not found", run: async () => notFound("screen", screen) };
    }
  }

  /** Renders the current screen; a newer render supersedes an older one still in flight. */
  async function render(fresh) {
    const seq = ++state.renderSeq;
    const r = route();
    for (const a of document.querySelectorAll("nav a")) {
      if (a.dataset.nav === r.nav) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    document.title = `${r.title} · autopilot cockpit`;
    if (fresh) view.setAttribute("aria-busy", "true");
    let nodes;
    try {
      nodes = await r.run();
    } catch (e) {
      if (seq !== state.renderSeq) return;
      if (e.status === 401) {
        nodes = [h("h1", null, "Token needed"), h("p", null, "This cockpit needs a token: enter it above.")];
        fresh = false;
        setTimeout(() => $("token-input").focus(), 0);
      }
      else if (!fresh && view.childElementCount) { notice(`refresh failed: ${e.message}`); return; }
      else nodes = [h("h1", null, "Cannot load"), h("p", null, e.message)];
    }
    if (seq !== state.renderSeq) return;
    // Keep what the user is typing across live refreshes.
    const keep = {};
    for (const el of view.querySelectorAll("input[id], select[id]")) keep[el.id] = el.value;
    const focused = focusKey(document.activeElement);
    const before = view.querySelectorAll('tr[data-status="critical"]').length;
    const frag = document.createDocumentFragment();
    add(frag, [nodes]);
    paintBars(frag);
    view.replaceChildren(frag);
    for (const [id, v] of Object.entries(keep)) {
      const el = document.getElementById(id);
      if (el && !el.disabled && v !== "") el.value = v;
    }
    const again = focused && view.querySelector(focused);
    if (again) again.focus({ preventScroll: true });
    else if (fresh) view.focus({ preventScroll: true });
    // Screen readers hear what changed in a word, not the whole screen again.
    const after = view.querySelectorAll('tr[data-status="critical"]').length;
    if (fresh) $("announce").textContent = `${r.title} loaded`;
    else if (after !== before) $("announce").textContent = `${r.title} updated: ${after} critical row${after === 1 ? "" : "s"}`;
    view.setAttribute("aria-busy", "false");
    view.dataset.rendered = String(Date.now());
    view.dataset.revision = show(state.revision);
    if (fresh) notice(null);
  }
  /** A selector finding the focused element again after a re-render (a link by href, a control by id or data-op). */
  function focusKey(el) {
    if (!el || !view.contains(el) || el === view) return null;
    const q = (v) => String(v).replace(/["\\]/g, "\\$&");
    if (el.id) return `#${CSS.escape(el.id)}`;
    if (el.tagName === "A" && el.getAttribute("href")) return `a[href="${q(el.getAttribute("href"))}"]`;
    if (el.dataset && el.dataset.op) return `button[data-op="${q(el.dataset.op)}"]`;
    return null;
  }
  function schedule(ms) {
    clearTimeout(state.timer);
    state.timer = setTimeout(() => render(false), ms);
  }

  // ---------- live updates: SSE over fetch (so the Bearer header can be sent) ----------
  function setLive(on, text) {
    const l = $("live");
    l.className = on ? "live on" : "live off";
    l.textContent = text;
    l.dataset.state = on ? "live" : "reconnecting";
  }
  let sseAbort = null;
  async function live() {
    let backoff = 500;
    for (;;) {
      const ctl = new AbortController();
      sseAbort = ctl;
      let opened = false;
      try {
        const res = await fetch(API + "/events", { headers: headers({ Accept: "text/event-stream" }), signal: ctl.signal, cache: "no-store" });
        if (!res.ok || !res.body) throw new Error(`events: ${res.status}`);
        opened = true;
        setLive(true, "live");
        backoff = 500;
        const reader = res.body.getReader();
        const dec = new TextDecoder();
        let buf = "";
        // A keep-alive arrives every 15 s: 40 s of silence means the stream is dead.
        let watchdog = setTimeout(() => ctl.abort(), 40000);
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          clearTimeout(watchdog);
          watchdog = setTimeout(() => ctl.abort(), 40000);
          buf += dec.decode(value, { stream: true });
          if (buf.length > 1 << 20) buf = "";
          let i;
          while ((i = buf.search(/\r?\n\r?\n/)) >= 0) {
            const block = buf.slice(0, i);
            buf = buf.slice(i).replace(/^\r?\n\r?\n/, "");
            onEvent(block);
          }
        }
        clearTimeout(watchdog);
      } catch (_) {
        // fall through to reconnect
      }
      if (sseAbort !== ctl) return; // replaced by a newer stream (token changed)
      setLive(false, "reconnecting");
      await new Promise((r) => setTimeout(r, backoff + Math.random() * 250));
      backoff = Math.min(opened ? 1000 : backoff * 2, 15000);
      if (sseAbort !== ctl) return;
    }
  }
  function onEvent(block) {
    let type = "message", data = "";
    for (const line of block.split(/\r?\n/)) {
      if (line.startsWith(":")) continue;
      const k = line.indexOf(":");
      const f = k < 0 ? line : line.slice(0, k);
      const v = k < 0 ? "" : line.slice(k + 1).replace(/^ /, "");
      if (f === "event") type = v;
      else if (f === "data") data += (data ? "\n" : "") + v;
    }
    let rev = null;
    try { rev = JSON.parse(data).revision; } catch (_) { rev = null; }
    if (type === "hello") {
      const missed = state.revision !== null && rev !== state.revision;
      state.revision = rev;
      if (missed) schedule(50); // changes while disconnected
    } else if (type === "change") {
      state.revision = rev;
      schedule(50);
    }
  }
  function restartLive() {
    if (sseAbort) sseAbort.abort();
    sseAbort = null;
    live();
  }

  // ---------- wiring ----------
  $("token-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const v = $("token-input").value.trim();
    if (v) sessionStorage.setItem(TOKEN_KEY, v);
    $("token-input").value = "";
    await whoami();
    restartLive();
    render(true);
  });
  $("token-clear").addEventListener("click", async () => {
    sessionStorage.removeItem(TOKEN_KEY);
    await whoami();
    restartLive();
    render(true);
  });
  window.addEventListener("hashchange", () => render(true));
  (async () => {
    await whoami();
    live();
    await render(true);
  })();
})();
