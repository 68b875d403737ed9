// The postern inspector page: lists the exchanges the agent forwarded
// (GET /api/requests, newest first), shows one, and replays it
// (POST /api/requests/{id}/replay with a JSON content type). Every value
// shown comes from users' requests: it is set as text, never as HTML.
"use strict";

const state = { requests: [], selected: null };

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function headersText(h) {
  const lines = [];
  for (const [k, vs] of Object.entries(h || {})) for (const v of vs) lines.push(k + ": " + v);
  return lines.join("\n") || "(no headers)";
}

function bodyText(part) {
  if (!part.body_size) return "(no body)";
  let t = part.body_encoding === "base64" ? "(binary, base64) " + part.body : part.body;
  if (part.body_truncated) t += "\n… (" + part.body_size + " bytes in all, the first kept)";
  return t;
}

// rows keeps each exchange's row from one refresh to the next, keyed by
// id (with what it shows, in case the agent restarted and reused the
// id): the page refreshes every second, and a row replaced under the
// pointer would lose a click that began on it.
const rows = new Map();

function row(r) {
  const face = [r.time, r.method, r.path, r.status, r.duration_ms].join("\n");
  let e = rows.get(r.id);
  if (!e || e.face !== face) {
    const tr = el("tr");
    tr.dataset.id = r.id;
    tr.append(el("td", new Date(r.time).toLocaleTimeString()), el("td", r.method),
      el("td", r.path, "path"), el("td", String(r.status), "s" + String(r.status)[0]),
      el("td", r.duration_ms.toFixed(1) + " ms"));
    e = { tr, face };
    rows.set(r.id, e);
  }
  e.tr.classList.toggle("selected", state.selected === r.id);
  return e.tr;
}

// setText changes an element's text only when it differs, so that a
// refresh leaves text the user is selecting alone.
function setText(id, text) {
  const e = document.getElementById(id);
  if (e.textContent !== text) e.textContent = text;
}

function render() {
  const tbody = document.querySelector("#requests tbody");
  const listed = new Set(state.requests.map(r => r.id));
  for (const id of rows.keys()) if (!listed.has(id)) rows.delete(id);
  // Rows already in place stay where they are; new ones go in, gone
  // ones out.
  let at = tbody.firstChild;
  for (const tr of state.requests.map(row)) {
    if (tr === at) at = at.nextSibling;
    else tbody.insertBefore(tr, at);
  }
  while (at) {
    const next = at.nextSibling;
    at.remove();
    at = next;
  }
  document.getElementById("empty").hidden = state.requests.length > 0;
  const r = state.requests.find(x => x.id === state.selected);
  document.getElementById("detail").hidden = !r;
  if (!r) return;
  setText("detail-title", "#" + r.id + " " + r.method + " " + r.path + " → " + r.status);
  let note = r.host + ", " + r.duration_ms.toFixed(1) + " ms";
  if (r.replay_of) note += ", replay of #" + r.replay_of;
  if (r.error) note += ", " + r.error;
  setText("detail-note", note);
  setText("req-headers", headersText(r.request.headers));
  setText("req-body", bodyText(r.request));
  setText("resp-headers", headersText(r.response.headers));
  setText("resp-body", bodyText(r.response));
}

// refreshes counts the refreshes begun, shown the latest shown: an
// answer that comes after a later one's (a replay's refresh beside the
// periodic one) is older than what the page shows, and is dropped.
let refreshes = 0, shown = 0;

async function refresh() {
  const mine = ++refreshes;
  let requests, status;
  try {
    const resp = await fetch("/api/requests", { cache: "no-store" });
    if (!resp.ok) throw new Error(resp.status + " " + (await resp.text()));
    requests = (await resp.json()).requests;
    status = requests.length + " requests";
  } catch (e) {
    status = "cannot reach the agent: " + e.message;
  }
  if (mine < shown) return;
  shown = mine;
  if (requests) state.requests = requests;
  document.getElementById("status").textContent = status;
  render();
}

async function replay() {
  const status = document.getElementById("status");
  const resp = await fetch("/api/requests/" + encodeURIComponent(state.selected) + "/replay",
    { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
  if (!resp.ok) {
    status.textContent = "replay refused: " + (await resp.text());
    return;
  }
  state.selected = (await resp.json()).id;
  await refresh();
}

document.querySelector("#requests tbody").addEventListener("click", e => {
  const tr = e.target.closest("tr");
  if (!tr) return;
  state.selected = tr.dataset.id;
  render();
});
document.getElementById("replay").addEventListener("click", replay);
// The list refreshes a second after the last refresh ended, so that a
// slow agent never has refreshes piling up.
(async function poll() {
  await refresh();
  setTimeout(poll, 1000);
})();
