// Junction's web console: a page over the management API (/api), with the
// same login (HTTP Basic, kept in this tab's sessionStorage). No framework
// and nothing fetched from elsewhere: the broker may sit on a network with
// no internet.
"use strict";

const state = {
  auth: sessionStorage.getItem("junction-auth"),
  whoami: null,
  timer: null,
  // Per queue: recent depths, for the depth-over-time lines.
  depths: {},
  // Overview samples: [time, publish total, deliver total].
  samples: [],
  sort: { key: "name", reverse: false },
  filter: "",
};

const $ = (sel) => document.querySelector(sel);
const esc = (s) =>
  String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const seg = (s) => encodeURIComponent(s);

class ApiError extends Error {
  constructor(status, reason) {
    super(reason);
    this.status = status;
  }
}

async function api(method, path, body, extraHeaders) {
  const headers = { Authorization: "Basic " + state.auth, ...(extraHeaders || {}) };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch (e) {
    json = null;
  }
  if (r.status === 401 && path === "/api/whoami") {
    throw new ApiError(401, (json && json.reason) || "refused");
  }
  if (r.status === 401 && !state.whoami) {
    logout();
    throw new ApiError(401, "log in again");
  }
  if (!r.ok) throw new ApiError(r.status, (json && json.reason) || r.statusText);
  return json;
}

function status(text, isError) {
  const p = $("#status");
  p.textContent = text || "";
  p.className = isError ? "status error" : "status";
}

// ---------------------------------------------------------------------------
// login

function showLogin(error) {
  $("#login").hidden = false;
  $("#nav").hidden = true;
  $("#logout").hidden = true;
  $("#who").textContent = "";
  $("#page").innerHTML = "";
  const e = $("#login-error");
  e.hidden = !error;
  e.textContent = error || "";
}

function logout() {
  state.auth = null;
  state.whoami = null;
  sessionStorage.removeItem("junction-auth");
  clearInterval(state.timer);
  showLogin();
}

async function enter() {
  try {
    state.whoami = await api("GET", "/api/whoami");
  } catch (e) {
    state.auth = null;
    sessionStorage.removeItem("junction-auth");
    showLogin(e.status === 401 ? "Login refused: " + e.message : "Cannot reach the broker: " + e.message);
    return;
  }
  sessionStorage.setItem("junction-auth", state.auth);
  $("#login").hidden = true;
  $("#nav").hidden = false;
  $("#logout").hidden = false;
  $("#who").textContent = state.whoami.name + " (" + (state.whoami.tags.join(", ") || "no tags") + ")";
  const admin = state.whoami.tags.includes("administrator");
  document.querySelectorAll(".admin-only").forEach((a) => (a.hidden = !admin));
  if (!location.hash) location.hash = "#/overview";
  route();
}

$("#login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.auth = btoa($("#login-user").value + ":" + $("#login-password").value);
  enter();
});
$("#logout").addEventListener("click", logout);

// ---------------------------------------------------------------------------
// routing

const pages = {};

function route() {
  if (!state.whoami) return;
  clearInterval(state.timer);
  const parts = location.hash.replace(/^#\//, "").split("/").map(decodeURIComponent);
  const page = pages[parts[0]] || pages.overview;
  document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.getAttribute("href") === "#/" + parts[0]));
  const run = async () => {
    try {
      await page(...parts.slice(1));
      status("updated " + new Date().toLocaleTimeString());
    } catch (e) {
      status(e.message, true);
    }
  };
  run();
  if (page.live) state.timer = setInterval(run, 2000);
}
window.addEventListener("hashchange", route);

