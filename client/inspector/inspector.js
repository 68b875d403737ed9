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

function render() {
  const tbody = document.querySelector("#requests tbody");
  tbody.replaceChildren();
  for (const r of state.requests) {
    const tr = el("tr");
    tr.dataset.id = r.id;
    if (state.selected === r.id) tr.classList.add("selected");
    tr.append(el("td", new Date(r.time).toLocaleTimeString()), el("td", r.method),
      el("td", r.path, "path"), el("td", String(r.status), "s" + String(r.status)[0]),
      el("td", r.duration_ms.toFixed(1) + " ms"));
    tr.addEventListener("click", () => { state.selected = r.id; render(); });
    tbody.append(tr);
  }
  document.getElementById("empty").hidden = state.requests.length > 0;
  const r = state.requests.find(x => x.id === state.selected);
  document.getElementById("detail").hidden = !r;
  if (!r) return;
  document.getElementById("detail-title").textContent = "#" + r.id + " " + r.method + " " + r.path + " → " + r.status;
  let note = r.host + ", " + r.duration_ms.toFixed(1) + " ms";
  if (r.replay_of) note += ", replay of #" + r.replay_of;
  if (r.error) note += ", " + r.error;
  document.getElementById("detail-note").textContent = note;
  document.getElementById("req-headers").textContent = headersText(r.request.headers);
  document.getElementById("req-body").textContent = bodyText(r.request);
  document.getElementById("resp-headers").textContent = headersText(r.response.headers);
  document.getElementById("resp-body").textContent = bodyText(r.response);
}

async function refresh() {
  try {
    const resp = await fetch("/api/requests", { cache: "no-store" });
    if (!resp.ok) throw new Error(resp.status + " " + (await resp.text()));
    state.requests = (await resp.json()).requests;
    document.getElementById("status").textContent = state.requests.length + " requests";
  } catch (e) {
    document.getElementById("status").textContent = "cannot reach the agent: " + e.message;
  }
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

document.getElementById("replay").addEventListener("click", replay);
refresh();
setInterval(refresh, 1000);
