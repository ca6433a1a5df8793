// The activity map: the service graph of `peergraph run` at any time within its retention, two
// times compared, and the alerts on it. Served from the binary (`/`), reading `/graph`,
// `/graph/diff` and `/alerts` of the same server. Rendering: sigma.js (WebGL) over a graphology
// graph, so 10,000 nodes and 50,000 edges stay interactive; see docs/activity-map.md.
import Graph from "graphology";
import Sigma from "sigma";
import forceAtlas2 from "graphology-layout-forceatlas2";

// Beyond this many nodes the map shows namespaces (and the nodes outside any) instead.
const MAX_NODES = 10000;
// Edge labels are drawn only for graphs this small (they cost a text draw each).
const MAX_LABELLED_EDGES = 2000;
const POLL_MS = 2000;

const $ = (id) => document.getElementById(id);
const state = {
  level: "workload",
  live: true,
  at: null, // ms; null: latest
  from: null, // ms, when comparing
  latest: 0,
  oldest: 0,
  focus: null, // { entity, group } while an alert is focused
  selectedAlert: null,
  search: "",
  labelMatches: [], // entities the directory matched by label, name or workload (GET /entities)
  edges: [],
  diff: null,
  alerts: [],
  aggregated: false,
  renders: 0,
  errors: [],
};
// What the browser tests read: the state, the graph, and whether a render has finished.
window.peergraph = { state, graph: null, ready: false };

const positions = new Map(); // node → {x, y}: stable across times and levels
const graph = new Graph({ multi: true, type: "directed" });
window.peergraph.graph = graph;
let renderer = null;

const PROTOCOLS = { 1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6" };
const service = (e) => `${e.dst_port}/${PROTOCOLS[e.protocol] || "proto-" + e.protocol}`;
const bytes = (n) => (n >= 1e9 ? (n / 1e9).toFixed(1) + " GB" : n >= 1e6 ? (n / 1e6).toFixed(1) + " MB" : n >= 1e3 ? (n / 1e3).toFixed(1) + " kB" : n + " B");
const time = (ms) => new Date(ms).toISOString().replace(".000Z", "Z");
const edgeKey = (e) => `${e.src}|${e.dst}|${e.dst_port}|${e.protocol}`;

function kind(node) {
  if (node.startsWith("workload:")) return "workload";
  if (node.startsWith("pod:")) return "pod";
  if (node.startsWith("host:")) return "host";
  if (node.startsWith("ns:")) return "namespace";
  if (node.startsWith("mcast:") || node.startsWith("bcast:") || node.startsWith("unspec:")) return "special";
  return "ext";
}
const COLORS = { workload: "#3b6fd8", pod: "#6aa3f0", host: "#49a078", ext: "#8a5cc2", namespace: "#7c8799", special: "#b9a66b" };

function namespaceOf(node) {
  const rest = node.startsWith("pod:") ? node.slice(4) : node.startsWith("workload:") ? node.slice(9) : null;
  return rest && rest.includes("/") ? rest.slice(0, rest.indexOf("/")) : null;
}

function label(node) {
  if (node.startsWith("workload:")) {
    const parts = node.slice(9).split("/");
    return parts.length === 3 ? `${parts[0]}/${parts[2]}` : node.slice(9);
  }
  return node;
}

// The pods of a workload: same namespace, named after it (Kubernetes names a Deployment's pods
// `<name>-<hash>-<id>`, a StatefulSet's `<name>-<n>`).
function podsOf(workload) {
  const parts = workload.slice(9).split("/");
  return parts.length === 3 ? `pod:${parts[0]}/${parts[2]}-` : null;
}

async function getJson(url) {
  const response = await fetch(url);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `${url}: ${response.status}`);
  return body;
}

// Where a node first appears: around its namespace's place on a circle, so a namespace's nodes
// start together and the layout only has to settle them.
function place(node) {
  if (positions.has(node)) return positions.get(node);
  const ns = namespaceOf(node) || kind(node);
  let hash = 0;
  for (const c of ns) hash = (hash * 31 + c.charCodeAt(0)) >>> 0;
  const angle = (hash % 360) * (Math.PI / 180);
  const p = { x: Math.cos(angle) * 100 + (Math.random() - 0.5) * 20, y: Math.sin(angle) * 100 + (Math.random() - 0.5) * 20 };
  positions.set(node, p);
  return p;
}

