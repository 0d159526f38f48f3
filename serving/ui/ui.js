// The recsys inspector: plain JavaScript calling this service's own JSON endpoints, nothing else.
// Every value shown comes from an endpoint; the page computes nothing about the model itself.
// Text from the catalogue is inserted as text (textContent), never as HTML.
"use strict";

const ADMIN_TOKEN_KEY = "recsys.inspector.adminToken";
const EVENTS_TOKEN_KEY = "recsys.inspector.eventsToken";
const EXPLAIN_TOP = 3; // explanation features shown per recommendation
const SIMILAR_N = 10;
const SESSION_N = 10;
// A session's recommendations go to a user id nobody has: the service then uses the context alone.
const ANONYMOUS = "anonymous-" + Array.from(crypto.getRandomValues(new Uint8Array(6)), (b) => b.toString(16).padStart(2, "0")).join("");

const $ = (id) => document.getElementById(id);
const state = { view: "user", user: null, details: null, session: [], sessionTitles: new Map() };

// --- talking to the service ---------------------------------------------------------------------

async function call(method, path, body, token) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = "Bearer " + token;
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await response.json(); } catch (_) { data = null; }
  if (!response.ok) {
    const error = new Error(data && data.error ? data.error : `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return data;
}
const get = (path) => call("GET", path);
const post = (path, body, token) => call("POST", path, body, token);
const query = (name, values) => values.map((v) => `${name}=${encodeURIComponent(v)}`).join("&");

// --- small rendering helpers ----------------------------------------------------------------------

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child !== undefined && child !== null) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function say(id, text, kind = "info") {
  const node = $(id);
  node.textContent = text || "";
  node.className = "message " + (text ? kind : "");
}

const number = (x, digits = 3) => (x === null || x === undefined || !Number.isFinite(x) ? "–" : Number(x).toFixed(digits));

// Unix seconds when the value falls between 1973 and 2100 (the data contract's rule), else an order index.
function when(ts) {
  if (ts === null || ts === undefined) return "no event";
  if (ts >= 94608000 && ts < 4102444800) return new Date(ts * 1000).toISOString().slice(0, 16).replace("T", " ") + " UTC";
  return "position " + ts + " (order index)";
}

// One item row: its title (a button: `pick` says what clicking does), its id, category, price, score,
// sources, an "already seen" flag and an explanation slot.
function itemRow(item, { pick, pickLabel, seen, details } = {}) {
  const info = details || {};
  const title = item.title || info.title || "(not in the model's catalogue)";
  const parts = ["id " + item.item_id];
  if (info.category) parts.push(info.category);
  if (info.price !== null && info.price !== undefined) parts.push("price " + number(info.price, 2));
  if (item.score !== undefined) parts.push("score " + number(item.score));
  const button = el("button", {
    type: "button", class: "pick", "aria-label": `${pickLabel}: ${title}`,
    onclick: () => pick(item.item_id, title),
  }, title);
  return el("li", { "data-item-id": item.item_id },
    el("div", {},
      pick ? button : el("span", {}, title),
      " ", seen ? el("span", { class: "flag", title: "the user has interacted with this item" }, "already seen") : null,
      el("div", { class: "meta" }, parts.join(" · ")),
      el("div", {}, (item.sources || []).map((s) => el("span", { class: "source" }, s))),
      el("p", { class: "why" })));
}

function fill(listId, items, options = {}) {
  const list = $(listId);
  list.replaceChildren(...items.map((item) => itemRow(item, {
    ...options, seen: options.seenSet ? options.seenSet.has(item.item_id) : false,
    details: options.detailsOf ? options.detailsOf.get(item.item_id) : undefined,
  })));
  return list;
}

async function describe(ids) {
  const found = new Map();
  for (let start = 0; start < ids.length; start += 100) {
    const answer = await get("/items?" + query("item_id", ids.slice(start, start + 100)));
    for (const item of answer.items) found.set(item.item_id, item);
  }
  return found;
}

// --- views ----------------------------------------------------------------------------------------

function show(view) {
  state.view = view;
  for (const tab of document.querySelectorAll(".tab")) {
    const active = tab.dataset.view === view;
    if (active) tab.setAttribute("aria-current", "page"); else tab.removeAttribute("aria-current");
    $("view-" + tab.dataset.view).hidden = !active;
  }
  if (view === "model") loadModel();
  if (view === "session") refreshSession();
}

function openItem(itemId) {
  $("item-id").value = itemId;
  show("item");
  loadItem(itemId);
}

// --- user -----------------------------------------------------------------------------------------

function filtersFromForm() {
  const filters = {};
  const category = $("filter-category").value;
  const low = $("filter-price-min").value;
  const high = $("filter-price-max").value;
  if (category) filters.categories = [category];
  if (low !== "") filters.price_min = Number(low);
  if (high !== "") filters.price_max = Number(high);
  return filters;
}

async function explainInto(listId, userId) {
  const list = $(listId);
  const rows = Array.from(list.querySelectorAll("li[data-item-id]"));
  await Promise.all(rows.map(async (row) => {
    const answer = await post("/explain", { user_id: userId, item_id: row.dataset.itemId, top: EXPLAIN_TOP });
    const slot = row.querySelector(".why");
    slot.replaceChildren("why: ", ...answer.contributions.flatMap((c, i) => [
      i ? ", " : "", c.feature + " ",
      el("span", { class: c.contribution >= 0 ? "up" : "down" }, (c.contribution >= 0 ? "+" : "") + number(c.contribution)),
    ]));
  }));
}

async function recommendInto(listId, request, user) {
  const list = $(listId);
  list.dataset.state = "loading";
  const answer = await post("/recommend", request);
  const details = await describe(answer.items.map((i) => i.item_id));
  fill(listId, answer.items, { pick: openItem, pickLabel: "Show item", seenSet: user.seen, detailsOf: details });
  await explainInto(listId, request.user_id);
  list.dataset.state = "ready";
  return answer;
}

async function loadUser(userId) {
  const n = Math.min(100, Math.max(1, Number($("user-n").value) || 10));
  const excludeSeen = $("user-exclude-seen").checked;
  say("user-message", "loading " + userId + "…");
  for (const id of ["recs-list", "filtered-list", "history-list"]) { $(id).replaceChildren(); $(id).dataset.state = "loading"; }
  try {
    const history = await get("/history?" + query("user_id", [userId]));
    const user = { id: userId, n, excludeSeen, seen: new Set(history.seen_item_ids) };
    state.user = user;
    fill("history-list", history.recent, { pick: openItem, pickLabel: "Show item", detailsOf: new Map(history.recent.map((i) => [i.item_id, i])) });
    $("history-summary").textContent = history.known
      ? `${history.n_events} events on ${history.seen_item_ids.length} items; last event ${when(history.last_ts)}` +
        ` (the store keeps the last ${history.recent.length} items in order; times are kept for the last event only)`
      : "";
    if (history.known) say("user-message", `User ${userId}: model ${history.model_version}.`);
    else say("user-message", `Unknown user "${userId}": the online store has no event of this user, so the recommendations are what a new visitor gets (recent popularity).`, "error");
    await recommendInto("recs-list", { user_id: userId, n, exclude_seen: excludeSeen }, user);
    const seenShown = $("recs-list").querySelectorAll(".flag").length;
    if (seenShown && excludeSeen) say("user-message", `${seenShown} recommended items were already seen although exclude_seen is on: report this.`, "error");
    await loadFiltered();
  } catch (error) {
    say("user-message", error.message, "error");
  }
}

async function loadFiltered() {
  const user = state.user;
  if (!user) { say("filter-message", "Show a user first."); return; }
  const filters = filtersFromForm();
  try {
    const request = { user_id: user.id, n: user.n, exclude_seen: user.excludeSeen };
    if (Object.keys(filters).length) request.filters = filters;
    const parts = [];
    if (filters.categories) parts.push("category " + filters.categories[0]);
    if (filters.price_min !== undefined) parts.push("price ≥ " + filters.price_min);
    if (filters.price_max !== undefined) parts.push("price ≤ " + filters.price_max);
    say("filter-message", parts.length ? "Only " + parts.join(", ") + "." : "No filter set: the same list as on the left.");
    await recommendInto("filtered-list", request, user);
  } catch (error) {
    say("filter-message", error.message, "error");
  }
}

// --- item -----------------------------------------------------------------------------------------

async function loadItem(itemId) {
  say("item-message", "loading " + itemId + "…");
  $("item-card").hidden = true;
  for (const id of ["similar-text", "similar-cooccurrence"]) { $(id).replaceChildren(); delete $(id).dataset.state; }
  try {
    const [item] = (await get("/items?" + query("item_id", [itemId]))).items;
    if (!item.known) {
      say("item-message", `Unknown item "${itemId}": it is not in the served model's catalogue.`, "error");
      return;
    }
    $("item-title").textContent = item.title;
    $("item-meta").textContent = ["id " + item.item_id, item.category, item.price === null ? null : "price " + number(item.price, 2)]
      .filter(Boolean).join(" · ");
    $("item-description").textContent = item.description || "(no description)";
    $("item-card").hidden = false;
    $("item-card").dataset.itemId = item.item_id;
    say("item-message", "");
    const sources = (await details()).similar_sources;
    await Promise.all(["text", "cooccurrence"].map(async (source) => {
      const list = $("similar-" + source);
      if (!sources.includes(source)) {
        list.replaceChildren(el("li", {}, el("div", { class: "note" }, `This model has no ${source} source.`)));
      } else {
        const answer = await post("/similar_items", { item_id: itemId, n: SIMILAR_N, source });
        const found = await describe(answer.items.map((i) => i.item_id));
        fill("similar-" + source, answer.items, { pick: openItem, pickLabel: "Show item", detailsOf: found });
      }
      list.dataset.state = "ready";
    }));
  } catch (error) {
    say("item-message", error.message, "error");
  }
}

