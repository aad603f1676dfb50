// setpoint's dashboard: plain JavaScript over the Kubernetes-style API, no build step.
// Every request carries the user's bearer token, so the API's authentication and authorization
// decide what the page may see and do. Live views follow the API's watch (list, then watch from
// the list's revision, resumed from the last revision seen, listed again on 410).
"use strict";

const $ = (sel, el = document) => el.querySelector(sel);
function h(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat(Infinity)) if (kid !== null && kid !== undefined && kid !== false) e.append(kid instanceof Node ? kid : String(kid));
  return e;
}

const state = { token: sessionStorage.getItem("setpoint.token") || "", kinds: [], cleanup: [] };
const TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io, application/json";
const IN_PROGRESS = new Set(["Applying", "Progressing", "Provisioning", "Starting", "Pending", "Reconciling", "Creating",
  "Updating", "Scheduling", "Resizing", "Destroying", "Backoff", "ScalingDown", "ReplicasNotReady", "Unknown"]);

class ApiError extends Error {
  constructor(status, body) { super((body && body.message) || `HTTP ${status}`); this.status = status; this.body = body; }
}

async function api(path, opts = {}) {
  const headers = { Authorization: `Bearer ${state.token}`, Accept: "application/json", ...(opts.headers || {}) };
  const r = await fetch(path, { ...opts, headers });
  const text = await r.text();
  let body;
  try { body = text ? JSON.parse(text) : {}; } catch { body = { message: text }; }
  if (r.status === 401) { signOut("The server refused the token: sign in again."); throw new ApiError(401, body); }
  if (!r.ok) throw new ApiError(r.status, body);
  return body;
}

// ---- live: list + watch + resume --------------------------------------------------------------

const live = { followers: new Set() };
function showLive() {
  const el = $("#live");
  const all = [...live.followers];
  if (!all.length) { el.textContent = ""; el.className = "live"; return; }
  const down = all.filter((f) => !f.connected).length;
  el.className = "live " + (down ? "off" : "on");
  el.textContent = down ? "reconnecting…" : "live";
}

class Follower {
  // path: the collection; query: extra parameters; accept: JSON or Table.
  constructor(path, { query = {}, accept = "application/json", onList, onEvent }) {
    Object.assign(this, { path, query, accept, onList, onEvent, rv: null, connected: false, stopped: false });
    this.abort = new AbortController();
    live.followers.add(this);
    this.run();
  }
  url(extra) {
    const q = new URLSearchParams({ ...this.query, ...extra });
    return `${this.path}?${q}`;
  }
  async run() {
    let delay = 500;
    while (!this.stopped) {
      try {
        if (this.rv === null) {
          const list = await api(this.url({}), { headers: { Accept: this.accept }, signal: this.abort.signal });
          this.rv = (list.metadata && list.metadata.resourceVersion) || "0";
          this.onList(list);
        }
        const r = await fetch(this.url({ watch: "1", allowWatchBookmarks: "true", resourceVersion: this.rv }),
          { headers: { Authorization: `Bearer ${state.token}`, Accept: this.accept }, signal: this.abort.signal });
        if (r.status === 410) { this.rv = null; continue; }
        if (!r.ok) throw new ApiError(r.status, null);
        this.connected = true; showLive(); delay = 500;
        const reader = r.body.getReader();
        const dec = new TextDecoder();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true });
          let nl;
          while ((nl = buf.indexOf("\n")) >= 0) {
            const line = buf.slice(0, nl); buf = buf.slice(nl + 1);
            if (line.trim()) this.event(JSON.parse(line));
          }
        }
      } catch (e) {
        if (this.stopped) return;
        if (e instanceof ApiError && e.status === 403) { this.onList(null, e); return; }
      }
      this.connected = false; showLive();
      if (this.stopped) return;
      await new Promise((res) => setTimeout(res, delay));  // the pace of reconnecting, not a wait for a state
      delay = Math.min(delay * 2, 5000);
    }
  }
  event(ev) {
    if (ev.type === "ERROR") { if (ev.object && ev.object.code === 410) this.rv = null; this.abort.abort(); this.abort = new AbortController(); return; }
    const meta = (ev.object && (ev.object.metadata || (ev.object.rows && ev.object.rows[0] && ev.object.rows[0].object.metadata))) || {};
    if (ev.type === "BOOKMARK") { if (ev.object.metadata) this.rv = ev.object.metadata.resourceVersion; return; }
    if (meta.resourceVersion && ev.object.kind !== "Table") this.rv = meta.resourceVersion;
    if (ev.object.kind === "Table" && ev.object.metadata && ev.object.metadata.resourceVersion) this.rv = ev.object.metadata.resourceVersion;
    this.onEvent(ev.type, ev.object);
  }
  stop() { this.stopped = true; this.abort.abort(); live.followers.delete(this); showLive(); }
}