// Collapses nodes into their namespaces when there are too many to draw.
function aggregate(edges) {
  const nodes = new Set();
  for (const e of edges) nodes.add(e.src).add(e.dst);
  state.aggregated = nodes.size > MAX_NODES;
  if (!state.aggregated) return edges;
  const group = (n) => (namespaceOf(n) ? `ns:${namespaceOf(n)}` : n);
  const merged = new Map();
  for (const e of edges) {
    const a = { ...e, src: group(e.src), dst: group(e.dst) };
    const key = edgeKey(a);
    const m = merged.get(key);
    if (m) {
      m.flows += e.flows;
      m.bytes_out += e.bytes_out;
      m.bytes_in += e.bytes_in;
    } else merged.set(key, a);
  }
  return [...merged.values()];
}

function openAlertEntities() {
  const marked = new Set();
  for (const a of state.alerts) if (a.open) marked.add(a.entity);
  return marked;
}

// Every busy edge's volume differs between two times: the map marks a changed edge only when
// its flows at least doubled or halved (the header counts all of them).
const doubledOrHalved = (c) => c.to.flows >= 2 * c.from.flows || 2 * c.to.flows <= c.from.flows;

// Rebuilds the graph from the fetched edges (and the diff's removed ones), keeping positions.
function rebuild() {
  const edges = aggregate(state.edges);
  const diff = state.diff;
  const added = new Set(diff ? diff.added.map(edgeKey) : []);
  const changed = new Set(diff ? diff.changed.filter(doubledOrHalved).map((c) => edgeKey(c.to)) : []);
  const removed = diff ? aggregate(diff.removed) : [];
  graph.clear();
  let fresh = 0;
  const addNode = (n) => {
    if (graph.hasNode(n)) return;
    if (!positions.has(n)) fresh++;
    const p = place(n);
    graph.addNode(n, { x: p.x, y: p.y, size: kind(n) === "workload" || kind(n) === "namespace" ? 6 : 4, label: label(n), color: COLORS[kind(n)], kind: kind(n) });
  };
  const addEdge = (e, status) => {
    addNode(e.src);
    addNode(e.dst);
    const key = edgeKey(e);
    if (graph.hasEdge(key)) return;
    graph.addDirectedEdgeWithKey(key, e.src, e.dst, {
      size: Math.min(4, 1 + Math.log10(1 + e.flows) / 2),
      label: `${service(e)} · ${e.flows} flows · ${bytes(e.bytes_out + e.bytes_in)}`,
      status,
      record: e,
    });
  };
  for (const e of edges) addEdge(e, added.has(edgeKey(e)) ? "added" : changed.has(edgeKey(e)) ? "changed" : "");
  for (const e of removed) addEdge(e, "removed");
  for (const n of graph.nodes()) graph.setNodeAttribute(n, "degree", graph.degree(n));
  // Settle new nodes; a graph that is mostly placed already needs few iterations.
  if (fresh > 0 && graph.order > 1) {
    const iterations = graph.order > 3000 ? 15 : fresh > graph.order / 2 ? 60 : 20;
    forceAtlas2.assign(graph, { iterations, settings: { ...forceAtlas2.inferSettings(graph), barnesHutOptimize: graph.order > 500 } });
    graph.forEachNode((n, a) => positions.set(n, { x: a.x, y: a.y }));
  }
}

function highlighted() {
  const q = state.search.trim().toLowerCase();
  const matches = new Set();
  if (q) graph.forEachNode((n) => n.toLowerCase().includes(q) && matches.add(n));
  for (const entity of state.labelMatches) {
    if (graph.hasNode(entity.entity)) matches.add(entity.entity);
    if (entity.workload && graph.hasNode(entity.workload)) matches.add(entity.workload);
  }
  const focus = state.focus;
  const focused = new Set();
  if (focus) {
    graph.forEachNode((n) => {
      if (n === focus.entity || n === focus.group || focus.members.has(n) || (focus.members.size === 0 && focus.pods && n.startsWith(focus.pods))) focused.add(n);
    });
    for (const n of [...focused]) graph.forEachOutNeighbor(n, (m) => focused.add(m));
  }
  return { matches, focused };
}

// What the reducers draw, recomputed once per render (not per node): the reducers are set
// once, so a render is one refresh of the renderer.
const view = { alerted: new Set(), alertedWorkloads: new Set(), matches: new Set(), focused: new Set(), evidenced: new Set(), dimming: false };

