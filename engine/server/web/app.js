// The chat UI: conversations live on the server (/api/sessions); answers stream over a WebSocket per session.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {sessions: [], current: null, messages: [], socket: null, streaming: false, model: "",
               stats: loadJson("engine.stats", {})};
const OPTIONS = ["temperature", "top_p", "max_tokens", "seed"];
const UNSET = {top_p: "off", max_tokens: "rest of the context", seed: "random"};  // what a null default means

function loadJson(key, fallback) {
  try { return JSON.parse(localStorage.getItem(key)) ?? fallback; } catch { return fallback; }
}

async function api(method, path, body) {
  const res = await fetch(path, {method, headers: {"Content-Type": "application/json"},
                                 body: body === undefined ? undefined : JSON.stringify(body)});
  const data = await res.json();
  if (!res.ok) throw new Error(data.error ? data.error.message : res.statusText);
  return data;
}

function setStatus(text) { $("status").textContent = text; }

// ---- conversation list ----

async function refreshSessions() {
  state.sessions = (await api("GET", "/api/sessions")).sessions;
  const ul = $("sessions");
  ul.replaceChildren();
  for (const s of state.sessions) {
    const li = document.createElement("li");
    li.dataset.id = s.id;
    li.className = s.id === state.current ? "active" : "";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = s.title;
    name.onclick = () => openSession(s.id);
    const rename = document.createElement("button");
    rename.className = "rename"; rename.title = "Rename"; rename.textContent = "✎";
    rename.onclick = async () => {
      const title = prompt("Rename the conversation", s.title);
      if (title && title.trim()) { await api("PATCH", `/api/sessions/${s.id}`, {title}); await refreshSessions(); }
    };
    const del = document.createElement("button");
    del.className = "delete"; del.title = "Delete"; del.textContent = "✕";
    del.onclick = async () => {
      if (!confirm(`Delete “${s.title}”?`)) return;
      await api("DELETE", `/api/sessions/${s.id}`);
      if (s.id === state.current) { state.current = null; localStorage.removeItem("engine.session"); }
      await refreshSessions();
      if (!state.current) await openSession(state.sessions.length ? state.sessions[0].id : null);
    };
    li.append(name, rename, del);
    ul.append(li);
  }
}

async function newSession() {
  const s = await api("POST", "/api/sessions", {system: $("opt-system").value || null});
  await refreshSessions();
  await openSession(s.id);
}

async function openSession(id) {
  if (state.socket) { state.socket.onclose = null; state.socket.close(); state.socket = null; }
  state.current = id;
  state.streaming = false;
  updateButtons();
  if (!id) { state.messages = []; renderMessages(); $("title").textContent = "engine"; return; }
  localStorage.setItem("engine.session", id);
  const s = await api("GET", `/api/sessions/${id}`);
  state.messages = s.messages;
  $("title").textContent = s.title;
  $("opt-system").value = s.system || "";
  renderMessages();
  for (const li of $("sessions").children) li.className = li.dataset.id === id ? "active" : "";
  connect(id);
}

// ---- messages ----

function messageElement(m, index) {
  const div = document.createElement("div");
  div.className = `message ${m.role}`;
  if (m.role === "assistant") {
    const think = document.createElement("details");
    think.className = "thinking";
    think.hidden = !m.reasoning_content;
    const summary = document.createElement("summary");
    summary.textContent = "Thinking";
    const body = document.createElement("div");
    body.className = "reasoning";
    body.textContent = m.reasoning_content || "";
    think.append(summary, body);
    const content = document.createElement("div");
    content.className = "content";
    content.innerHTML = renderMarkdown(m.content || "");
    const stats = document.createElement("div");
    stats.className = "stats";
    const s = state.stats[`${state.current}:${index}`];
    stats.textContent = s ? formatStats(s) : "";
    div.append(think, content, stats);
  } else {
    div.textContent = m.content;
  }
  return div;
}

function formatStats(s) {
  return `${s.tokens} tokens · ${s.tps.toFixed(1)} tok/s · ${s.finish}`;
}

function emptyHint() {
  const p = document.createElement("p");
  p.id = "empty-hint";
  p.textContent = `Ask ${state.model || "the model"} anything — Enter to send, Shift+Enter for a new line`;
  return p;
}

function renderMessages() {
  const box = $("messages");
  box.replaceChildren(...(state.messages.length ? state.messages.map(messageElement) : [emptyHint()]));
  box.scrollTop = box.scrollHeight;
  updateButtons();
}

function appendPiece(kind, text) {
  const last = state.messages[state.messages.length - 1];
  const el = $("messages").lastElementChild;
  if (kind === "reasoning") {
    last.reasoning_content = (last.reasoning_content || "") + text;
    const think = el.querySelector(".thinking");
    think.hidden = false;
    think.querySelector(".reasoning").textContent = last.reasoning_content;
  } else {
    last.content += text;
    el.querySelector(".content").innerHTML = renderMarkdown(last.content);
  }
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
}

// ---- streaming ----