function follow(path, opts) { const f = new Follower(path, opts); state.cleanup.push(() => f.stop()); return f; }

// ---- discovery -------------------------------------------------------------------------------

async function discover() {
  const kinds = [];
  const add = (group, gv, base, doc) => {
    const names = new Set(doc.resources.map((r) => r.name));
    for (const r of doc.resources) {
      if (r.name.includes("/") || !(r.verbs || []).includes("list")) continue;
      kinds.push({ group, gv, base, plural: r.name, kind: r.kind, namespaced: r.namespaced,
                   scalable: names.has(`${r.name}/scale`), shortNames: r.shortNames || [] });
    }
  };
  add("", "v1", "/api/v1", await api("/api/v1"));
  for (const g of (await api("/apis")).groups) {
    const gv = g.preferredVersion.groupVersion;
    try { add(g.name, gv, `/apis/${gv}`, await api(`/apis/${gv}`)); } catch (e) { /* a group being installed */ }
  }
  state.kinds = kinds;
  const menu = $("#kind-menu");
  menu.replaceChildren(h("option", { value: "" }, "Kinds…"),
    ...kinds.map((k) => h("option", { value: `#/list/${encodeURIComponent(k.gv)}/${k.plural}` }, `${k.kind} (${k.gv})`)));
}

const kindOf = (gv, plural) => state.kinds.find((k) => k.gv === gv && k.plural === plural);
const kindFor = (apiVersion, kind) => state.kinds.find((k) => k.gv === apiVersion && k.kind === kind);
const collection = (k, ns) => (k.namespaced && ns ? `${k.base}/namespaces/${ns}/${k.plural}` : `${k.base}/${k.plural}`);
const objectPath = (k, ns, name) => `${collection(k, ns)}/${encodeURIComponent(name)}`;
const objectLink = (k, ns, name) => `#/obj/${encodeURIComponent(k.gv)}/${k.plural}/${ns || "_"}/${encodeURIComponent(name)}`;

function health(o) {
  const st = o.status || {};
  const conds = st.conditions || [];
  const ready = conds.find((c) => c.type === "Ready");
  if (!ready) return st.phase === "Active" || st.phase === "Running" ? "converged" : (conds.length || st.phase ? "progressing" : "none");
  const gen = o.metadata.generation;
  const seen = ready.observedGeneration !== undefined ? ready.observedGeneration : st.observedGeneration;
  if (ready.status === "True" && (seen === undefined || gen === undefined || seen === gen)) return "converged";
  if (ready.status === "False" && !IN_PROGRESS.has(ready.reason)) return "failed";
  return "progressing";
}

function age(ts) {
  if (!ts) return "";
  const s = Math.max(0, (Date.now() - Date.parse(ts)) / 1000);
  return s < 60 ? `${Math.round(s)}s` : s < 3600 ? `${Math.round(s / 60)}m` : s < 86400 ? `${Math.round(s / 3600)}h` : `${Math.round(s / 86400)}d`;
}

function toYAML(v, indent = "") {
  if (v === null || v === undefined) return "null";
  if (Array.isArray(v)) {
    if (!v.length) return "[]";
    return v.map((x) => `\n${indent}- ${toYAML(x, indent + "  ").replace(/^\n\s*/, "")}`).join("");
  }
  if (typeof v === "object") {
    const keys = Object.keys(v);
    if (!keys.length) return "{}";
    return keys.map((k) => {
      const x = v[k];
      const inner = toYAML(x, indent + "  ");
      return `\n${indent}${k}:${typeof x === "object" && x !== null && (Array.isArray(x) ? x.length : Object.keys(x).length) ? inner : " " + inner}`;
    }).join("");
  }
  if (typeof v === "string") return /^[\w./:@-][\w ./:@-]*$/.test(v) && !/^(true|false|null|[\d.]+)$/.test(v) ? v : JSON.stringify(v);
  return String(v);
}

