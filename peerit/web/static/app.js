// peer-it's page. Plain JavaScript, no build step: reads the daemon's JSON API and follows its
// event stream (one EventSource for the whole page; no polling). Every request that changes
// something carries the session's CSRF token in X-Peerit-CSRF.
"use strict";

const HISTORY_SECONDS = 300;           // rate chart: the last five minutes of ticks
const state = {
  csrf: null, daemon: null, transfers: new Map(), rows: new Map(), selected: null,
  detailMap: null, history: new Map(), source: null, removing: null,
};
const $ = (id) => document.getElementById(id);

// -- units ------------------------------------------------------------------------------
const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
function size(n) {
  if (!(n >= 0)) return "–";
  let i = 0;
  while (n >= 1024 && i < UNITS.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n.toFixed(0) : n < 10 ? n.toFixed(2) : n < 100 ? n.toFixed(1) : n.toFixed(0))
    + " " + UNITS[i];
}
function rate(r) { return r >= 1 ? size(r) + "/s" : "–"; }
function eta(s, t) {
  if (t.done >= t.size && t.size > 0) return "done";
  if (!(s >= 0)) return "–";
  s = Math.round(s);
  if (s >= 86400) return Math.floor(s / 86400) + "d " + Math.floor(s % 86400 / 3600) + "h";
  if (s >= 3600) return Math.floor(s / 3600) + "h " + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
  if (s >= 60) return Math.floor(s / 60) + "m " + String(s % 60).padStart(2, "0") + "s";
  return s + "s";
}
function percent(t) { return t.size ? Math.min(100, 100 * t.done / t.size) : 100; }
function stateClass(s) { return s.startsWith("waiting") ? "waiting" : s; }

// -- talking to the daemon ----------------------------------------------------------------
async function api(method, path, body, contentType) {
  const headers = {};
  if (method !== "GET") headers["X-Peerit-CSRF"] = state.csrf;
  if (body !== undefined && contentType) headers["Content-Type"] = contentType;
  const response = await fetch("/api/v1/" + path, {
    method, headers, body, credentials: "same-origin", cache: "no-store",
  });
  let value = null;
  try { value = await response.json(); } catch (e) { value = null; }
  if (!response.ok) {
    const error = new Error((value && value.error) || response.statusText);
    error.status = response.status;
    throw error;
  }
  return value;
}

let toastTimer = null;
function toast(text, bad) {
  const el = $("toast");
  el.textContent = text;
  el.className = "toast" + (bad ? " bad" : "");
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, bad ? 8000 : 4000);
}
async function act(label, work) {
  try { const value = await work(); if (label) toast(label); return value; }
  catch (e) { toast(e.message, true); if (e.status === 401) signedOut(); return null; }
}

// -- events -------------------------------------------------------------------------------
function connect() {
  if (state.source) state.source.close();
  const url = "/api/v1/events" + (state.selected ? "?detail=" + state.selected : "");
  const source = new EventSource(url);
  state.source = source;
  source.addEventListener("snapshot", (e) => {
    const data = JSON.parse(e.data);
    renderDaemon(data.daemon);
    snapshot(data.transfers);
    renderCount();
    if (!performance.getEntriesByName("peerit-first-render").length) performance.mark("peerit-first-render");
  });
  source.addEventListener("update", (e) => {
    const now = Date.now() / 1000;
    for (const event of JSON.parse(e.data)) {
      if (event.kind === "daemon" && event.data) renderDaemon(event.data);
      else if (event.kind === "transfer") {
        if (event.data) { upsert(event.data); sample(event.data, now); } else drop(event.id);
      }
    }
    renderCount();
    if (state.selected) renderChart();
  });
  source.addEventListener("detail", (e) => renderDetail(JSON.parse(e.data)));
  source.onopen = () => { setLive(true); };
  source.onerror = () => {
    setLive(false);
    // A closed stream may mean the session ended: check, and show the sign-in note if so.
    fetch("/api/v1/session", { cache: "no-store" }).then((r) => { if (r.status === 401) signedOut(); });
  };
}
function setLive(on) {
  const el = $("live");
  el.textContent = on ? "live" : "reconnecting…";
  el.className = "live " + (on ? "on" : "off");
}
function sample(t, now) {
  let h = state.history.get(t.info_hash);
  if (!h) { h = []; state.history.set(t.info_hash, h); }
  h.push([now, t.down_rate, t.up_rate]);
  while (h.length && h[0][0] < now - HISTORY_SECONDS) h.shift();
}