// --- session playground ---------------------------------------------------------------------------

async function addToSession(itemId, title) {
  $("session-recs").dataset.state = "loading";
  state.session.push(itemId);
  if (title) state.sessionTitles.set(itemId, title);
  if ($("session-record").checked) {
    const user = $("session-user").value.trim();
    if (!user) say("session-message", "Enter the user id to record clicks for.", "error");
    else {
      try {
        const token = $("events-token").value || null;
        if (token) sessionStorage.setItem(EVENTS_TOKEN_KEY, token);
        const answer = await post("/events", { user_id: user, item_id: itemId }, token);
        say("session-message", `Recorded: ${user} now has ${answer.n_events} events.`);
      } catch (error) {
        say("session-message", "Not recorded: " + error.message, "error");
      }
    }
  }
  await refreshSession();
}

async function refreshSession() {
  const list = $("session-list");
  list.replaceChildren(...state.session.map((id, at) => el("li", { "data-item-id": id },
    state.sessionTitles.get(id) || id,
    el("button", { type: "button", "aria-label": "Remove " + (state.sessionTitles.get(id) || id),
      onclick: () => { state.session.splice(at, 1); refreshSession(); } }, "×"))));
  $("session-empty").hidden = state.session.length > 0;
  const recording = $("session-record").checked && $("session-user").value.trim();
  const user = { seen: new Set() };
  const pick = (id, title) => addToSession(id, title);
  try {
    $("session-recs").dataset.state = "loading";
    const request = { user_id: recording || ANONYMOUS, n: SESSION_N, context_item_ids: state.session.slice(-100) };
    const answer = await post("/recommend", request);
    const found = await describe(answer.items.map((i) => i.item_id));
    fill("session-recs", answer.items, { pick, pickLabel: "Add to the session", seenSet: user.seen, detailsOf: found });
    $("session-recs").dataset.state = "ready";
    if (!$("session-popular").children.length) {
      const popular = await post("/recommend", { user_id: ANONYMOUS, n: SESSION_N });
      const popularFound = await describe(popular.items.map((i) => i.item_id));
      fill("session-popular", popular.items, { pick, pickLabel: "Add to the session", detailsOf: popularFound });
    }
    if (!state.session.length) say("session-message", "The session is empty: these are what a new visitor gets.");
  } catch (error) {
    say("session-message", error.message, "error");
  }
}