// ---- views -----------------------------------------------------------------------------------

function debounce(fn, ms) { let t = null; return () => { clearTimeout(t); t = setTimeout(fn, ms); }; }

async function overview(main) {
  const kindsCard = h("div", { class: "grid", id: "kinds" });
  const nodesBody = h("tbody");
  const warnBody = h("tbody");
  main.replaceChildren(
    h("h1", {}, "Overview"),
    h("section", { class: "card" }, h("h2", {}, "Kinds"), kindsCard),
    h("div", { class: "two" },
      h("section", { class: "card" }, h("h2", {}, "Nodes"),
        h("table", { id: "nodes" }, h("thead", {}, h("tr", {}, ["Node", "Ready", "Heartbeat", "Agent", "Transport"].map((c) => h("th", {}, c)))), nodesBody)),
      h("section", { class: "card" }, h("h2", {}, "Recent warnings"),
        h("table", { id: "warnings" }, h("thead", {}, h("tr", {}, ["Age", "Object", "Reason", "Message"].map((c) => h("th", {}, c)))), warnBody))));
  const interesting = state.kinds.filter((k) => !["events", "leases", "endpointslices", "customresourcedefinitions"].includes(k.plural));
  const counts = async () => {
    const cards = await Promise.all(interesting.map(async (k) => {
      const card = h("a", { class: "card", href: `#/list/${encodeURIComponent(k.gv)}/${k.plural}`, "data-kind": k.kind });
      try {
        const items = (await api(collection(k, null))).items;
        const by = { converged: 0, progressing: 0, failed: 0, none: 0 };
        for (const o of items) by[health(o)]++;
        card.append(h("h2", {}, k.kind, " ", h("span", { class: "muted" }, k.gv)),
          h("div", {}, h("b", {}, items.length), " objects"),
          h("div", {}, items.length - by.none ? [h("span", { class: "ok" }, `${by.converged} converged`), " · ",
            h("span", { class: "warn" }, `${by.progressing} progressing`), " · ",
            h("span", { class: "bad" }, `${by.failed} failed`)] : h("span", { class: "muted" }, "no status")));
      } catch (e) {
        card.append(h("h2", {}, k.kind), h("div", { class: "muted" }, e.status === 403 ? "not allowed" : e.message));
      }
      return card;
    }));
    kindsCard.replaceChildren(...cards);
  };
  const refresh = debounce(counts, 400);
  await counts();
  const nodes = new Map();
  const leases = new Map();
  const renderNodes = () => nodesBody.replaceChildren(...[...nodes.values()].map((n) => {
    const ready = (n.status && n.status.conditions || []).find((c) => c.type === "Ready") || {};
    const lease = leases.get(n.metadata.name);
    const tr = (n.status && n.status.transfer) || {};
    return h("tr", {}, h("td", {}, h("a", { href: objectLink(kindOf("setpoint.dev/v1alpha1", "nodes"), null, n.metadata.name) }, n.metadata.name)),
      h("td", { class: ready.status === "True" ? "ok" : "bad" }, ready.status || "?"),
      h("td", {}, lease ? `${age(lease.spec.renewTime)} ago` : "—"), h("td", {}, (n.status || {}).agentVersion || ""), h("td", {}, tr.transport || ""));
  }));
  const nodeKind = kindOf("setpoint.dev/v1alpha1", "nodes");
  if (nodeKind) follow(collection(nodeKind, null), {
    onList: (l, err) => { if (err) { nodesBody.replaceChildren(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "not allowed"))); return; } nodes.clear(); for (const n of l.items) nodes.set(n.metadata.name, n); renderNodes(); },
    onEvent: (t, o) => { if (t === "DELETED") nodes.delete(o.metadata.name); else nodes.set(o.metadata.name, o); renderNodes(); refresh(); } });
  follow("/apis/coordination.k8s.io/v1/namespaces/setpoint-node-lease/leases", {
    onList: (l) => { if (!l) return; for (const x of l.items) leases.set(x.metadata.name, x); renderNodes(); },
    onEvent: (t, o) => { leases.set(o.metadata.name, o); renderNodes(); } });
  const warnings = new Map();
  const renderWarnings = () => warnBody.replaceChildren(...[...warnings.values()]
    .sort((a, b) => Date.parse(b.lastTimestamp || b.metadata.creationTimestamp) - Date.parse(a.lastTimestamp || a.metadata.creationTimestamp))
    .slice(0, 15).map((e) => {
      const io = e.involvedObject || {};
      const k = kindFor(io.apiVersion, io.kind);
      return h("tr", {}, h("td", {}, age(e.lastTimestamp || e.metadata.creationTimestamp)),
        h("td", {}, k ? h("a", { href: objectLink(k, io.namespace, io.name) }, `${io.kind} ${io.namespace ? io.namespace + "/" : ""}${io.name}`) : `${io.kind} ${io.name}`),
        h("td", { class: "bad" }, e.reason), h("td", {}, e.message));
    }));
  follow("/api/v1/events", {
    onList: (l) => { if (!l) return; warnings.clear(); for (const e of l.items) if (e.type === "Warning") warnings.set(e.metadata.uid, e); renderWarnings(); },
    onEvent: (t, e) => { if (t === "DELETED") warnings.delete(e.metadata.uid); else if (e.type === "Warning") warnings.set(e.metadata.uid, e); renderWarnings(); refresh(); } });
}