// -- the daemon panel ---------------------------------------------------------------------
function renderDaemon(d) {
  state.daemon = d;
  $("d-peer").textContent = d.peer_id.slice(0, 16);
  $("d-peer").title = d.peer_id;
  $("d-trackers").textContent = d.trackers.length
    ? `${d.trackers_connected.length} of ${d.trackers.length} connected` : "none";
  $("d-trackers").title = d.trackers.join("\n");
  $("d-public").textContent = d.public_address || "unknown yet";
  $("d-nat").textContent = d.nat_type || "not checked";
  $("d-port").textContent = `TCP ${d.listen_port}` + (d.udp_port ? `, UDP ${d.udp_port}` : "");
  $("d-down").textContent = rate(d.down_rate);
  $("d-up").textContent = rate(d.up_rate);
}

// -- the transfer table -------------------------------------------------------------------
function cell(tr, cls) { const td = document.createElement("td"); if (cls) td.className = cls; tr.appendChild(td); return td; }
function makeRow(t) {
  const tr = document.createElement("tr");
  tr.dataset.id = t.info_hash;
  const name = cell(tr, "name");
  const button = document.createElement("button");
  button.type = "button"; button.className = "name-button";
  button.addEventListener("click", () => select(t.info_hash));
  name.appendChild(button);
  const error = document.createElement("span"); error.className = "row-error"; error.hidden = true;
  name.appendChild(error);
  const sizeTd = cell(tr, "num hide-phone");
  const stateTd = cell(tr); const badge = document.createElement("span"); stateTd.appendChild(badge);
  const progressTd = cell(tr, "progress");
  const bar = document.createElement("div"); bar.className = "bar";
  const progress = document.createElement("progress"); progress.max = 100;
  const pct = document.createElement("span"); pct.className = "pct";
  bar.append(progress, pct); progressTd.appendChild(bar);
  const down = cell(tr, "num"), up = cell(tr, "num"), etaTd = cell(tr, "num hide-phone"),
    peers = cell(tr, "num hide-phone"), actions = cell(tr);
  const box = document.createElement("div"); box.className = "row-actions"; actions.appendChild(box);
  const toggle = document.createElement("button"); toggle.type = "button"; toggle.className = "small";
  toggle.addEventListener("click", () => pauseOrResume(tr.dataset.id));
  const remove = document.createElement("button"); remove.type = "button"; remove.className = "small danger";
  remove.textContent = "Remove";
  remove.addEventListener("click", () => askRemove(tr.dataset.id));
  box.append(toggle, remove);
  return { tr, button, error, sizeTd, badge, progress, pct, down, up, etaTd, peers, toggle, remove };
}
function fillRow(row, t) {
  row.button.textContent = t.name;
  row.button.title = t.path;
  row.button.setAttribute("aria-label", `${t.name}: show details`);
  row.error.textContent = t.error; row.error.hidden = !t.error;
  row.sizeTd.textContent = size(t.size);
  row.badge.textContent = t.state; row.badge.className = "state " + stateClass(t.state);
  const p = percent(t);
  row.progress.value = p;
  row.progress.classList.toggle("complete", p >= 100);
  row.progress.setAttribute("aria-label", `${t.name}: ${p.toFixed(1)}% verified`);
  row.pct.textContent = p.toFixed(p >= 100 || p === 0 ? 0 : 1) + "%";
  row.down.textContent = rate(t.down_rate);
  row.up.textContent = rate(t.up_rate);
  row.etaTd.textContent = eta(t.eta, t);
  row.peers.textContent = t.peers;
  row.peers.title = `${t.peers} connected, ${t.known_peers} known`;
  const paused = t.state === "paused" || t.state === "error";
  row.toggle.textContent = paused ? "Resume" : "Pause";
  row.toggle.setAttribute("aria-label", `${paused ? "Resume" : "Pause"} ${t.name}`);
  row.remove.setAttribute("aria-label", `Remove ${t.name}`);
}
function upsert(t) {
  const known = state.transfers.has(t.info_hash);
  state.transfers.set(t.info_hash, t);
  let row = state.rows.get(t.info_hash);
  if (!row) { row = makeRow(t); state.rows.set(t.info_hash, row); }
  fillRow(row, t);
  if (!known) placeRow(row, t);
  if (state.selected === t.info_hash) renderDetailSummary(t);
}
function snapshot(transfers) {
  // The whole table in one go (a thousand rows: one layout, not a thousand).
  const seen = new Set(transfers.map((t) => t.info_hash));
  for (const id of [...state.transfers.keys()]) if (!seen.has(id)) drop(id);
  const fragment = document.createDocumentFragment();
  for (const t of transfers) {  // the daemon sends them sorted by name
    state.transfers.set(t.info_hash, t);
    let row = state.rows.get(t.info_hash);
    if (!row) { row = makeRow(t); state.rows.set(t.info_hash, row); }
    fillRow(row, t);
    fragment.appendChild(row.tr);
    if (state.selected === t.info_hash) renderDetailSummary(t);
  }
  document.querySelector("#transfers tbody").replaceChildren(fragment);
}
function placeRow(row, t) {
  // Rows stay sorted by name, as peerit-ctl list shows them.
  const body = document.querySelector("#transfers tbody");
  let before = null;
  for (const other of body.children) {
    const o = state.transfers.get(other.dataset.id);
    if (o && o.name.localeCompare(t.name) > 0) { before = other; break; }
  }
  body.insertBefore(row.tr, before);
}
function drop(id) {
  state.transfers.delete(id);
  const row = state.rows.get(id);
  if (row) { row.tr.remove(); state.rows.delete(id); }
  state.history.delete(id);
  if (state.selected === id) closeDetail();
}
function renderCount() {
  const n = state.transfers.size;
  $("count").textContent = n ? `(${n})` : "";
  $("empty").hidden = n > 0;
  $("transfers").hidden = n === 0;
}