function table(columns, rows, rowAttrs) {
  const head = columns
    .map((c) => `<th class="${c.num ? "num " : ""}${c.sort ? "sortable" : ""}" data-sort="${esc(c.sort || "")}">${esc(c.label)}</th>`)
    .join("");
  const body = rows
    .map((r) => `<tr ${rowAttrs ? rowAttrs(r) : ""}>` + columns.map((c) => `<td class="${c.num ? "num " : ""}${esc(c.cls || "")}">${c.html ? c.html(r) : esc(c.get(r))}</td>`).join("") + "</tr>")
    .join("");
  return `<table><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
}

// A line of values over time on a canvas.
function drawLines(canvas, series, colors) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  const max = Math.max(1, ...series.flat());
  series.forEach((values, i) => {
    ctx.strokeStyle = colors[i];
    ctx.lineWidth = 2;
    ctx.beginPath();
    values.forEach((v, j) => {
      const x = values.length < 2 ? 0 : (j * (w - 4)) / (values.length - 1) + 2;
      const y = h - 2 - (v / max) * (h - 4);
      if (j === 0) ctx.moveTo(x, y);
      else ctx.lineTo(x, y);
    });
    ctx.stroke();
  });
}

// ---------------------------------------------------------------------------
// pages

pages.overview = async function () {
  const o = await api("GET", "/api/overview");
  const now = Date.now() / 1000;
  state.samples.push([now, o.message_stats.publish, o.message_stats.deliver_get]);
  state.samples = state.samples.slice(-60);
  const rates = [[], []];
  for (let i = 1; i < state.samples.length; i++) {
    const [t0, p0, d0] = state.samples[i - 1];
    const [t1, p1, d1] = state.samples[i];
    const dt = Math.max(t1 - t0, 0.001);
    rates[0].push(Math.max(0, (p1 - p0) / dt));
    rates[1].push(Math.max(0, (d1 - d0) / dt));
  }
  const last = (a) => (a.length ? a[a.length - 1].toFixed(1) : "0.0");
  const t = o.object_totals, q = o.queue_totals;
  $("#page").innerHTML = `
    <h1>Overview</h1>
    <div class="cards">
      ${[["connections", t.connections], ["queues", t.queues], ["exchanges", t.exchanges], ["consumers", t.consumers],
         ["messages", q.messages], ["ready", q.messages_ready], ["unacked", q.messages_unacknowledged]]
        .map(([k, v]) => `<div class="card" id="total-${k}"><div>${k}</div><div class="value">${esc(v)}</div></div>`).join("")}
    </div>
    <h2>Message rates (per second): <span style="color:#2f6fdb">publish ${last(rates[0])}</span>,
      <span style="color:#d9822b">deliver/get ${last(rates[1])}</span></h2>
    <canvas id="rates" width="720" height="180"></canvas>
    <p>Node ${esc(o.node)}, Junction ${esc(o.product_version)}.</p>`;
  drawLines($("#rates"), rates, ["#2f6fdb", "#d9822b"]);
};
pages.overview.live = true;

pages.queues = async function () {
  const queues = await api("GET", "/api/queues");
  for (const q of queues) {
    const key = q.vhost + "/" + q.name;
    const d = (state.depths[key] = state.depths[key] || []);
    d.push(q.messages);
    if (d.length > 60) d.shift();
  }
  const { key, reverse } = state.sort;
  const shown = queues
    .filter((q) => q.name.toLowerCase().includes(state.filter.toLowerCase()))
    .sort((a, b) => (a[key] < b[key] ? -1 : a[key] > b[key] ? 1 : 0) * (reverse ? -1 : 1));
  const keepFocus = document.activeElement && document.activeElement.id === "queue-filter";
  $("#page").innerHTML = `
    <h1>Queues</h1>
    <form class="inline" onsubmit="return false">
      <label>Filter <input id="queue-filter" value="${esc(state.filter)}"></label>
      <span>${shown.length} of ${queues.length}</span>
    </form>
    ${table(
      [
        { label: "vhost", get: (q) => q.vhost, sort: "vhost" },
        { label: "name", html: (q) => `<a href="#/queue/${seg(q.vhost)}/${seg(q.name)}">${esc(q.name)}</a>`, sort: "name" },
        { label: "messages", get: (q) => q.messages, num: true, cls: "messages", sort: "messages" },
        { label: "ready", get: (q) => q.messages_ready, num: true, sort: "messages_ready" },
        { label: "unacked", get: (q) => q.messages_unacknowledged, num: true, sort: "messages_unacknowledged" },
        { label: "consumers", get: (q) => q.consumers, num: true, sort: "consumers" },
        { label: "depth over time", html: (q) => `<canvas class="depth" data-key="${esc(q.vhost + "/" + q.name)}" width="160" height="28"></canvas>` },
      ],
      shown,
      (q) => `data-queue="${esc(q.name)}" data-vhost="${esc(q.vhost)}"`,
    )}`;
  document.querySelectorAll("canvas.depth").forEach((c) => drawLines(c, [state.depths[c.dataset.key] || []], ["#2f6fdb"]));
  const f = $("#queue-filter");
  f.addEventListener("input", () => {
    state.filter = f.value;
    pages.queues();
  });
  if (keepFocus) {
    f.focus();
    f.setSelectionRange(f.value.length, f.value.length);
  }
  document.querySelectorAll("th.sortable").forEach((th) =>
    th.addEventListener("click", () => {
      const k = th.dataset.sort;
      state.sort = { key: k, reverse: state.sort.key === k ? !state.sort.reverse : false };
      pages.queues();
    }),
  );
};
pages.queues.live = true;

pages.queue = async function (vhost, name) {
  const base = `/api/queues/${seg(vhost)}/${seg(name)}`;
  const [q, bindings] = await Promise.all([api("GET", base), api("GET", base + "/bindings")]);
  const typing = document.activeElement;
  if (typing && $("#page").contains(typing) && ["INPUT", "TEXTAREA", "SELECT"].includes(typing.tagName)) {
    return; // the user is typing in a form: do not redraw under them
  }
  const got = $("#got") ? $("#got").outerHTML : '<div id="got"></div>';
  $("#page").innerHTML = `
    <h1>Queue ${esc(name)} <small>(vhost ${esc(vhost)})</small></h1>
    <div class="cards">
      <div class="card"><div>messages</div><div class="value" id="queue-messages">${esc(q.messages)}</div></div>
      <div class="card"><div>ready</div><div class="value">${esc(q.messages_ready)}</div></div>
      <div class="card"><div>unacked</div><div class="value">${esc(q.messages_unacknowledged)}</div></div>
      <div class="card"><div>consumers</div><div class="value" id="queue-consumers">${esc(q.consumers)}</div></div>
    </div>
    <p>durable ${esc(q.durable)}, auto-delete ${esc(q.auto_delete)}, exclusive ${esc(q.exclusive)},
      arguments <code>${esc(JSON.stringify(q.arguments))}</code></p>
    <h2>Bindings</h2>
    ${table(
      [
        { label: "from exchange", get: (b) => b.source || "(default exchange)" },
        { label: "routing key", get: (b) => b.routing_key },
        { label: "arguments", get: (b) => JSON.stringify(b.arguments) },
      ],
      bindings,
    )}
    <h2>Messages</h2>
    <form class="inline" onsubmit="return false">
      <label>Count <input id="get-count" type="number" min="1" value="1" style="width:5em"></label>
      <button id="peek">Peek</button>
      <button id="get-requeue">Get (requeue)</button>
      <button id="get-take">Get (remove)</button>
      <button id="purge">Purge</button>
    </form>
    ${got}
    <h2>Publish to this queue</h2>
    <form class="inline" id="publish-form" onsubmit="return false">
      <input id="publish-payload" placeholder="payload" size="40">
      <button id="publish">Publish</button>
    </form>`;
  const get = async (ackmode) => {
    const count = Number($("#get-count").value) || 1;
    const msgs = await api("POST", base + "/get", { count, ackmode, encoding: "auto", truncate: 50000 });
    $("#got").innerHTML = msgs.length
      ? table(
          [
            { label: "routing key", get: (m) => m.routing_key },
            { label: "redelivered", get: (m) => m.redelivered },
            { label: "payload", get: (m) => (m.payload_encoding === "string" ? m.payload : "base64: " + m.payload), cls: "payload" },
          ],
          msgs,
        )
      : "<p>The queue is empty.</p>";
    pages.queue(vhost, name);
  };
  $("#peek").onclick = () => get("peek").catch((e) => status(e.message, true));
  $("#get-requeue").onclick = () => get("ack_requeue_true").catch((e) => status(e.message, true));
  $("#get-take").onclick = () => get("ack_requeue_false").catch((e) => status(e.message, true));
  $("#purge").onclick = async () => {
    try {
      await api("DELETE", base + "/contents");
      $("#got").innerHTML = "";
      status("purged " + name);
      await pages.queue(vhost, name);
    } catch (e) {
      status(e.message, true);
    }
  };
  $("#publish").onclick = async () => {
    try {
      const r = await api("POST", `/api/exchanges/${seg(vhost)}/amq.default/publish`, {
        routing_key: name,
        payload: $("#publish-payload").value,
        payload_encoding: "string",
        properties: {},
      });
      $("#publish-payload").value = "";
      $("#publish-payload").blur();
      status(r.routed ? "published" : "published, not routed");
      await pages.queue(vhost, name);
    } catch (e) {
      status(e.message, true);
    }
  };
};
pages.queue.live = true;

pages.exchanges = async function () {
  const [exchanges, bindings] = await Promise.all([api("GET", "/api/exchanges"), api("GET", "/api/bindings")]);
  const from = (x) => bindings.filter((b) => b.vhost === x.vhost && b.source === x.name);
  $("#page").innerHTML = `<h1>Exchanges</h1>` +
    table(
      [
        { label: "vhost", get: (x) => x.vhost },
        { label: "name", get: (x) => x.name || "(default exchange)" },
        { label: "type", get: (x) => x.type },
        { label: "durable", get: (x) => x.durable },
        { label: "bindings", html: (x) => from(x).map((b) => `${esc(b.routing_key || "\u2205")} \u2192 ${esc(b.destination_type)} ${esc(b.destination)}`).join("<br>") },
      ],
      exchanges,
      (x) => `data-exchange="${esc(x.name)}"`,
    );
};

pages.connections = async function () {
  const conns = await api("GET", "/api/connections");
  $("#page").innerHTML = `<h1>Connections</h1>` +
    table(
      [
        { label: "protocol", get: (c) => c.protocol },
        { label: "user", get: (c) => c.user },
        { label: "vhost", get: (c) => c.vhost },
        { label: "client id", get: (c) => c.client_id || "", cls: "client-id" },
        { label: "peer", get: (c) => c.peer_host + ":" + c.peer_port },
        { label: "TLS", get: (c) => (c.ssl ? "yes" : "no") },
        { label: "channels", get: (c) => c.channels, num: true },
        { label: "", html: (c) => `<button class="close" data-name="${esc(c.name)}">Close</button>` },
      ],
      conns,
      (c) => `data-connection="${esc(c.name)}" data-client-id="${esc(c.client_id || "")}"`,
    );
  document.querySelectorAll("button.close").forEach((b) =>
    b.addEventListener("click", async () => {
      try {
        await api("DELETE", "/api/connections/" + seg(b.dataset.name), undefined, { "X-Reason": "Closed from the web console" });
        status("closed " + b.dataset.name);
        await pages.connections();
      } catch (e) {
        status(e.message, true);
      }
    }),
  );
};
pages.connections.live = true;

pages.mqtt = async function () {
  const clients = await api("GET", "/api/mqtt/clients");
  $("#page").innerHTML = `<h1>MQTT clients and sessions</h1>` +
    table(
      [
        { label: "client id", get: (c) => c.client_id },
        { label: "state", get: (c) => (c.connected ? "connected" : "parked"), cls: "state" },
        { label: "user", get: (c) => c.user || "" },
        { label: "subscriptions", get: (c) => c.subscriptions.join(", ") },
        { label: "queued", get: (c) => c.queued_messages, num: true },
        { label: "session expires in (s)", get: (c) => (c.session_expires_in ?? "") },
      ],
      clients,
      (c) => `data-client="${esc(c.client_id)}"`,
    );
};
pages.mqtt.live = true;

pages.users = async function () {
  const [users, perms] = await Promise.all([api("GET", "/api/users"), api("GET", "/api/permissions")]);
  $("#page").innerHTML = `<h1>Users</h1>` +
    table(
      [
        { label: "name", get: (u) => u.name },
        { label: "tags", get: (u) => u.tags.join(", ") },
        { label: "hash", get: (u) => u.hashing_algorithm },
      ],
      users,
      (u) => `data-user="${esc(u.name)}"`,
    ) +
    `<h2>Add or change a user</h2>
    <form class="inline" onsubmit="return false">
      <input id="user-name" placeholder="name"> <input id="user-password" type="password" placeholder="password">
      <input id="user-tags" placeholder="tags, e.g. management"> <button id="user-save">Save</button>
    </form>
    <h2>Permissions</h2>` +
    table(
      [
        { label: "user", get: (p) => p.user },
        { label: "vhost", get: (p) => p.vhost },
        { label: "configure", get: (p) => p.configure },
        { label: "write", get: (p) => p.write },
        { label: "read", get: (p) => p.read },
      ],
      perms,
    ) +
    `<form class="inline" onsubmit="return false">
      <input id="perm-user" placeholder="user"> <input id="perm-vhost" placeholder="vhost" value="/">
      <input id="perm-configure" placeholder="configure" value=".*"> <input id="perm-write" placeholder="write" value=".*">
      <input id="perm-read" placeholder="read" value=".*"> <button id="perm-save">Set permissions</button>
    </form>`;
  $("#user-save").onclick = async () => {
    try {
      const body = { tags: $("#user-tags").value };
      if ($("#user-password").value) body.password = $("#user-password").value;
      await api("PUT", "/api/users/" + seg($("#user-name").value), body);
      status("saved user " + $("#user-name").value);
      await pages.users();
    } catch (e) {
      status(e.message, true);
    }
  };
  $("#perm-save").onclick = async () => {
    try {
      await api("PUT", `/api/permissions/${seg($("#perm-vhost").value)}/${seg($("#perm-user").value)}`, {
        configure: $("#perm-configure").value,
        write: $("#perm-write").value,
        read: $("#perm-read").value,
      });
      status("permissions set");
      await pages.users();
    } catch (e) {
      status(e.message, true);
    }
  };
};

pages.definitions = async function () {
  $("#page").innerHTML = `
    <h1>Definitions</h1>
    <p>Users, vhosts, permissions, exchanges, queues and bindings, in RabbitMQ's format.</p>
    <button id="export">Export</button> <a id="export-link" hidden download="junction-definitions.json">Download</a>
    <h2>Import</h2>
    <form class="inline" onsubmit="return false">
      <input id="import-file" type="file" accept="application/json,.json"> <button id="import">Import</button>
    </form>
    <pre id="definitions"></pre>`;
  $("#export").onclick = async () => {
    try {
      const d = await api("GET", "/api/definitions");
      const text = JSON.stringify(d, null, 2);
      $("#definitions").textContent = text;
      const link = $("#export-link");
      link.href = URL.createObjectURL(new Blob([text], { type: "application/json" }));
      link.hidden = false;
      status("exported");
    } catch (e) {
      status(e.message, true);
    }
  };
  $("#import").onclick = async () => {
    const f = $("#import-file").files[0];
    if (!f) return status("choose a file first", true);
    try {
      await api("POST", "/api/definitions", JSON.parse(await f.text()));
      status("imported " + f.name);
    } catch (e) {
      status("import refused: " + e.message, true);
    }
  };
};

if (state.auth) enter();
else showLogin();