async function listView(main, gv, plural, params) {
  const k = kindOf(gv, plural);
  if (!k) { main.replaceChildren(h("p", { class: "error" }, `The server does not serve ${plural} in ${gv}.`)); return; }
  const ns = params.get("ns") || "";
  const selector = params.get("l") || "";
  const nsSelect = h("select", { id: "ns", "aria-label": "Namespace", onchange: () => go({ ns: nsSelect.value }) }, h("option", { value: "" }, "all namespaces"));
  const labelInput = h("input", { id: "selector", placeholder: "label selector, e.g. app=web", value: selector,
    onchange: () => go({ l: labelInput.value }) });
  const go = (change) => { const q = new URLSearchParams({ ns, l: selector, ...change }); location.hash = `#/list/${encodeURIComponent(gv)}/${plural}?${q}`; };
  const count = h("span", { class: "muted", id: "count" });
  const rowsBox = h("div", { class: "rows", id: "rows" });
  main.replaceChildren(h("h1", {}, k.kind, " ", h("span", { class: "muted" }, gv)),
    h("div", { class: "toolbar" }, k.namespaced ? nsSelect : null, labelInput, count), rowsBox);
  if (k.namespaced) api("/api/v1/namespaces").then((l) => {
    for (const n of l.items) nsSelect.append(h("option", { value: n.metadata.name, selected: n.metadata.name === ns }, n.metadata.name));
  }).catch(() => { nsSelect.append(h("option", { value: ns, selected: true }, ns || "all namespaces")); });
  let columns = [];
  const rows = new Map();
  const ROW = 28;
  const spacer = h("div");
  const table = h("table");
  rowsBox.append(spacer, table);
  const draw = () => {
    const all = [...rows.values()];
    count.textContent = `${all.length} objects`;
    spacer.style.height = `${(all.length + 1) * ROW}px`;
    const first = Math.max(0, Math.floor(rowsBox.scrollTop / ROW) - 10);
    const last = Math.min(all.length, first + Math.ceil(rowsBox.clientHeight / ROW) + 20);
    table.style.top = `${first * ROW}px`;
    const head = h("tr", {}, k.namespaced ? h("th", {}, "Namespace") : null, columns.map((c) => h("th", { title: c.description || "" }, c.name)));
    table.replaceChildren(h("thead", {}, head), h("tbody", {}, all.slice(first, last).map((r) => {
      const m = r.object.metadata;
      return h("tr", { "data-name": m.name }, k.namespaced ? h("td", {}, m.namespace) : null, r.cells.map((c, i) =>
        h("td", {}, columns[i] && columns[i].name === "Name" ? h("a", { href: objectLink(k, m.namespace, m.name) }, c) : (c === null || c === undefined ? "" : String(c)))));
    })));
  };
  let pending = false;
  const redraw = () => { if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; draw(); }); } };
  rowsBox.addEventListener("scroll", redraw);
  const key = (r) => `${r.object.metadata.namespace || ""}/${r.object.metadata.name}`;
  follow(collection(k, ns), { accept: TABLE, query: selector ? { labelSelector: selector } : {},
    onList: (t, err) => {
      if (err) { rowsBox.replaceChildren(h("p", { class: "error" }, err.message)); return; }
      columns = t.columnDefinitions; rows.clear();
      for (const r of t.rows) rows.set(key(r), r);
      redraw();
    },
    onEvent: (type, t) => {
      if (t.columnDefinitions && t.columnDefinitions.length) columns = t.columnDefinitions;
      for (const r of t.rows || []) { if (type === "DELETED") rows.delete(key(r)); else rows.set(key(r), r); }
      redraw();
    } });
}