function connect(id) {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${proto}://${location.host}/api/sessions/${id}/ws`);
  state.socket = socket;
  socket.onmessage = (event) => {
    const msg = JSON.parse(event.data);
    if (msg.type === "start") {
      state.messages.push({role: "assistant", content: ""});
      $("messages").append(messageElement(state.messages[state.messages.length - 1], state.messages.length - 1));
      setStatus("answering…");
    } else if (msg.type === "piece") {
      appendPiece(msg.kind, msg.text);
    } else if (msg.type === "done") {
      finishTurn(msg);
    } else if (msg.type === "error") {
      setStatus(`error: ${msg.message}`);
      if (state.streaming) reloadCurrent();
    }
  };
  socket.onclose = () => { if (state.current === id) setTimeout(() => state.current === id && connect(id), 1000); };
}

async function finishTurn(msg) {
  state.streaming = false;
  updateButtons();
  const u = msg.usage || {completion_tokens: 0};
  const index = state.messages.length - 1;
  state.stats[`${state.current}:${index}`] = {tokens: u.completion_tokens, tps: msg.tokens_per_s || 0, finish: msg.finish_reason};
  localStorage.setItem("engine.stats", JSON.stringify(state.stats));
  setStatus(formatStats(state.stats[`${state.current}:${index}`]));
  await reloadCurrent();
  await refreshSessions();
}

async function reloadCurrent() {  // the server's view of the conversation is the truth
  state.streaming = false;
  updateButtons();
  const s = await api("GET", `/api/sessions/${state.current}`);
  state.messages = s.messages;
  $("title").textContent = s.title;
  renderMessages();
}

function options() {
  const o = {};
  for (const name of OPTIONS) {
    const v = $(`opt-${name}`).value;
    if (v !== "") o[name] = name === "max_tokens" || name === "seed" ? parseInt(v, 10) : parseFloat(v);
  }
  o.enable_thinking = $("opt-thinking").checked;
  return o;
}

// The model's sampling defaults (the server's, for options left empty) as the inputs' placeholders.
function showDefaults(defaults) {
  for (const name of OPTIONS) {
    const d = defaults[name];
    $(`opt-${name}`).placeholder = d === null || d === undefined ? UNSET[name] : `${d} (default)`;
  }
}

function saveOptions() {
  const o = options();
  localStorage.setItem("engine.options", JSON.stringify(o));
}

function restoreOptions() {
  const o = loadJson("engine.options", {});
  for (const name of OPTIONS) if (o[name] !== undefined) $(`opt-${name}`).value = o[name];
  if (o.enable_thinking !== undefined) $("opt-thinking").checked = o.enable_thinking;
}

function hasUserMessage() { return state.messages.some((m) => m.role === "user"); }

// Regenerate and undo both act on the last user message (the server refuses them without one).
function updateButtons() {
  const actionable = !state.streaming && hasUserMessage();
  $("send").disabled = state.streaming;
  $("stop").disabled = !state.streaming;
  $("regenerate").disabled = !actionable;
  $("undo").disabled = !actionable;
}

function whenOpen(fn) {
  const s = state.socket;
  if (s.readyState === WebSocket.OPEN) fn(s); else s.addEventListener("open", () => fn(s), {once: true});
}

async function send(event) {
  event.preventDefault();
  const text = $("input").value;
  if (!text.trim() || state.streaming) return;
  if (!state.current) await newSession();
  $("input").value = "";
  state.messages.push({role: "user", content: text});
  renderMessages();
  state.streaming = true;
  updateButtons();
  whenOpen((s) => s.send(JSON.stringify({type: "send", content: text, options: options()})));
}

function regenerate() {
  if (!state.current || state.streaming || !hasUserMessage()) return;
  while (state.messages.length && state.messages[state.messages.length - 1].role === "assistant") state.messages.pop();
  renderMessages();
  state.streaming = true;
  updateButtons();
  whenOpen((s) => s.send(JSON.stringify({type: "regenerate", options: options()})));
}

async function undo() {
  if (!state.current || state.streaming) return;
  const s = await api("POST", `/api/sessions/${state.current}/undo`);
  state.messages = s.messages;
  renderMessages();
}

async function init() {
  restoreOptions();
  $("composer").onsubmit = send;
  $("input").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) send(e); });
  $("stop").onclick = () => state.socket && state.socket.send(JSON.stringify({type: "stop"}));
  $("regenerate").onclick = regenerate;
  $("undo").onclick = undo;
  $("new-chat").onclick = newSession;
  for (const name of [...OPTIONS, "thinking"]) $(`opt-${name}`).addEventListener("change", saveOptions);
  $("opt-system").addEventListener("change", async () => {
    if (state.current) await api("PATCH", `/api/sessions/${state.current}`, {system: $("opt-system").value || null});
  });
  const models = await api("GET", "/v1/models");
  showDefaults(models.data[0].sampling_defaults);
  state.model = models.data[0].id;
  $("model-name").textContent = $("model-name").title = state.model;  // the title: the whole id, when cut short
  await refreshSessions();
  const saved = localStorage.getItem("engine.session");
  const id = state.sessions.some((s) => s.id === saved) ? saved : (state.sessions[0] || {}).id;
  await openSession(id || null);
}

init().catch((e) => setStatus(`error: ${e.message}`));
