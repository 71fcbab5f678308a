"use strict";
(() => {
  const KEY = "claudemesh-gateway-token";
  const $ = (id) => document.getElementById(id);
  let timer = null;

  const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  const table = (el, head, rows, empty) => {
    el.innerHTML = "<tr>" + head.map((h) => `<th>${esc(h)}</th>`).join("") + "</tr>" +
      (rows.length ? rows.join("") : `<tr><td class="empty" colspan="${head.length}">${esc(empty)}</td></tr>`);
  };
  const state = (s) => `<span class="state ${esc(s)}">${esc(s)}</span>`;

  async function api(path, opts = {}) {
    const token = sessionStorage.getItem(KEY);
    const res = await fetch(path, {...opts, headers: {...(opts.headers || {}), Authorization: `Bearer ${token}`,
      "Content-Type": "application/json"}});
    if (res.status === 401 || res.status === 403) {
      const body = await res.json().catch(() => ({}));
      logout(body.error || `HTTP ${res.status}`);
      throw new Error("unauthorized");
    }
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    return res.json();
  }

  function render(o) {
    const ready = $("ready");
    ready.textContent = o.ready_problems.length ? `not ready: ${o.ready_problems.join("; ")}` : "ready";
    ready.className = o.ready_problems.length ? "bad" : "ok";
    table($("meshes"), ["mesh", "state", "detail", "topics"], Object.entries(o.meshes).map(([n, m]) =>
      `<tr data-name="${esc(n)}"><td>${esc(n)}</td><td>${state(m.state)}</td><td>${esc(m.detail)}</td><td>${
        esc(Object.entries(m.topics || {}).map(([t, p]) => `${t} (${p.last_poll_age_s ?? "never"}s)`).join(", "))}</td></tr>`), "no meshes");
    table($("gateways"), ["gateway", "state", "detail"], Object.entries(o.gateways).map(([n, g]) =>
      `<tr data-name="${esc(n)}"><td>${esc(n)}</td><td>${state(g.state)}</td><td>${esc(g.detail)}</td></tr>`), "no gateways");
    table($("routes"), ["route", "from", "to", "state"], o.routes.map((r) =>
      `<tr data-route="${esc(r.name)}"><td>${esc(r.name)}</td><td>${esc(r.source || `${r.mesh || ""} ${r.topic ? "#" + r.topic : ""} ${(r.tags || []).map((t) => "tag:" + t).join(" ")}`)}</td><td>${
        esc((r.binds || r.destinations || []).map((b) => typeof b === "string" ? b : `${b.gateway}/${b.chat}`).join(", "))}</td><td class="route-state">${
        Object.entries(r.states || {}).map(([n, s]) => `${esc(n)}: ${state(s)}`).join("<br>")}</td></tr>`), "no routes");
    table($("queue"), ["destination", "queued", "oldest (s)"], o.queue.map((q) =>
      `<tr><td>${esc(q.lane)}</td><td>${esc(q.depth)}</td><td>${esc(q.oldest_age_s)}</td></tr>`), "nothing queued");
    $("dlq-count").textContent = o.dead_letter_count;
    table($("dlq"), ["id", "to", "reason", ""], o.dead_letters.map((d) =>
      `<tr data-dlq="${esc(d.id)}"><td>${esc(d.id)}</td><td>${esc(d.to)}</td><td>${esc(d.reason)}</td><td>` +
      `<button class="dlq-retry" data-id="${esc(d.id)}">Retry</button> <button class="dlq-drop" data-id="${esc(d.id)}">Drop</button></td></tr>`),
      "no dead letters");
    table($("recent"), ["when", "what", "where", "detail"], o.recent.map((e) =>
      `<tr><td>${esc((e.at || "").slice(11, 19))}</td><td class="kind-${esc(e.kind)}">${esc(e.kind)}</td><td>${esc(e.to || e.from || "")}</td><td>${
        esc(e.error || e.reason || (e.latency_ms !== undefined ? e.latency_ms + " ms" : ""))}</td></tr>`), "nothing yet");
  }

  async function refresh() {
    try { render(await api("/-/api/overview")); } catch (e) { if (e.message !== "unauthorized") $("ready").textContent = `refresh failed: ${e.message}`; }
  }

  function start() {
    $("login").hidden = true; $("app").hidden = false; $("logout").hidden = false;
    refresh();
    if (!timer) timer = setInterval(refresh, 2000);
  }

  function logout(reason) {
    sessionStorage.removeItem(KEY);
    if (timer) { clearInterval(timer); timer = null; }
    $("app").hidden = true; $("logout").hidden = true; $("login").hidden = false;
    $("error").textContent = reason || "";
  }

  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY, $("token").value.trim());
    $("token").value = "";
    start();
  });
  $("logout").addEventListener("click", () => logout(""));
  document.addEventListener("click", async (ev) => {
    const t = ev.target;
    if (!(t instanceof HTMLButtonElement)) return;
    let action = null, ids = null;
    if (t.classList.contains("dlq-retry")) { action = "retry"; ids = [Number(t.dataset.id)]; }
    else if (t.classList.contains("dlq-drop")) { action = "drop"; ids = [Number(t.dataset.id)]; }
    else if (t.id === "dlq-retry-all") { action = "retry"; }
    if (!action) return;
    t.disabled = true;
    try { await api(`/-/api/dlq/${action}`, {method: "POST", body: JSON.stringify(ids ? {ids} : {})}); } finally { refresh(); }
  });

  if (sessionStorage.getItem(KEY)) start(); else logout("");
})();