// --- model ----------------------------------------------------------------------------------------

async function details() {
  if (!state.details) state.details = await get("/model/details");
  return state.details;
}

function metricRows(metrics) {
  // metadata metrics are {split: {metric: value}}; anything else is shown flat
  const rows = [];
  for (const [split, values] of Object.entries(metrics || {})) {
    if (values && typeof values === "object") {
      for (const [name, value] of Object.entries(values)) if (typeof value === "number") rows.push([split, name, value]);
    } else if (typeof values === "number") rows.push(["", split, values]);
  }
  return rows;
}

function ndcgAt10(metrics) {
  const row = metricRows(metrics).find(([, name]) => name === "ndcg@10");
  return row ? number(row[2], 4) : "–";
}

function importanceChart(features, importanceType) {
  const top = features.slice(0, 15);
  const svgNS = "http://www.w3.org/2000/svg";
  const rowHeight = 20, labelWidth = 190, width = 520, barWidth = width - labelWidth - 60;
  const height = Math.max(1, top.length) * rowHeight + 10;
  const max = Math.max(...top.map((f) => f.importance), 1e-12);
  const svg = document.createElementNS(svgNS, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `The ranker's top ${top.length} features by total ${importanceType}`);
  const add = (parent, tag, attributes, text) => {
    const node = document.createElementNS(svgNS, tag);
    for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    parent.append(node);
    return node;
  };
  top.forEach((f, i) => {
    const y = 5 + i * rowHeight;
    const g = add(svg, "g", { "data-feature": f.feature });
    add(g, "title", {}, `${f.feature}: ${f.importance.toFixed(1)}`);
    add(g, "text", { x: labelWidth - 6, y: y + 13, "text-anchor": "end" }, f.feature.length > 28 ? f.feature.slice(0, 27) + "…" : f.feature);
    add(g, "rect", { class: "bar-fill", x: labelWidth, y: y + 2, height: rowHeight - 6, width: Math.max(1, (barWidth * f.importance) / max) });
    add(g, "text", { x: labelWidth + 4 + (barWidth * f.importance) / max, y: y + 13 }, f.importance.toPrecision(3));
  });
  return svg;
}