function computeView() {
  view.alerted = openAlertEntities();
  const { matches, focused } = highlighted();
  view.matches = matches;
  view.focused = focused;
  view.dimming = matches.size > 0 || focused.size > 0;
  // A workload node is marked when one of its replicas has an open alert (the alert names its
  // peer group).
  view.alertedWorkloads = new Set(state.alerts.filter((a) => a.open && a.peer_group).map((a) => a.peer_group));
  view.evidenced = new Set();
  const selected = state.alerts.find((a) => a.alert_id === state.selectedAlert);
  if (selected && graph.hasNode(selected.entity)) {
    const named = Object.values(selected.evidence || {}).flatMap((v) => String(v).split(/[,\s]+/));
    graph.forEachOutNeighbor(selected.entity, (m) => {
      if (named.some((v) => v === m || v.startsWith(m + ":"))) view.evidenced.add(selected.entity + "|" + m);
    });
  }
}

function nodeReducer(node, data) {
  const res = { ...data };
  if (view.alerted.has(node) || view.alertedWorkloads.has(node)) {
    res.color = "#e0312b";
    res.size = data.size + 3;
    res.forceLabel = true;
  }
  if (view.matches.has(node) || view.focused.has(node)) res.forceLabel = true;
  else if (view.dimming) res.color = "#d5d9e0";
  return res;
}

function edgeReducer(edge, data) {
  const res = { ...data };
  const src = graph.source(edge);
  const dst = graph.target(edge);
  res.color = data.status === "added" ? "#1a9e3a" : data.status === "removed" ? "#e0312b" : data.status === "changed" ? "#e89a1a" : "#b8c0cc";
  if (data.status) res.size = data.size + 1.5;
  if (view.alerted.has(src) && !data.status) res.color = "#f08a80";
  // The selected alert's own evidence: the edge it is about, drawn strongest (in the
  // comparison's colour when it has one).
  if (view.evidenced.has(src + "|" + dst)) {
    if (!data.status) res.color = "#e0312b";
    res.size = data.size + 3;
    res.forceLabel = true;
  }
  if (view.dimming && !(view.focused.has(src) || view.matches.has(src) || view.matches.has(dst))) res.hidden = true;
  return res;
}

function render() {
  computeView();
  const labels = graph.size <= MAX_LABELLED_EDGES;
  if (!renderer) {
    renderer = new Sigma(graph, $("map"), { defaultEdgeType: "arrow", renderEdgeLabels: labels, labelRenderedSizeThreshold: 5, nodeReducer, edgeReducer });
    renderer.on("clickNode", ({ node }) => showNode(node));
    renderer.on("clickStage", () => {
      $("node-panel").hidden = true;
    });
  } else {
    if (renderer.getSetting("renderEdgeLabels") !== labels) renderer.setSetting("renderEdgeLabels", labels);
    renderer.refresh();
  }
  state.renders++;
  window.peergraph.ready = true;
}

function showNode(node) {
  const panel = $("node-panel");
  panel.hidden = false;
  $("node-title").textContent = node;
  const rows = [];
  let first = Infinity;
  let last = 0;
  const out = [];
  const inn = [];
  graph.forEachEdge(node, (edge, a, src) => {
    const e = a.record;
    first = Math.min(first, e.first_seen_ms);
    last = Math.max(last, e.last_seen_ms);
    (src === node ? out : inn).push(e);
  });
  const row = (e, other) => `<tr><td>${esc(other)}</td><td>${service(e)}</td><td>${e.flows}</td><td>${bytes(e.bytes_out + e.bytes_in)}</td></tr>`;
  rows.push(`<p>${esc(kind(node))}${namespaceOf(node) ? " in namespace " + esc(namespaceOf(node)) : ""}; in the window: first seen ${first < Infinity ? time(first) : "–"}, last seen ${last ? time(last) : "–"}</p>`);
  if (kind(node) === "workload" && state.level === "workload") rows.push(`<p><button class="link" id="drill">show its pods</button></p>`);
  rows.push(`<h3>out (${out.length})</h3><table>${out.map((e) => row(e, e.dst)).join("")}</table>`);
  rows.push(`<h3>in (${inn.length})</h3><table>${inn.map((e) => row(e, e.src)).join("")}</table>`);
  const alerts = state.alerts.filter((a) => a.entity === node || a.peer_group === node);
  if (alerts.length) rows.push(`<h3>alerts</h3><ul>${alerts.map((a) => `<li>${esc(a.detector)}: ${esc(a.summary)}</li>`).join("")}</ul>`);
  $("node-body").innerHTML = rows.join("");
  getJson(`entities?q=${encodeURIComponent(node)}&limit=20`)
    .then((answer) => {
      const info = answer.entities.find((e) => e.entity === node);
      if (!info || $("node-title").textContent !== node) return;
      const labels = Object.entries(info.labels).map(([k, v]) => `${esc(k)}=${esc(v)}`).join(", ");
      $("node-body").insertAdjacentHTML("afterbegin", `<p>${info.workload ? "workload " + esc(info.workload) + "; " : ""}labels: ${labels || "none"}</p>`);
      return membersOf(info.workload).then((members) => {
        const peers = [...members].filter((m) => m !== node).sort();
        if (peers.length && $("node-title").textContent === node) {
          $("node-body").insertAdjacentHTML("afterbegin", `<p id="node-peers">peers (${peers.length}): ${peers.map(esc).join(", ")}</p>`);
        }
      });
    })
    .catch(() => {});
  const drill = $("drill");
  if (drill) drill.onclick = () => focusOn({ entity: null, group: node, pods: podsOf(node), namespace: namespaceOf(node) });
}