function cell(v) {
  if (Array.isArray(v) && v.some((x) => x && typeof x === "object")) return `${v.length} items (see YAML)`;
  return typeof v === "object" && v !== null ? JSON.stringify(v) : String(v);
}

function flatten(v, prefix = "", out = new Map(), depth = 0) {
  if (v && typeof v === "object" && !Array.isArray(v) && depth < 3) {
    for (const [k, x] of Object.entries(v)) flatten(x, prefix ? `${prefix}.${k}` : k, out, depth + 1);
  } else out.set(prefix, v);
  return out;
}

async function objectView(main, gv, plural, ns, name) {
  const k = kindOf(gv, plural);
  if (!k) { main.replaceChildren(h("p", { class: "error" }, `The server does not serve ${plural} in ${gv}.`)); return; }
  ns = ns === "_" ? "" : ns;
  let obj = null;
  const events = new Map();
  const box = h("div");
  main.replaceChildren(box);
  const render = () => {
    if (!obj) { box.replaceChildren(h("h1", {}, `${k.kind} ${name}`), h("p", { class: "muted", id: "gone" }, "This object does not exist (any more).")); return; }
    const m = obj.metadata;
    const st = obj.status || {};
    const spec = flatten(obj.spec || {});
    const status = flatten(st);
    const diff = new Set([...spec.keys()].filter((p) => status.has(p) && JSON.stringify(status.get(p)) !== JSON.stringify(spec.get(p))));
    const side = (title, map, id) => h("section", { class: "card", id },
      h("h2", {}, title), h("table", {}, h("tbody", {}, [...map.entries()].filter(([p]) => !p.startsWith("conditions")).map(([p, v]) =>
        h("tr", { class: diff.has(p) ? "diff" : "", "data-path": p }, h("td", {}, p), h("td", { title: JSON.stringify(v) }, cell(v)))))));
    const conds = (st.conditions || []).map((c) => h("tr", {}, h("td", {}, c.type),
      h("td", { class: c.status === "True" ? "ok" : "bad" }, c.status), h("td", {}, c.reason || ""), h("td", {}, c.message || ""),
      h("td", {}, c.lastTransitionTime ? `${age(c.lastTransitionTime)} ago` : "")));
    const owners = (m.ownerReferences || []).map((o) => { const ok = kindFor(o.apiVersion, o.kind); return h("li", {}, ok ? h("a", { href: objectLink(ok, m.namespace, o.name) }, `${o.kind} ${o.name}`) : `${o.kind} ${o.name}`); });
    const owned = [];
    for (const r of st.resources || []) { const rk = kindFor(r.apiVersion, r.kind); owned.push(h("li", {}, rk ? h("a", { href: objectLink(rk, rk.namespaced ? m.namespace : "", r.objectName) }, `${r.kind} ${r.objectName}`) : `${r.kind} ${r.objectName}`, ` (${r.name}): `, h("span", { class: r.phase === "Ready" ? "ok" : r.phase === "Failed" ? "bad" : "warn" }, r.phase), r.message ? ` — ${r.message}` : "")); }
    for (const p of st.processes || []) owned.push(h("li", {}, `replica ${p.replica}: `, h("span", { class: p.state === "Running" ? "ok" : "warn" }, p.state), p.pid ? ` pid ${p.pid}` : "", p.port ? ` port ${p.port}` : "", ` restarts ${p.restarts}`));
    const gen = m.generation, seen = st.observedGeneration;
    const replicas = h("input", { type: "number", min: "0", id: "replicas", value: (obj.spec || {}).replicas ?? 0, style: "width:5em" });
    const actions = h("div", { class: "toolbar" },
      k.scalable ? [h("label", {}, "Replicas ", replicas), h("button", { id: "scale", onclick: () => act(() => api(`${objectPath(k, m.namespace, m.name)}/scale`, { method: "PATCH",
        headers: { "Content-Type": "application/merge-patch+json" }, body: JSON.stringify({ spec: { replicas: Number(replicas.value) } }) })) }, "Scale")] : null,
      h("button", { class: "danger", id: "delete", onclick: () => { if (confirm(`Delete ${k.kind} ${m.name}?`)) act(() => api(objectPath(k, m.namespace, m.name), { method: "DELETE" })); } }, "Delete"),
      h("span", { class: "error", id: "action-error" }));
    const evs = [...events.values()].sort((a, b) => Date.parse(b.lastTimestamp || b.metadata.creationTimestamp) - Date.parse(a.lastTimestamp || a.metadata.creationTimestamp));
    box.replaceChildren(
      h("h1", {}, `${k.kind} `, h("span", { id: "name" }, m.name), m.namespace ? h("span", { class: "muted" }, ` in ${m.namespace}`) : null),
      h("p", { id: "generation", class: seen !== undefined && gen !== undefined && seen !== gen ? "warn" : "muted" },
        `generation ${gen ?? "—"}, observed ${seen ?? "—"}`, seen !== undefined && gen !== undefined && seen !== gen ? " — the controller has not acted on the latest change yet" : "",
        m.deletionTimestamp ? " — being deleted" : ""),
      actions,
      h("div", { class: "two" }, side("Desired (spec)", spec, "desired"), side("Observed (status)", status, "observed")),
      h("section", { class: "card" }, h("h2", {}, "Conditions"), h("table", { id: "conditions" }, h("thead", {}, h("tr", {}, ["Type", "Status", "Reason", "Message", "Changed"].map((c) => h("th", {}, c)))), h("tbody", {}, conds))),
      owners.length || owned.length ? h("section", { class: "card" }, h("h2", {}, "Owners and owned"),
        owners.length ? h("div", {}, "Owned by:", h("ul", { class: "tree" }, owners)) : null,
        owned.length ? h("div", {}, "Owns:", h("ul", { class: "tree", id: "owned" }, owned)) : null) : null,
      h("section", { class: "card" }, h("h2", {}, "Events"), h("table", { id: "events" }, h("tbody", {}, evs.map((e) =>
        h("tr", {}, h("td", {}, age(e.lastTimestamp || e.metadata.creationTimestamp)), h("td", { class: e.type === "Warning" ? "bad" : "" }, e.type),
          h("td", {}, e.reason), h("td", {}, e.message), h("td", { class: "muted" }, e.count > 1 ? `×${e.count}` : "")))))),
      h("section", { class: "card" }, h("h2", {}, "YAML"), h("pre", { id: "yaml" }, toYAML(obj).replace(/^\n/, ""))));
  };
  const act = async (fn) => { const el = $("#action-error"); el.textContent = ""; try { await fn(); } catch (e) { el.textContent = e.message; } };
  follow(collection(k, ns), { query: { fieldSelector: `metadata.name=${name}` },
    onList: (l, err) => { if (err) { box.replaceChildren(h("p", { class: "error" }, err.message)); return; } obj = l.items[0] || null; render(); },
    onEvent: (t, o) => { obj = t === "DELETED" ? null : o; render(); } });
  const mine = (e) => e.involvedObject && e.involvedObject.name === name && e.involvedObject.kind === k.kind;
  follow(ns ? `/api/v1/namespaces/${ns}/events` : "/api/v1/events", {
    onList: (l) => { if (!l) return; for (const e of l.items) if (mine(e)) events.set(e.metadata.uid, e); render(); },
    onEvent: (t, e) => { if (!mine(e)) return; if (t === "DELETED") events.delete(e.metadata.uid); else events.set(e.metadata.uid, e); render(); } });
}