async function loadModel() {
  say("model-message", "");
  try {
    const [info, model, versions] = await Promise.all([get("/model"), details(), get("/model/versions")]);
    const facts = [["version", info.version], ["tag", info.tag], ["created", info.created_at], ["loaded", info.loaded_at],
      ["data fingerprint", info.data_fingerprint || "–"], ["catalogue", `${model.n_items} items, ${model.categories.length} categories`],
      ["item-to-item sources", model.similar_sources.join(", ") || "none"]];
    $("model-info").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
    const rows = metricRows(info.metrics);
    $("model-metrics").replaceChildren(
      el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "split"), el("th", { scope: "col" }, "metric"), el("th", { scope: "col" }, "value"))),
      el("tbody", {}, rows.length ? rows.map(([split, name, value]) => el("tr", {}, el("td", {}, split), el("td", {}, name), el("td", { class: "num" }, number(value, 4))))
        : el("tr", {}, el("td", { colspan: "3" }, "no metrics in this bundle"))));
    $("importance-chart").replaceChildren(importanceChart(model.feature_importance, model.importance_type));
    renderVersions(versions);
  } catch (error) {
    say("model-message", error.message, "error");
  }
}

function renderVersions(answer) {
  const token = sessionStorage.getItem(ADMIN_TOKEN_KEY);
  const head = $("versions").querySelector("thead tr");
  head.querySelector(".admin-only")?.remove();
  if (token && !answer.pinned) head.append(el("th", { scope: "col", class: "admin-only" }, "Switch"));
  $("versions").querySelector("tbody").replaceChildren(...answer.versions.map((v) => el("tr", { "data-version": v.version },
    el("td", {}, v.version), el("td", {}, v.created_at.slice(0, 19).replace("T", " ")), el("td", { class: "num" }, ndcgAt10(v.metrics)),
    el("td", {}, v.data_fingerprint || "–"), el("td", {}, v.features_loaded ? "yes" : "no (a switch loads them)"),
    el("td", {}, [v.current ? "current" : "", v.served ? "served here" : ""].filter(Boolean).join(", ") || "–"),
    token && !answer.pinned ? el("td", { class: "admin-only" }, v.current ? "" : el("button", {
      type: "button", "aria-label": "Switch to " + v.version, onclick: () => switchTo(v.version),
    }, "Switch")) : null)));
  if (answer.pinned) say("admin-message", "This server is pinned to one version (--model): it never switches.");
}