// -- actions --------------------------------------------------------------------------------
async function pauseOrResume(id) {
  const t = state.transfers.get(id);
  if (!t) return;
  const resume = t.state === "paused" || t.state === "error";
  await act(`${resume ? "resumed" : "paused"} ${t.name}`,
    () => api("POST", `transfers/${id}/${resume ? "resume" : "pause"}`));
}
function askRemove(id) {
  const t = state.transfers.get(id);
  if (!t) return;
  state.removing = id;
  $("remove-title").textContent = `Remove ${t.name}?`;
  $("remove-text").textContent = t.role === "seed"
    ? `Stop sharing ${t.path}.` : `Stop downloading and forget ${t.path}.`;
  $("remove-delete").checked = false;
  $("remove-warning").hidden = true;
  $("remove-dialog").showModal();
  $("remove-cancel").focus();
}
async function confirmRemove() {
  const id = state.removing;
  const t = state.transfers.get(id);
  const deleteData = $("remove-delete").checked;
  $("remove-dialog").close();
  if (!t) return;
  await act(`removed ${t.name}` + (deleteData ? " and deleted its files" : ""),
    () => api("POST", `transfers/${id}/remove`, JSON.stringify({ delete_data: deleteData }),
      "application/json"));
}
async function addFiles(files) {
  for (const file of files) {
    if (!file.name.endsWith(".p2p")) { toast(`${file.name} is not a .p2p file`, true); continue; }
    const answer = await act(null, () => api("POST", "transfers", file, "application/x-peerit-p2p"));
    if (answer) toast(`downloading ${answer.name} to ${answer.path}`);
  }
}
async function share(path) {
  toast(`hashing ${path}…`);
  const answer = await act(null, () => api("POST", "shares", JSON.stringify({ path }), "application/json"));
  if (answer) toast(`sharing ${answer.name} in place`);
}