function applyView(main) {
  const text = h("textarea", { id: "manifest", rows: "18", style: "width:100%;font-family:monospace", spellcheck: "false",
    placeholder: "apiVersion: setpoint.dev/v1alpha1\nkind: ProcessSet\nmetadata: {name: web, namespace: default}\nspec: …" });
  const out = h("div", { id: "apply-result" });
  const apply = async () => {
    out.replaceChildren();
    const src = text.value;
    let apiVersion, kind, name, namespace;
    try { const j = JSON.parse(src); ({ apiVersion, kind } = j); ({ name, namespace } = j.metadata || {}); } catch {
      const top = (key) => (src.match(new RegExp(`^${key}:\\s*["']?([^"'\\s#]+)`, "m")) || [])[1];
      apiVersion = top("apiVersion"); kind = top("kind");
      const meta = src.match(/^metadata:\s*\{([^}]*)\}/m) || src.match(/^metadata:\s*\n((?:[ \t]+.*\n?)*)/m);
      const field = (f) => meta && (meta[1].match(new RegExp(`(?:^|[\\s,{])${f}:\\s*["']?([^"',}\\s]+)`, "m")) || [])[1];
      name = field("name"); namespace = field("namespace");
    }
    const k = apiVersion && kind ? kindFor(apiVersion, kind) : null;
    if (!k || !name) { out.append(h("p", { class: "error" }, !k ? `The server does not serve kind ${kind || "?"} in ${apiVersion || "?"}.` : "metadata.name is required.")); return; }
    try {
      const res = await api(`${objectPath(k, namespace || "default", name)}?fieldManager=setpoint-ui&fieldValidation=Strict`, {
        method: "PATCH", headers: { "Content-Type": "application/apply-patch+yaml" }, body: src });
      out.append(h("p", { class: "ok" }, `${k.kind} ${name} applied (revision ${res.metadata.resourceVersion}). `,
        h("a", { href: objectLink(k, res.metadata.namespace, name) }, "Open it")));
    } catch (e) {
      const causes = (e.body && e.body.details && e.body.details.causes) || [];
      const lines = src.split("\n");
      out.append(h("p", { class: "error" }, e.message), h("ul", { class: "causes" }, causes.map((c) => {
        const leaf = (c.field || "").split(".").pop().replace(/\[\d+\]$/, "");
        const at = leaf ? lines.findIndex((l) => new RegExp(`(^|[\\s{,])${leaf}:`).test(l)) : -1;
        return h("li", { "data-field": c.field || "" }, h("b", {}, c.field || "(object)"), at >= 0 ? ` (line ${at + 1})` : "", `: ${c.message}`);
      })));
    }
  };
  main.replaceChildren(h("h1", {}, "Apply"), h("p", { class: "muted" }, "One object, YAML or JSON; applied server-side (field manager setpoint-ui), checked strictly against its schema."),
    text, h("div", { class: "toolbar" }, h("button", { id: "apply", onclick: apply }, "Apply")), out);
}