// --- admin: hidden without the token ---------------------------------------------------------------

function adminVisible() {
  const token = sessionStorage.getItem(ADMIN_TOKEN_KEY);
  $("admin-controls").hidden = !token;
  $("admin-form").hidden = Boolean(token);
}

async function adminCall(path, body, done) {
  const token = sessionStorage.getItem(ADMIN_TOKEN_KEY);
  try {
    const answer = await post(path, body, token);
    say("admin-message", done(answer));
    state.details = null;
    await loadModel();
  } catch (error) {
    if (error.status === 401) sessionStorage.removeItem(ADMIN_TOKEN_KEY);
    adminVisible();
    say("admin-message", error.message + (error.status === 401 ? " (token forgotten)" : ""), "error");
    if (error.status === 401) await loadModel();
  }
}

const switchTo = (version) => adminCall("/admin/switch", { version }, (a) => `Now serving ${a.current} (was ${a.previous || "nothing"}).`);

// --- wiring ---------------------------------------------------------------------------------------

function wire() {
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => show(tab.dataset.view));
  $("user-form").addEventListener("submit", (e) => { e.preventDefault(); const id = $("user-id").value.trim(); if (id) loadUser(id); });
  $("filter-form").addEventListener("submit", (e) => { e.preventDefault(); loadFiltered(); });
  $("item-form").addEventListener("submit", (e) => { e.preventDefault(); const id = $("item-id").value.trim(); if (id) loadItem(id); });
  $("item-to-session").addEventListener("click", () => {
    const id = $("item-card").dataset.itemId;
    addToSession(id, $("item-title").textContent).then(() => show("session"));
  });
  $("session-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const id = $("session-add").value.trim();
    if (!id) return;
    const [item] = (await get("/items?" + query("item_id", [id]))).items;
    if (!item.known) { say("session-message", `Unknown item "${id}": it is not in the served model's catalogue.`, "error"); return; }
    $("session-add").value = "";
    addToSession(id, item.title);
  });
  $("session-record-form").addEventListener("submit", (e) => { e.preventDefault(); refreshSession(); });
  $("session-clear").addEventListener("click", () => { state.session = []; refreshSession(); });
  $("events-token").value = sessionStorage.getItem(EVENTS_TOKEN_KEY) || "";
  $("admin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = $("admin-token").value.trim();
    $("admin-token").value = "";
    if (!token) return;
    sessionStorage.setItem(ADMIN_TOKEN_KEY, token);
    adminVisible();
    say("admin-message", "Token kept for this tab. It is checked by the first admin action.");
    loadModel();
  });
  $("admin-forget").addEventListener("click", () => { sessionStorage.removeItem(ADMIN_TOKEN_KEY); adminVisible(); say("admin-message", ""); loadModel(); });
  $("admin-reload").addEventListener("click", () => adminCall("/admin/reload", undefined, (a) => a.swapped ? `Now serving ${a.current}.` : `Already serving ${a.current}.`));
  adminVisible();
}

async function start() {
  wire();
  show("user");
  try {
    const [info, model] = await Promise.all([get("/model"), details()]);
    $("model-badge").textContent = `serving ${info.version} · ${model.n_items} items`;
    $("filter-category").append(...model.categories.map((c) => el("option", { value: c }, c)));
  } catch (error) {
    $("model-badge").textContent = "no model: " + error.message;
  }
  document.body.dataset.state = "ready";
}

document.addEventListener("DOMContentLoaded", start);