// -- the detail view ------------------------------------------------------------------------
function select(id) {
  state.selected = id;
  state.peersKey = state.filesOf = null;
  for (const [other, row] of state.rows) row.tr.classList.toggle("selected", other === id);
  const t = state.transfers.get(id);
  $("detail").hidden = false;
  if (t) renderDetailSummary(t);
  $("detail-p2p").href = `/api/v1/transfers/${id}/p2p`;
  $("detail-p2p").setAttribute("download", (t ? t.name : id) + ".p2p");
  renderChart();
  connect();  // the stream now also carries this transfer's detail
  // No smooth scrolling: an animation repaints the whole page for every frame of it.
  $("detail").scrollIntoView({ block: "nearest" });
  $("detail-close").focus({ preventScroll: true });
}
function closeDetail() {
  const was = state.selected;
  state.selected = null;
  $("detail").hidden = true;
  for (const row of state.rows.values()) row.tr.classList.remove("selected");
  if (was) { connect(); const row = state.rows.get(was); if (row) row.button.focus(); }
}
function renderDetailSummary(t) {
  $("detail-title").textContent = t.name;
  $("detail-hash").textContent = `${t.info_hash} · ${t.role === "seed" ? "shared from" : "saved to"} ${t.path}`;
  $("detail-error").textContent = t.error; $("detail-error").hidden = !t.error;
  const paused = t.state === "paused" || t.state === "error";
  $("detail-pause").textContent = paused ? "Resume" : "Pause";
  $("piece-legend").textContent = `${t.pieces_done} of ${t.pieces} verified` +
    (t.hash_failures ? `, ${t.hash_failures} failed their hash` : "");
}
function renderDetail(detail) {
  if (!detail.transfer) { closeDetail(); return; }
  if (detail.transfer.info_hash !== state.selected) return;
  renderDetailSummary(detail.transfer);
  state.detailMap = detail.piece_map;
  drawPieces(detail.piece_map);
  if (detail.rate_history) {
    // The daemon's own samples (kept while anyone watched) replace what this page saw.
    const now = Date.now() / 1000;
    state.history.set(state.selected, detail.rate_history.map(([ago, d, u]) => [now - ago, d, u]));
    renderChart();
  }
  renderPeers(detail.peers);
  if (detail.files && state.filesOf !== detail.transfer.info_hash) {  // sent once
    state.filesOf = detail.transfer.info_hash;
    renderFiles(detail);
  }
}
function renderPeers(peers) {
  const key = JSON.stringify(peers);
  if (key === state.peersKey) return;  // unchanged since the last tick: no DOM work
  state.peersKey = key;
  const body = document.querySelector("#peers tbody");
  body.replaceChildren();
  for (const p of peers) {
    const tr = document.createElement("tr");
    const add = (text, cls, title) => { const td = cell(tr, cls); td.textContent = text; if (title) td.title = title; return td; };
    add(p.peer_id.slice(0, 12), "mono", p.peer_id);
    const path = pathOf(p);
    const td = cell(tr); const badge = document.createElement("span");
    badge.className = "path " + path.cls; badge.textContent = path.label; badge.title = path.why;
    td.appendChild(badge);
    add(p.address, "mono");
    add(Math.round(p.connect_seconds * 1000) + " ms", "num", "time to connect and prove the peer's key");
    add(rate(p.download_rate), "num", size(p.downloaded) + " received");
    add(rate(p.upload_rate), "num", size(p.uploaded) + " sent");
    add((p.choking_us ? "choking us" : "sends to us") + " · " + (p.choked_by_us ? "we choke" : "we send"));
    body.appendChild(tr);
  }
  $("peer-count").textContent = `(${peers.length})`;
  $("peers").hidden = peers.length === 0;
  $("no-peers").hidden = peers.length > 0;
}
function renderFiles(detail) {
  const list = $("files");
  list.replaceChildren();
  for (const f of detail.files) {
    const li = document.createElement("li");
    const a = document.createElement("span"); a.textContent = f.path;
    const b = document.createElement("span"); b.className = "muted"; b.textContent = size(f.size);
    li.append(a, b); list.appendChild(li);
  }
  $("file-count").textContent = `(${detail.file_count})` +
    (detail.file_count > detail.files.length ? `, first ${detail.files.length} shown` : "");
}
function isPrivate(address) {
  const host = address.replace(/^\[|\](:\d+)?$/g, "").replace(/:\d+$/, "");
  return /^(10\.|127\.|192\.168\.|169\.254\.|172\.(1[6-9]|2\d|3[01])\.|::1$|fe80:|f[cd])/i.test(host);
}
function pathOf(p) {
  if (p.path === "quic") return { cls: "quic", label: "punched QUIC", why: "UDP hole punched through both NATs, QUIC on top" };
  if (p.path === "relay") return { cls: "relay", label: "relay", why: "through the tracker's relay: no direct path worked" };
  if (p.path === "tcp" && isPrivate(p.address)) return { cls: "lan", label: "LAN", why: "direct TCP on the local network" };
  if (p.path === "tcp") return { cls: "tcp", label: "TCP", why: "direct TCP over the Internet" };
  return { cls: "", label: p.path, why: "" };
}
function cssVar(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }
function drawPieces(map) {
  const canvas = $("piece-map");
  const width = canvas.clientWidth || 600, height = canvas.clientHeight || 60;
  const ratio = window.devicePixelRatio || 1;
  const w0 = Math.round(width * ratio), h0 = Math.round(height * ratio);
  if (canvas.width !== w0 || canvas.height !== h0) { canvas.width = w0; canvas.height = h0; }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  if (!state.colors) {  // read once per theme: getComputedStyle makes the browser restyle
    state.colors = { "0": cssVar("--missing"), "1": cssVar("--flight"), "2": cssVar("--verified") };
  }
  const colors = state.colors;
  ctx.clearRect(0, 0, width, height);
  const n = map.length;
  if (!n) return;
  const rows = n > 256 ? 4 : n > 64 ? 2 : 1, perRow = Math.ceil(n / rows);
  const w = width / perRow, h = height / rows;
  for (let i = 0; i < n; i++) {
    ctx.fillStyle = colors[map[i]];
    ctx.fillRect((i % perRow) * w, Math.floor(i / perRow) * h, Math.max(1, w - (w > 4 ? 1 : 0)), h - 1);
  }
  const counts = { "0": 0, "1": 0, "2": 0 };
  for (const c of map) counts[c]++;
  canvas.setAttribute("aria-label", `Piece map: ${counts["2"]} cells verified, ${counts["1"]} in flight, ${counts["0"]} missing`);
}
function renderChart() {
  const svg = $("rate-chart");
  const h = state.history.get(state.selected) || [];
  svg.replaceChildren();
  const now = Date.now() / 1000;
  let peak = 1;
  for (const [, d, u] of h) peak = Math.max(peak, d, u);
  // The x axis spans what there is, from one minute up to HISTORY_SECONDS.
  const span = Math.min(HISTORY_SECONDS, Math.max(60, h.length ? now - h[0][0] : 0));
  for (const [index, cls] of [[1, "down"], [2, "up"]]) {
    const points = h.filter((s) => now - s[0] <= span).map((s) =>
      `${(300 - (now - s[0]) * 300 / span).toFixed(1)},${(78 - 74 * s[index] / peak).toFixed(1)}`);
    if (points.length < 2) continue;
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("class", cls); line.setAttribute("points", points.join(" "));
    line.setAttribute("vector-effect", "non-scaling-stroke");
    svg.appendChild(line);
  }
  $("rate-peak").textContent = h.length > 1 ? `peak ${rate(peak)} over the last ${Math.round(span / 60)} min`
    : "no transfer activity in the last minutes";
}