function esc(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function renderAlerts() {
  const list = $("alerts");
  const shown = state.alerts.filter((a) => a.open || $("show-cleared").checked);
  $("alert-count").textContent = `(${state.alerts.filter((a) => a.open).length} open)`;
  list.innerHTML = "";
  for (const a of shown) {
    const li = document.createElement("li");
    li.className = (a.open ? "open" : "cleared") + (state.selectedAlert === a.alert_id ? " selected" : "");
    li.dataset.alertId = a.alert_id;
    li.dataset.entity = a.entity;
    li.dataset.detector = a.detector;
    const evidence = Object.entries(a.evidence || {}).map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("");
    const lifecycle = a.events.map((e) => `${e.event} ${time(e.event_time_ms)}`).join(" → ");
    li.innerHTML = `<div><span class="sev-${a.severity}">${esc(a.severity)}</span> ${esc(a.detector)}</div>
      <div>${esc(a.summary)}</div>
      <div class="meta">${esc(a.entity)}${a.peer_group ? " · peers: " + esc(a.peer_group) : ""}</div>
      <div class="meta">${esc(lifecycle)}</div><dl>${evidence}</dl>`;
    li.onclick = () => {
      state.selectedAlert = a.alert_id;
      focusOn({ entity: a.entity, group: a.peer_group, pods: a.peer_group && a.peer_group.startsWith("workload:") ? podsOf(a.peer_group) : null, namespace: namespaceOf(a.entity), at: a.last_seen_ms });
    };
    list.appendChild(li);
  }
}

// The replicas of a workload as the sensors reported them (the entity directory).
async function membersOf(workload) {
  if (!workload || !workload.startsWith("workload:")) return new Set();
  try {
    const answer = await getJson(`entities?workload=${encodeURIComponent(workload)}&limit=10000`);
    return new Set(answer.entities.map((e) => e.entity));
  } catch (error) {
    return new Set();
  }
}

// Focuses an entity and its peer group: the entity level of its namespace, at the alert's time.
async function focusOn(focus) {
  focus.members = await membersOf(focus.group);
  state.focus = focus;
  state.level = "entity";
  $("level").value = "entity";
  if (focus.at && focus.at >= state.oldest && focus.at <= state.latest) {
    state.live = false;
    $("live").checked = false;
    state.at = Math.floor(focus.at / 1000) * 1000;
  }
  refresh().then(() => {
    const target = focus.entity && graph.hasNode(focus.entity) ? focus.entity : graph.nodes().find((n) => focus.members.has(n) || (focus.pods && n.startsWith(focus.pods)));
    if (target && renderer) {
      const p = renderer.getNodeDisplayData(target);
      if (p) renderer.getCamera().animate({ x: p.x, y: p.y, ratio: 0.9 }, { duration: 400 });
      showNode(target);
    }
  });
}

function graphUrl(path, params) {
  const q = new URLSearchParams(params);
  q.set("level", state.level);
  if (state.level === "entity" && state.focus && state.focus.namespace) q.set("namespace", state.focus.namespace);
  return `${path}?${q}`;
}

async function refresh() {
  try {
    const at = state.live || state.at === null ? "now" : String(state.at);
    const answer = await getJson(graphUrl("graph", { at }));
    state.latest = answer.latest_ms;
    state.oldest = answer.oldest_ms;
    state.edges = answer.edges;
    const shownAt = answer.at_ms;
    state.diff = null;
    if (state.from !== null && $("compare").checked) {
      const from = Math.max(state.oldest, Math.min(state.from, shownAt));
      state.diff = await getJson(graphUrl("graph/diff", { from: String(from), to: String(shownAt) }));
      const doubled = state.diff.changed.filter(doubledOrHalved).length;
      $("diff-summary").textContent = `${state.diff.added.length} new, ${state.diff.removed.length} gone, ${state.diff.changed.length} changed volume (${doubled} by ×2 or more, marked)`;
    } else $("diff-summary").textContent = "";
    const alerts = await getJson(`alerts?at=${shownAt}&state=all`);
    state.alerts = alerts.alerts;
    updateSliders(shownAt);
    rebuild();
    render();
    renderAlerts();
    // An open node panel follows the time shown.
    const shownNode = $("node-title").textContent;
    if (!$("node-panel").hidden && shownNode) {
      if (graph.hasNode(shownNode)) showNode(shownNode);
      else $("node-panel").hidden = true;
    }
    $("status").textContent = `${time(shownAt)} · ${graph.order} nodes, ${graph.size} edges${state.aggregated ? " (by namespace: too many nodes)" : ""}`;
  } catch (error) {
    $("status").textContent = error.message;
  }
}

function updateSliders(shownAt) {
  for (const id of ["at", "from"]) {
    const s = $(id);
    s.min = state.oldest;
    s.max = state.latest;
  }
  $("at").value = shownAt;
  $("at-label").textContent = state.live ? "live" : time(shownAt);
  if (state.from === null) state.from = Math.max(state.oldest, shownAt - 60000);
  $("from").value = state.from;
  $("from-label").textContent = $("compare").checked ? time(state.from) : "";
}

$("level").onchange = (e) => {
  state.level = e.target.value;
  if (state.level === "workload") state.focus = null;
  refresh();
};
$("live").onchange = (e) => {
  state.live = e.target.checked;
  refresh();
};
$("at").oninput = (e) => {
  state.live = false;
  $("live").checked = false;
  state.at = Number(e.target.value);
  $("at-label").textContent = time(state.at);
};
$("at").onchange = () => refresh();
$("compare").onchange = (e) => {
  $("from").disabled = !e.target.checked;
  refresh();
};
$("from").oninput = (e) => {
  state.from = Number(e.target.value);
  $("from-label").textContent = time(state.from);
};
$("from").onchange = () => refresh();
$("show-cleared").onchange = () => renderAlerts();
let searchTimer = null;
$("search").oninput = (e) => {
  state.search = e.target.value;
  clearTimeout(searchTimer);
  const asked = state.search.trim();
  state.labelMatches = [];
  if (asked.length >= 2) {
    searchTimer = setTimeout(async () => {
      try {
        state.labelMatches = (await getJson(`entities?q=${encodeURIComponent(asked)}&limit=2000`)).entities;
      } catch (error) {
        state.labelMatches = [];
      }
      if (state.search.trim() === asked) render();
    }, 250);
  }
  render();
  const q = state.search.trim().toLowerCase();
  const hit = q && graph.nodes().find((n) => n.toLowerCase().includes(q));
  if (hit && renderer) {
    const p = renderer.getNodeDisplayData(hit);
    // A large graph redraws slowly without a GPU: move there at once rather than animate.
    if (p) renderer.getCamera().animate({ x: p.x, y: p.y, ratio: 0.6 }, { duration: graph.order > 3000 ? 0 : 300 });
  }
};
window.addEventListener("error", (e) => state.errors.push(String(e.message)));

// The page's own controls for tests and links: `#at=<ms>&from=<ms>&level=entity`.
function fromHash() {
  const h = new URLSearchParams(location.hash.slice(1));
  if (h.get("level")) {
    state.level = h.get("level");
    $("level").value = state.level;
  }
  if (h.get("at")) {
    state.live = false;
    $("live").checked = false;
    state.at = Number(h.get("at"));
  }
  if (h.get("from")) {
    state.from = Number(h.get("from"));
    $("compare").checked = true;
    $("from").disabled = false;
  }
}
fromHash();
window.peergraph.refresh = refresh;
window.peergraph.render = render;
window.peergraph.focusAlert = (id) => {
  const li = [...document.querySelectorAll("#alerts li")].find((l) => l.dataset.alertId === id);
  if (li) li.click();
};
refresh();
setInterval(() => {
  if (state.live) refresh();
}, POLL_MS);
