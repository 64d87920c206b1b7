// The kachery-p2p dashboard: renders the state the daemon sends every second (server-sent events).
// Every string from the daemon or from peers goes into the page as text, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else if (key === "title") node.title = value;
    else if (key === "onclick") node.addEventListener("click", value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function bytes(n) {
  if (typeof n !== "number") return "–";
  for (const [unit, scale] of [["GB", 1e9], ["MB", 1e6], ["kB", 1e3]]) {
    if (Math.abs(n) >= scale) return (n / scale).toFixed(1) + " " + unit;
  }
  return n + " B";
}
const rate = (n) => (typeof n === "number" ? (n / 1e6).toFixed(2) + " MB/s" : "–");
function seconds(s) {
  if (typeof s !== "number") return "–";
  s = Math.round(s);
  if (s >= 3600) return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
  if (s >= 60) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  return s + "s";
}
const short = (id) => (id ? id.slice(0, 12) : "");
const pathPill = (p) => el("span", { class: "pill " + p }, p);

function replace(target, rows) {
  target.replaceChildren(...rows);
}

async function post(action, body) {
  const response = await fetch("/ui/api/" + action, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!response.ok) {
    const data = await response.json().catch(() => ({}));
    alert((data.error && data.error.message) || "the daemon refused: HTTP " + response.status);
  }
  return response;
}

function renderNode(state) {
  const node = state.node;
  $("node-label").textContent = node.label ? "· " + node.label : "";
  document.title = "kachery-p2p · " + (node.label || short(node.nodeId));
  $("node-id").textContent = node.nodeId;
  $("node-version").textContent = node.version || "";
  $("node-udp").textContent = node.udpAddress || "–";
  $("node-api").textContent = "127.0.0.1:" + node.apiPort;
  const relays = Object.entries(node.relays || {});
  $("node-relays").textContent = node.relayMode
    ? "this node is a relay"
    : relays.length
      ? relays.map(([id, seen]) => short(id) + " (QUIC/UDP" + (seen ? ", sees us at " + seen : "") + ")").join(", ")
      : "none";
  const nat = node.nat;
  $("node-reflexive").textContent = (nat && nat.reflexive_address) || (node.candidates || [])[0] || "–";
  $("node-nat").textContent = nat ? nat.mapping + " — hole punching " + nat.hole_punching : "not measured yet";
  $("node-uptime").textContent = seconds(node.uptimeSec);
  $("node-bytes").textContent = bytes(node.bytesServed) + " / " + bytes(node.bytesDownloaded);
}

function renderChannels(state) {
  replace($("channel-list"), state.channels.map((name) =>
    el("li", { "data-channel": name }, el("span", {}, name),
      el("button", { class: "leave", onclick: () => post("leave", { name }) }, "Leave"))));
  if (!state.channels.length) $("channel-list").append(el("li", { class: "muted" }, "No channel joined."));
}

function renderPeers(state) {
  $("peer-count").textContent = "(" + state.peers.length + ")";
  replace($("peer-rows"), state.peers.map((p) =>
    el("tr", { "data-node-id": p.nodeId },
      el("td", {}, el("code", { title: p.nodeId }, short(p.nodeId))),
      el("td", {}, p.label || ""),
      el("td", {}, pathPill(p.path)),
      el("td", {}, p.address || ""),
      el("td", { class: "num" }, typeof p.rttMs === "number" ? p.rttMs.toFixed(1) + " ms" : "–"),
      el("td", { class: "num" }, bytes(p.bytesSent)),
      el("td", { class: "num" }, bytes(p.bytesReceived)),
      el("td", {}, (p.channels || []).join(", ")))));
  if (!state.peers.length) {
    $("peer-rows").append(el("tr", {}, el("td", { colspan: "8", class: "muted" }, "No peers connected.")));
  }
}

function bar(done, total, up) {
  const pct = total > 0 ? Math.min(100, (100 * done) / total) : 0;
  const fill = el("span", {});
  fill.style.width = pct.toFixed(1) + "%";
  return el("div", { class: "progress" }, el("div", { class: "bar" + (up ? " up" : "") }, fill),
    el("span", { class: "pct" }, pct.toFixed(1) + "% · " + bytes(done) + " of " + bytes(total)));
}

function renderTransfers(state) {
  const t = state.transfers;
  const rows = t.downloads.map((d) =>
    el("tr", { "data-sha1": d.sha1, "data-direction": "download", "data-bytes": String(d.bytes) },
      el("td", {}, el("span", { class: "pill" }, "down")),
      el("td", {}, el("code", { title: d.uri }, d.uri)),
      el("td", {}, bar(d.bytes, d.size, false)),
      el("td", { class: "num" }, rate(d.rate)),
      el("td", { class: "num" }, seconds(d.etaSec)),
      el("td", {}, d.providers.map(short).join(", ")),
      el("td", {}, d.paths.length ? d.paths.map(pathPill) : d.state),
      el("td", {}, el("button", { class: "cancel", "data-uri": d.uri, onclick: () => post("cancel", { uri: d.uri }) },
        "Cancel"))));
  for (const u of t.uploads) {
    rows.push(el("tr", { "data-sha1": u.sha1, "data-direction": "upload", "data-bytes": String(u.bytes) },
      el("td", {}, el("span", { class: "pill up" }, "up")),
      el("td", {}, el("code", { title: u.uri }, u.uri)),
      el("td", {}, bar(u.bytes, u.size, true)),
      el("td", { class: "num" }, rate(u.rate)),
      el("td", { class: "num" }, "–"),
      el("td", {}, short(u.peer) + (u.label ? " (" + u.label + ")" : "")),
      el("td", {}, pathPill(u.path)),
      el("td", {})));
  }
  replace($("transfer-rows"), rows);
  $("no-transfers").classList.toggle("hidden", rows.length > 0);
  replace($("recent-rows"), t.recent.slice(0, 8).map((r) =>
    el("tr", { "data-recent": r.sha1, "data-state": r.state },
      el("td", {}, el("span", { class: "pill" + (r.direction === "upload" ? " up" : "") },
        r.direction === "upload" ? "up" : "down")),
      el("td", {}, el("code", { title: r.uri }, r.uri)),
      el("td", { class: "num" }, bytes(r.bytes)),
      el("td", {}, r.state + (r.error ? ": " + r.error : "")),
      el("td", { class: "muted" }, r.endedAt ? new Date(r.endedAt * 1000).toLocaleTimeString() : ""))));
}

function renderStore(state) {
  const s = state.store;
  $("store-summary").textContent = s.files + " files · " + bytes(s.storedBytes) + " stored, " + bytes(s.linkedBytes) +
    " linked · partial downloads " + bytes(s.tempBytes) + (s.freeBytes != null ? " · " + bytes(s.freeBytes) + " free" : "");
  replace($("store-recent"), s.recent.map((f) =>
    el("tr", {}, el("td", {}, el("code", { title: f.uri }, f.uri)), el("td", { class: "num" }, bytes(f.size)),
      el("td", {}, f.kind))));
}

function renderRelay(state) {
  const relay = state.relay;
  $("relay").classList.toggle("hidden", !relay);
  if (!relay) return;
  replace($("relay-counters"), Object.entries(relay).flatMap(([key, value]) =>
    [el("dt", {}, key), el("dd", {}, key.endsWith("bytes") ? bytes(value) : String(value))]));
}

function render(state) {
  renderNode(state);
  renderChannels(state);
  renderPeers(state);
  renderTransfers(state);
  renderStore(state);
  renderRelay(state);
  $("updated").textContent = "updated " + new Date(state.now * 1000).toLocaleTimeString();
}

function connect() {
  const status = $("conn-status");
  const source = new EventSource("/ui/api/events");
  source.addEventListener("state", (event) => {
    status.textContent = "live";
    status.className = "status live";
    render(JSON.parse(event.data));
  });
  source.onerror = () => {
    status.textContent = "daemon not reachable";
    status.className = "status down";
  };
}

document.addEventListener("DOMContentLoaded", () => {
  $("join-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("join-name").value.trim();
    if (name) post("join", { name }).then(() => { $("join-name").value = ""; });
  });
  connect();
});