function parseMetrics(text) {
  const out = {};
  for (const line of text.split("\n")) {
    const m = line.match(/^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+([-\d.eE+]+|NaN)$/);
    if (m && !m[2]) out[m[1]] = Number(m[3]);
  }
  return out;
}

function chart(canvas, series, labels) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width = canvas.clientWidth * devicePixelRatio, hgt = canvas.height = canvas.clientHeight * devicePixelRatio;
  ctx.clearRect(0, 0, w, hgt);
  const colors = ["#0b5cad", "#cf222e"];
  series.forEach((pts, i) => {
    const max = Math.max(1, ...pts);
    ctx.strokeStyle = colors[i]; ctx.lineWidth = 2 * devicePixelRatio; ctx.beginPath();
    pts.forEach((v, j) => { const x = (j / Math.max(1, pts.length - 1)) * w, y = hgt - (v / max) * (hgt - 20) - 10; j ? ctx.lineTo(x, y) : ctx.moveTo(x, y); });
    ctx.stroke();
    ctx.fillStyle = colors[i]; ctx.font = `${12 * devicePixelRatio}px system-ui`;
    ctx.fillText(`${labels[i]} (max ${max.toFixed(1)})`, 8, (16 + 16 * i) * devicePixelRatio);
  });
}

async function transferView(main) {
  const body = h("tbody");
  const canvas = h("canvas", { id: "chart" });
  const note = h("p", { class: "muted", id: "server-revision" });
  main.replaceChildren(h("h1", {}, "Transfer"),
    h("p", { class: "muted" }, "How desired state reaches each agent: its transport, the revision its informers have seen, how far behind the server it is, and the work waiting in its queues (reported with its heartbeat)."),
    note,
    h("section", { class: "card" }, h("table", { id: "agents" }, h("thead", {}, h("tr", {}, ["Agent", "Transport", "Revision seen", "Behind", "Queue", "Reported"].map((c) => h("th", {}, c)))), body)),
    h("section", { class: "card" }, h("h2", {}, "Write rate and agent lag, last 5 minutes (from /metrics)"), canvas));
  const nodes = new Map();
  let serverRev = 0;
  const render = () => {
    note.textContent = serverRev ? `Server revision ${serverRev}.` : "";
    body.replaceChildren(...[...nodes.values()].map((n) => {
      const t = (n.status && n.status.transfer) || {};
      const behind = t.revision && serverRev ? Math.max(0, serverRev - Number(t.revision)) : "";
      return h("tr", { "data-node": n.metadata.name }, h("td", {}, n.metadata.name), h("td", {}, t.transport || "—"), h("td", {}, t.revision || "—"),
        h("td", { class: behind > 100 ? "warn" : "" }, behind === "" ? "—" : `${behind} revisions`), h("td", {}, t.queueDepth ?? "—"), h("td", {}, t.reportedAt ? `${age(t.reportedAt)} ago` : "—"));
    }));
  };
  const nodeKind = kindOf("setpoint.dev/v1alpha1", "nodes");
  if (nodeKind) follow(collection(nodeKind, null), {
    onList: (l, err) => { if (err) { body.replaceChildren(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "not allowed"))); return; } nodes.clear(); for (const n of l.items) nodes.set(n.metadata.name, n); render(); },
    onEvent: (t, o) => { if (t === "DELETED") nodes.delete(o.metadata.name); else nodes.set(o.metadata.name, o); render(); } });
  const rate = [], lag = [];
  let last = null;
  const sample = async () => {
    try {
      const r = await fetch("/metrics", { headers: { Authorization: `Bearer ${state.token}` } });
      if (!r.ok) { note.textContent = r.status === 403 ? "Metrics: not allowed for this token." : `Metrics: HTTP ${r.status}`; return; }
      const m = parseMetrics(await r.text());
      serverRev = m.setpoint_store_revision || serverRev;
      const now = Date.now();
      if (last) rate.push(Math.max(0, (serverRev - last.rev) / ((now - last.t) / 1000)));
      last = { rev: serverRev, t: now };
      const seen = [...nodes.values()].map((n) => Number(((n.status || {}).transfer || {}).revision)).filter((x) => x > 0);
      lag.push(seen.length ? Math.max(0, serverRev - Math.min(...seen)) : 0);
      while (rate.length > 150) rate.shift();
      while (lag.length > 150) lag.shift();
      render();
      chart(canvas, [rate, lag], ["writes/s", "oldest agent, revisions behind"]);
    } catch (e) { /* the server restarting: the next sample tells */ }
  };
  await sample();
  const timer = setInterval(sample, 2000);  // /metrics has no watch: sampled, as Prometheus would
  state.cleanup.push(() => clearInterval(timer));
}

