"use strict";
(() => {
  const KEY = "claudemesh-gateway-token";
  const LIVE_MAX = 100;
  const $ = (id) => document.getElementById(id);
  let timer = null;
  let live = null; // AbortController of the live stream
  let livePaused = false;

  const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  const table = (el, head, rows, empty) => {
    el.innerHTML = "<tr>" + head.map((h) => `<th scope="col">${esc(h)}</th>`).join("") + "</tr>" +
      (rows.length ? rows.join("") : `<tr><td class="empty" colspan="${head.length}">${esc(empty)}</td></tr>`);
  };
  const state = (s) => `<span class="state ${esc(s)}">${esc(s)}</span>`;
  const when = (ts) => ts ? new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 23) : "";
  const clock = (ts) => ts ? new Date(ts * 1000).toISOString().slice(11, 19) : "";
  const traceButton = (id, label) => id ? `<button class="trace-open" data-id="${esc(id)}" aria-label="Trace of ${esc(id)}">${esc(label || "trace")}</button>` : "";

  async function api(path, opts = {}) {
    const token = sessionStorage.getItem(KEY);
    const res = await fetch(path, {...opts, headers: {...(opts.headers || {}), Authorization: `Bearer ${token}`,
      "Content-Type": "application/json"}});
    if (res.status === 401 || res.status === 403) {
      const body = await res.json().catch(() => ({}));
      logout(body.error || `HTTP ${res.status}`);
      throw new Error("unauthorized");
    }
    if (!res.ok) {
      const body = await res.json().catch(() => ({}));
      const err = new Error(body.error || (body.errors || []).join("; ") || `HTTP ${res.status}`);
      err.status = res.status;
      err.body = body;
      throw err;
    }
    return res.json();
  }

  // -- charts: per-minute bars of the last hour, drawn as SVG from /-/api/overview's throughput ----------
  const sum = (a) => a.reduce((x, y) => x + y, 0);
  const add = (a, b) => a.map((v, i) => v + (b[i] || 0));

  function chart(name, c, inbound) {
    const out = c.delivered, errs = add(c.failed, c.dead);
    const inn = c.received, drop = c.dropped;
    const n = out.length, W = 600, H = 48;
    const top = Math.max(1, ...out.map((v, i) => v + errs[i]), ...(inbound ? inn.map((v, i) => v + drop[i]) : [0]));
    const slot = W / n, bw = inbound ? slot * 0.45 : slot * 0.8;
    let bars = "";
    for (let i = 0; i < n; i++) {
      const x = i * slot;
      const hd = out[i] / top * (H - 2), he = errs[i] / top * (H - 2);
      if (out[i]) bars += `<rect class="bar-delivered" x="${x.toFixed(1)}" y="${(H - hd).toFixed(1)}" width="${bw.toFixed(1)}" height="${hd.toFixed(1)}"></rect>`;
      if (errs[i]) bars += `<rect class="bar-errors" x="${x.toFixed(1)}" y="${(H - hd - he).toFixed(1)}" width="${bw.toFixed(1)}" height="${he.toFixed(1)}"></rect>`;
      if (inbound) {
        const hr = inn[i] / top * (H - 2), hx = drop[i] / top * (H - 2), x2 = x + bw;
        if (inn[i]) bars += `<rect class="bar-received" x="${x2.toFixed(1)}" y="${(H - hr).toFixed(1)}" width="${bw.toFixed(1)}" height="${hr.toFixed(1)}"></rect>`;
        if (drop[i]) bars += `<rect class="bar-dropped" x="${x2.toFixed(1)}" y="${(H - hr - hx).toFixed(1)}" width="${bw.toFixed(1)}" height="${hx.toFixed(1)}"></rect>`;
      }
    }
    const d = sum(out), e = sum(errs), rate = d + e ? Math.round(e / (d + e) * 1000) / 10 : 0;
    const inText = inbound ? `, ${sum(inn)} received, ${sum(drop)} dropped` : "";
    const label = `${name}: ${d} delivered, ${e} failed (${rate}% errors)${inText} in the last hour`;
    return `<div class="chart" data-chart="${esc(name)}"><div class="title"><span>${esc(name)}</span>` +
      `<span class="rate${rate >= 5 ? " bad" : ""}">${d} out · ${rate}% err${inbound ? ` · ${sum(inn)} in` : ""}</span></div>` +
      `<svg viewBox="0 0 ${W} ${H}" preserveAspectRatio="none" role="img" aria-label="${esc(label)}"><title>${esc(label)}</title>` +
      `<line class="axis" x1="0" y1="${H - 0.5}" x2="${W}" y2="${H - 0.5}"></line>${bars}</svg></div>`;
  }

  function charts(el, series, inbound, empty) {
    const names = Object.keys(series || {});
    el.innerHTML = names.length ? names.map((n) => chart(n, series[n], inbound)).join("") : `<p class="empty">${esc(empty)}</p>`;
  }

  // -- overview -------------------------------------------------------------------------------------------
  function render(o) {
    const ready = $("ready");
    ready.textContent = o.ready_problems.length ? `not ready: ${o.ready_problems.join("; ")}` : "ready";
    ready.className = o.ready_problems.length ? "bad" : "ok";
    const tp = o.throughput || {routes: {}, gateways: {}};
    charts($("chart-routes"), tp.routes, false, "no traffic on any route in the last hour");
    charts($("chart-gateways"), tp.gateways, true, "no traffic through any gateway in the last hour");
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
      `<tr data-lane="${esc(q.lane)}"><td>${esc(q.lane)}</td><td>${esc(q.depth)}</td><td>${esc(q.oldest_age_s)}</td></tr>`), "nothing queued");
    $("dlq-count").textContent = o.dead_letter_count;
    table($("dlq"), ["id", "to", "reason", ""], o.dead_letters.map((d) =>
      `<tr data-dlq="${esc(d.id)}"><td>${esc(d.id)}</td><td>${esc(d.to)}</td><td>${esc(d.reason)}</td><td>` +
      `<button class="dlq-retry" data-id="${esc(d.id)}">Retry</button> <button class="dlq-drop" data-id="${esc(d.id)}">Drop</button> ` +
      `${traceButton(d.message)}</td></tr>`),
      "no dead letters");
    const failures = o.recent.filter((e) => e.kind === "failed" || e.kind === "retrying" || e.kind === "dropped");
    table($("failures"), ["when", "what", "where", "reason", ""], failures.slice(0, 20).map((e) =>
      `<tr><td>${esc((e.at || "").slice(11, 19))}</td><td class="kind-${esc(e.kind)}">${esc(e.kind)}</td><td>${esc(e.to || e.from || "")}</td>` +
      `<td>${esc(e.error || e.reason || "")}</td><td>${traceButton(e.message)}</td></tr>`), "no failures");
    table($("recent"), ["when", "what", "where", "detail"], o.recent.map((e) =>
      `<tr><td>${esc((e.at || "").slice(11, 19))}</td><td class="kind-${esc(e.kind)}">${esc(e.kind)}</td><td>${esc(e.to || e.from || "")}</td><td>${
        esc(e.error || e.reason || (e.latency_ms !== undefined ? e.latency_ms + " ms" : ""))}</td></tr>`), "nothing yet");
    if (o.trace === false) $("live-state").textContent = "(off: [trace] enabled = false)";
    // [trace] debug_text_minutes: the search box matches words of recent messages too
    $("q").placeholder = o.text_search ? "mesh, native or outbox id, or words" : "mesh, native or outbox id";
    if (o.replicas) replicas(o.replicas);
  }

  // -- leases and replicas (PostgreSQL; one line for a single process) -------------------------------------
  const leaseRow = (l, left) => `<tr data-lease="${esc(l.name)}"><td>${esc(l.kind)}</td><td>${esc(l.what)}</td><td>${esc(left)}</td></tr>`;
  function replicas(r) {
    if (!r.shared) {
      $("replica-mode").textContent = r.mode;
      $("replica-detail").hidden = true;
      return;
    }
    const others = r.others || [];
    $("replica-mode").textContent = `replica ${r.replica} (shared store, lease ${r.ttl_s} s): holds ${r.leases.length} lease(s); ` +
      (r.others_error ? r.others_error : `${others.length} other replica(s) hold leases`) + (r.lost ? `; ${r.lost} lease(s) lost so far` : "");
    $("replica-detail").hidden = false;
    table($("leases-held"), ["kind", "what", "held (s)"], r.leases.map((l) => leaseRow(l, l.held_s)), "no lease held");
    table($("replicas-others"), ["replica", "leases"], others.map((o) =>
      `<tr data-replica="${esc(o.owner)}"><td>${esc(o.replica)}</td><td>${o.leases.map((l) => `${esc(l.kind)} ${esc(l.what)}`).join("<br>")}</td></tr>`),
      r.others_error ? r.others_error : "no other replica holds a lease");
  }

  // -- configuration: diff against the file on disk, reload ---------------------------------------------------
  const shown = (v) => v === undefined ? "" : typeof v === "string" ? v : JSON.stringify(v);
  async function configDiff() {
    const note = $("config-note"), tbl = $("config-changes");
    note.textContent = "reading the config file…";
    try {
      const d = await api("/-/api/config/diff");
      if (!d.ok) {
        note.textContent = `the file on disk would be refused: ${d.errors.join("; ")}`;
        tbl.hidden = true;
        return;
      }
      const n = d.changes.length;
      note.textContent = n ? `${n} change(s) in ${d.config_path}` + (d.restart_required.length ? `; a restart is needed for [${d.restart_required.join("], [")}]` : "; a reload applies them all")
        : `no change: the running configuration is ${d.config_path}`;
      tbl.hidden = !n;
      table(tbl, ["key", "change", "running", "on disk", "applies"], d.changes.map((c) =>
        `<tr data-path="${esc(c.path)}"><td class="mono">${esc(c.path)}</td><td>${esc(c.change)}</td>` +
        (c.secret ? `<td class="secret" colspan="2">secret ${esc(c.change)} (value not shown)</td>` : `<td class="mono">${esc(shown(c.old))}</td><td class="mono">${esc(shown(c.new))}</td>`) +
        `<td class="applies-${esc(c.applies)}">${c.applies === "restart" ? "on restart" : "on reload"}</td></tr>`), "no change");
    } catch (e) {
      if (e.message !== "unauthorized") note.textContent = `could not compare: ${e.message}`;
    }
  }

  async function reload(button) {
    const box = $("reload-result");
    button.disabled = true;
    box.className = "";
    box.textContent = "reloading…";
    let r;
    try { r = await api("/-/api/reload", {method: "POST", body: "{}"}); } catch (e) {
      if (e.message === "unauthorized") return;
      r = e.body || {ok: false, errors: [e.message]};
    } finally { button.disabled = false; }
    const list = (items) => `<ul>${items.map((x) => `<li>${esc(x)}</li>`).join("")}</ul>`;
    if (r.ok) {
      const g = r.gateways || {}, m = r.meshes || {};
      const parts = [["gateways added", g.added], ["removed", g.removed], ["restarted", g.restarted], ["meshes started", m.started],
        ["stopped", m.stopped], ["restarted", m.restarted]].filter(([, v]) => v && v.length).map(([k, v]) => `${k}: ${v.join(", ")}`);
      box.className = "ok";
      box.innerHTML = `<p id="reload-status">applied: ${esc(r.routes)} route(s)${parts.length ? "; " + esc(parts.join("; ")) : ""}</p>` +
        ((r.restart_required || []).length ? `<p class="applies-restart" id="reload-restart">restart required for [${esc(r.restart_required.join("], ["))}]</p>` : "");
    } else {
      box.className = "bad";
      box.innerHTML = `<p id="reload-status">refused; the running configuration is kept:</p>${list(r.errors || [])}`;
    }
    refresh();
    configDiff();
  }

  async function refresh() {
    try { render(await api("/-/api/overview")); } catch (e) { if (e.message !== "unauthorized") $("ready").textContent = `refresh failed: ${e.message}`; }
  }

  // -- message search and trace -----------------------------------------------------------------------------
  async function search() {
    const params = new URLSearchParams();
    for (const [name, id] of [["q", "q"], ["route", "s-route"], ["chat", "s-chat"], ["sender", "s-sender"], ["status", "s-status"], ["since", "s-since"]]) {
      const v = $(id).value.trim();
      if (v) params.set(name, v);
    }
    $("search-note").textContent = "searching…";
    try {
      const r = await api(`/-/api/messages?${params}`);
      $("search-note").textContent = `${r.messages.length} message(s)` + (r.note ? ` (${r.note})` : "");
      table($("results"), ["message", "status", "from", "routes", "delivered", "last event", ""], r.messages.map((m) =>
        `<tr data-message="${esc(m.message_id)}"><td class="mono">${esc(m.message_id)}</td><td class="st-${esc(m.status)}">${esc(m.status)}</td>` +
        `<td>${esc(m.origin)}</td><td>${esc((m.routes || []).join(", "))}</td><td>${esc(m.delivered)}/${esc(m.dests)}</td>` +
        `<td>${esc(when(m.last_at))}</td><td>${traceButton(m.message_id)}</td></tr>`), "no message matches");
    } catch (e) {
      if (e.message !== "unauthorized") $("search-note").textContent = `search failed: ${e.message}`;
    }
  }

  const where = (d) => `${d.lane || ""} [${d.route || ""}]`;
  function describe(ev) {
    const d = ev.detail || {};
    switch (ev.step) {
      case "received": return [`from ${d.source}`, d.native_id && `native id ${d.native_id}`, d.sender && `sender ${d.sender}`,
        d.reply_to && `reply to ${d.reply_to}`, d.edit_of && `edit of ${d.edit_of}`, "dedup: new"].filter(Boolean).join(", ");
      case "duplicate": return `again from ${d.source}: already seen, ignored`;
      case "dropped": return `dropped: ${d.reason}${d.rule ? ` (${d.rule})` : ""}`;
      case "queued": return `routes ${(d.routes || []).join(", ") || "-"} → ${(d.items || []).length} outbox item(s): ${(d.items || []).map((i) => `${i.lane} [${i.route}]`).join(", ")}`;
      case "delivered": return `delivered to ${where(d)}, attempt ${d.attempt}, native id(s) ${(d.native_ids || []).join(", ") || "-"} (${d.parts} part(s), ${d.took_ms} ms)` +
        (d.reply_to ? `, reply to ${d.reply_to}` : "") + (d.edit_of ? `, edit of ${d.edit_of}` : "");
      case "failed": return `attempt ${d.attempt} to ${where(d)} failed: ${d.error}` + (d.retry_after != null ? `, retry-after ${d.retry_after}s` : "") +
        (d.next_at ? `, next attempt ${when(d.next_at)}` : "");
      case "dead_letter": return `dead-lettered: ${where(d)}, attempt ${d.attempt}: ${d.error}`;
      case "dlq_retry": return `dead letter retried by ${d.actor}: ${where(d)}`;
      case "dlq_drop": return `dead letter dropped by ${d.actor}: ${where(d)}`;
      default: return JSON.stringify(d);
    }
  }

  async function openTrace(id) {
    const box = $("trace");
    box.hidden = false;
    $("trace-title").textContent = `Trace of ${id}`;
    $("timeline").innerHTML = "";
    $("trace-summary").textContent = "loading…";
    try {
      const t = await api(`/-/api/messages/${encodeURIComponent(id)}/trace`);
      const s = t.summary;
      $("trace-title").textContent = `Trace of ${s.message_id}`;
      $("trace-summary").innerHTML = `status <strong class="st-${esc(s.status)}" id="trace-status">${esc(s.status)}</strong> · from ${esc(s.origin || "-")} · sender ${esc(s.sender || "-")}` +
        ` · routes ${esc((s.routes || []).join(", ") || "-")} · delivered ${esc(s.delivered)}/${esc(s.dests)}` +
        (t.also && t.also.length ? ` · the id also names: ${t.also.map((m) => traceButton(m, m)).join(" ")}` : "");
      $("timeline").innerHTML = t.events.map((ev) =>
        `<li class="step-${esc(ev.step)}" data-step="${esc(ev.step)}"><span class="when">${esc(when(ev.ts))}</span><span class="step">${esc(ev.step)}</span>` +
        `${ev.outbox_id != null ? `<span class="mono">#${esc(ev.outbox_id)}</span>` : ""}<span class="detail">${esc(describe(ev))}</span></li>`).join("");
    } catch (e) {
      if (e.message !== "unauthorized") $("trace-summary").textContent = e.status === 404 ? `no trace of ${id}` : `trace failed: ${e.message}`;
    }
    box.focus();
  }

  // -- live view: the trace as server-sent events, read with fetch (the token stays in a header) -----------
  function liveRow(ev) {
    if (livePaused) return;
    const rows = $("live-rows");
    const tr = document.createElement("tr");
    tr.dataset.message = ev.message_id;
    tr.dataset.step = ev.step;
    const place = ev.lane || (ev.lanes || []).join(", ") || ev.source || "";
    tr.innerHTML = `<td>${esc(clock(ev.ts))}</td><td class="st-${esc(ev.step)}">${esc(ev.step)}</td><td class="mono">${traceButton(ev.message_id, ev.message_id)}</td>` +
      `<td>${esc(place)}</td><td>${esc(ev.error || ev.reason || (ev.routes || []).join(", ") || "")}</td>`;
    rows.insertBefore(tr, rows.firstChild);
    while (rows.children.length > LIVE_MAX) rows.removeChild(rows.lastChild);
  }

  async function startLive() {
    if (live) return;
    const ctl = live = new AbortController();
    while (live === ctl) {
      try {
        const res = await fetch("/-/api/live", {headers: {Authorization: `Bearer ${sessionStorage.getItem(KEY)}`}, signal: ctl.signal});
        if (res.status === 401 || res.status === 403) { logout(`HTTP ${res.status}`); return; }
        if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
        if (!$("live-state").textContent.startsWith("(off")) $("live-state").textContent = "connected";
        const reader = res.body.getReader();
        const dec = new TextDecoder();
        let buf = "";
        for (;;) {
          const {value, done} = await reader.read();
          if (done) break;
          buf += dec.decode(value, {stream: true});
          let cut;
          while ((cut = buf.indexOf("\n\n")) >= 0) {
            const block = buf.slice(0, cut);
            buf = buf.slice(cut + 2);
            let kind = "message", data = "";
            for (const line of block.split("\n")) {
              if (line.startsWith("event:")) kind = line.slice(6).trim();
              else if (line.startsWith("data:")) data += line.slice(5).trim();
            }
            if (kind === "message" && data) { try { liveRow(JSON.parse(data)); } catch (_) { /* a malformed line is skipped */ } }
          }
        }
      } catch (e) {
        if (ctl.signal.aborted) return;
      }
      if (live !== ctl) return;
      $("live-state").textContent = "reconnecting…";
      await new Promise((r) => setTimeout(r, 3000));
    }
  }

  function stopLive() { if (live) { live.abort(); live = null; } }

  // -- session ------------------------------------------------------------------------------------------------
  function start() {
    $("login").hidden = true; $("app").hidden = false; $("logout").hidden = false; $("nav").hidden = false;
    refresh();
    if (!timer) timer = setInterval(refresh, 2000);
    startLive();
  }

  function logout(reason) {
    sessionStorage.removeItem(KEY);
    if (timer) { clearInterval(timer); timer = null; }
    stopLive();
    $("app").hidden = true; $("logout").hidden = true; $("nav").hidden = true; $("login").hidden = false;
    $("error").textContent = reason || "";
  }

  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY, $("token").value.trim());
    $("token").value = "";
    start();
  });
  $("search-form").addEventListener("submit", (ev) => { ev.preventDefault(); search(); });
  $("logout").addEventListener("click", () => logout(""));
  $("config-diff").addEventListener("click", () => configDiff());
  $("config-reload").addEventListener("click", (ev) => reload(ev.currentTarget));
  $("live-toggle").addEventListener("click", (ev) => {
    livePaused = !livePaused;
    ev.target.textContent = livePaused ? "Resume" : "Pause";
    ev.target.setAttribute("aria-pressed", String(livePaused));
  });
  document.addEventListener("click", async (ev) => {
    const t = ev.target;
    if (!(t instanceof HTMLButtonElement)) return;
    if (t.classList.contains("trace-open")) { openTrace(t.dataset.id); return; }
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