// -- setup ----------------------------------------------------------------------------------
function signedOut() {
  $("app").hidden = true;
  $("signin").hidden = false;
  for (const id of ["add-button", "share-button"]) $(id).disabled = true;
  if (state.source) { state.source.close(); state.source = null; }
}
function theme() {
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
    state.colors = null;
    if (state.selected && state.detailMap) drawPieces(state.detailMap);
  });
  const saved = localStorage.getItem("peerit-theme");
  if (saved) document.documentElement.dataset.theme = saved;
  $("theme-button").addEventListener("click", () => {
    const dark = document.documentElement.dataset.theme === "dark" ||
      (!document.documentElement.dataset.theme && matchMedia("(prefers-color-scheme: dark)").matches);
    const next = dark ? "light" : "dark";
    document.documentElement.dataset.theme = next;
    localStorage.setItem("peerit-theme", next);
    state.colors = null;
    if (state.selected && state.detailMap) drawPieces(state.detailMap);
  });
}
function wire() {
  $("add-button").addEventListener("click", () => $("p2p-input").click());
  $("p2p-input").addEventListener("change", (e) => { addFiles([...e.target.files]); e.target.value = ""; });
  $("share-button").addEventListener("click", () => { $("share-path").value = ""; $("share-dialog").showModal(); });
  $("share-cancel").addEventListener("click", () => $("share-dialog").close());
  $("share-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const path = $("share-path").value.trim();
    $("share-dialog").close();
    if (path) share(path);
  });
  $("remove-cancel").addEventListener("click", () => $("remove-dialog").close());
  $("remove-delete").addEventListener("change", (e) => { $("remove-warning").hidden = !e.target.checked; });
  $("remove-form").addEventListener("submit", (e) => { e.preventDefault(); confirmRemove(); });
  $("detail-close").addEventListener("click", closeDetail);
  $("detail-pause").addEventListener("click", () => pauseOrResume(state.selected));
  $("detail-remove").addEventListener("click", () => askRemove(state.selected));
  $("detail-copy-hash").addEventListener("click", async () => {
    try { await navigator.clipboard.writeText(state.selected); toast("info-hash copied"); }
    catch (e) { toast("copying needs clipboard permission; the info-hash is shown above", true); }
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && state.selected && !document.querySelector("dialog[open]")) closeDetail();
  });
  // Drop a .p2p anywhere on the page.
  let depth = 0;
  document.addEventListener("dragenter", (e) => { e.preventDefault(); depth++; document.body.classList.add("dragging"); });
  document.addEventListener("dragleave", () => { if (--depth <= 0) { depth = 0; document.body.classList.remove("dragging"); } });
  document.addEventListener("dragover", (e) => e.preventDefault());
  document.addEventListener("drop", (e) => {
    e.preventDefault(); depth = 0; document.body.classList.remove("dragging");
    if (state.csrf && e.dataTransfer) addFiles([...e.dataTransfer.files]);
  });
}
async function start() {
  theme();
  wire();
  const response = await fetch("/api/v1/session", { cache: "no-store" });
  if (!response.ok) { signedOut(); return; }
  state.csrf = (await response.json()).csrf;
  $("signin").hidden = true;
  $("app").hidden = false;
  for (const id of ["add-button", "share-button"]) $(id).disabled = false;
  renderCount();
  connect();
}
document.addEventListener("DOMContentLoaded", start);