// ---- shell -----------------------------------------------------------------------------------

function signOut(message) {
  sessionStorage.removeItem("setpoint.token");
  state.token = "";
  route(message);
}

function login(main, message) {
  $("#nav").hidden = true; $("#logout").hidden = true;
  main.replaceChildren($("#login-template").content.cloneNode(true));
  if (message) $("#login-error").textContent = message;
  $("#login").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    state.token = $("#token").value.trim();
    try {
      await api("/api/v1/namespaces?limit=1").catch((e) => { if (e.status !== 403) throw e; });
      sessionStorage.setItem("setpoint.token", state.token);
      await discover();
      route();
    } catch (e) { if (state.token) $("#login-error").textContent = e.message; }
  });
}

async function route(message) {
  for (const fn of state.cleanup.splice(0)) fn();
  const main = $("#main");
  if (!state.token) { login(main, message); return; }
  $("#nav").hidden = false; $("#logout").hidden = false;
  try { if (!state.kinds.length) await discover(); } catch (e) { main.replaceChildren(h("p", { class: "error" }, `Cannot reach the server: ${e.message}`)); setTimeout(() => route(), 2000); return; }
  const [path, query] = location.hash.slice(1).split("?");
  const parts = (path || "/").split("/").filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(query || "");
  try {
    if (parts[0] === "list") await listView(main, parts[1], parts[2], params);
    else if (parts[0] === "obj") await objectView(main, parts[1], parts[2], parts[3], parts[4]);
    else if (parts[0] === "apply") applyView(main);
    else if (parts[0] === "transfer") await transferView(main);
    else await overview(main);
  } catch (e) { if (!(e instanceof ApiError && e.status === 401)) main.append(h("p", { class: "error" }, e.message)); }
}

window.addEventListener("hashchange", () => route());
$("#logout").addEventListener("click", () => signOut());
$("#kind-menu").addEventListener("change", (ev) => { if (ev.target.value) location.hash = ev.target.value; ev.target.value = ""; });
route();
