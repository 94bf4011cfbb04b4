// ray-agent-runtime web page: sign in, list/create threads, chat with streaming, approvals that finish live.
// Plain JavaScript, no build step. The bearer token lives in sessionStorage and only ever travels in the
// Authorization header (never in a URL): server-sent events are read with fetch() for that reason.
"use strict";

const TOKEN_KEY = "agentrt.token";
const state = {
  config: null,
  unsent: null, // {threadId, content, messageId} of a message not yet answered (resent with its id)
  token: null,
  user: null,
  threads: [],
  threadId: null,
  messages: new Map(), // id -> ChatMessage (insertion order = thread order)
  approvals: new Map(), // tool_call_id -> PendingApproval
  seenEvents: new Set(), // "<epoch>:<seq>" already applied (two streams may deliver the same event)
  draft: null, // the assistant message being streamed: {text}
  busy: false,
  eventsAbort: null,
  lastEventId: null,
};

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------------------
// HTTP

class ApiError extends Error {
  constructor(status, error, detail) {
    super(typeof detail === "string" ? detail : error);
    this.status = status;
    this.error = error;
  }
}

async function api(method, path, body, extraHeaders) {
  const headers = { Accept: "application/json", ...(extraHeaders || {}) };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (!response.ok) throw await toApiError(response);
  return response;
}

async function apiJson(method, path, body) {
  return (await api(method, path, body)).json();
}

async function toApiError(response) {
  let payload = null;
  try { payload = await response.json(); } catch (_) { /* not JSON */ }
  const error = payload && payload.error ? payload.error : `http_${response.status}`;
  const detail = payload && payload.detail ? payload.detail : response.statusText;
  return new ApiError(response.status, error, typeof detail === "string" ? detail : JSON.stringify(detail));
}

// Server-sent events over fetch (so the token stays in a header). Yields {event, data, id}.
async function* readEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = "message";
  let data = [];
  let id = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    for (;;) {
      const match = /\r\n|\r|\n/.exec(buffer);
      if (!match) break;
      // A lone "\r" at the very end may be the first half of "\r\n": wait for more bytes.
      if (match[0] === "\r" && match.index === buffer.length - 1) break;
      const line = buffer.slice(0, match.index);
      buffer = buffer.slice(match.index + match[0].length);
      if (line === "") {
        if (data.length) {
          const raw = data.join("\n");
          let parsed = raw;
          try { parsed = JSON.parse(raw); } catch (_) { /* plain text */ }
          yield { event, data: parsed, id };
        }
        event = "message"; data = []; id = null;
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (field === "event") event = val;
        else if (field === "data") data.push(val);
        else if (field === "id") id = val;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Session

function decodeClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = decodeURIComponent(atob(part).split("").map((c) => "%" + c.charCodeAt(0).toString(16).padStart(2, "0")).join(""));
    return JSON.parse(json);
  } catch (_) {
    return null;
  }
}

function displayName(claims) {
  if (!claims) return "signed in";
  return claims.name || claims.nickname || claims.preferred_username || claims.email || claims.sub || "signed in";
}

async function signInAs(username) {
  showSigninError(null);
  try {
    const response = await fetch(state.config.dev_login_url, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ username }),
    });
    if (!response.ok) throw await toApiError(response);
    const body = await response.json();
    await startSession(body.access_token);
  } catch (err) {
    showSigninError(`Could not sign in as ${username}: ${err.message}`);
  }
}

async function startSession(token) {
  const claims = decodeClaims(token);
  if (!claims) throw new Error("that is not a JWT");
  state.token = token;
  state.user = claims;
  sessionStorage.setItem(TOKEN_KEY, token);
  try {
    await loadThreads();
  } catch (err) {
    signOut();
    throw err;
  }
  $("user-chip").textContent = displayName(claims);
  $("signin").hidden = true;
  $("app").hidden = false;
  $("session").hidden = false;
  updateApprovalsLink();
  const wanted = new URLSearchParams(location.hash.slice(1)).get("thread");
  if (wanted && state.threads.some((t) => t.thread_id === wanted)) await selectThread(wanted);
  else if (state.threads.length) await selectThread(state.threads[0].thread_id);
  else await createThread();
}

function signOut() {
  stopEvents();
  sessionStorage.removeItem(TOKEN_KEY);
  Object.assign(state, { token: null, user: null, threads: [], threadId: null, draft: null, busy: false });
  state.messages.clear();
  state.approvals.clear();
  $("app").hidden = true;
  $("session").hidden = true;
  $("signin").hidden = false;
  history.replaceState(null, "", location.pathname);
}

function showSigninError(text) {
  $("signin-error").hidden = !text;
  $("signin-error").textContent = text || "";
}

function showChatError(text) {
  $("chat-error").hidden = !text;
  $("chat-error").textContent = text || "";
}

function handleAuthError(err) {
  if (err instanceof ApiError && err.status === 401) {
    signOut();
    showSigninError("Your session expired or the token was refused. Please sign in again.");
    return true;
  }
  return false;
}

function updateApprovalsLink() {
  const link = $("approvals-link");
  const url = approvalsUrl();
  link.hidden = !url;
  if (url) link.href = url;
}

function approvalsUrl() {
  if (!state.config || !state.config.approvals_url) return null;
  const url = new URL(state.config.approvals_url, location.href);
  const sub = state.user && state.user.sub;
  if (sub && state.config.dev_login_url) url.searchParams.set("user", sub); // the dev page filters by user
  return url.toString();
}

// ---------------------------------------------------------------------------------------------------
// Threads

async function loadThreads() {
  const body = await apiJson("GET", "/threads");
  state.threads = body.threads;
  renderThreads();
}

function renderThreads() {
  const list = $("threads");
  list.replaceChildren();
  for (const thread of state.threads) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.threadId = thread.thread_id;
    if (thread.thread_id === state.threadId) button.setAttribute("aria-current", "true");
    const title = document.createElement("span");
    title.className = "t-title";
    title.textContent = thread.title || "New conversation";
    const meta = document.createElement("span");
    meta.className = "t-meta";
    meta.textContent = relativeTime(thread.last_active_at || thread.created_at);
    button.append(title, meta);
    button.addEventListener("click", () => selectThread(thread.thread_id));
    li.append(button);
    list.append(li);
  }
  $("threads-empty").hidden = state.threads.length > 0;
}

async function createThread() {
  showChatError(null);
  try {
    const thread = await apiJson("POST", "/threads", {});
    state.threads.unshift(thread);
    renderThreads();
    await selectThread(thread.thread_id);
  } catch (err) {
    if (!handleAuthError(err)) showChatError(`Could not create a thread: ${err.message}`);
  }
}

async function selectThread(threadId) {
  stopEvents();
  showChatError(null);
  state.threadId = threadId;
  state.messages.clear();
  state.approvals.clear();
  state.seenEvents.clear();
  state.draft = null;
  state.lastEventId = null;
  history.replaceState(null, "", `#thread=${encodeURIComponent(threadId)}`);
  const thread = state.threads.find((t) => t.thread_id === threadId);
  $("thread-title").textContent = (thread && thread.title) || "New conversation";
  $("thread-id").textContent = threadId;
  renderThreads();
  setComposerEnabled(true);
  try {
    await refreshThread();
  } catch (err) {
    if (!handleAuthError(err)) showChatError(`Could not load the thread: ${err.message}`);
    return;
  }
  startEvents(threadId);
  $("message-input").focus();
}

async function refreshThread() {
  const threadId = state.threadId;
  const [messages, interrupts] = await Promise.all([
    apiJson("GET", `/threads/${encodeURIComponent(threadId)}/messages`),
    apiJson("GET", `/threads/${encodeURIComponent(threadId)}/interrupts`),
  ]);
  if (threadId !== state.threadId) return;
  state.messages.clear();
  for (const message of messages.messages) state.messages.set(message.id, message);
  state.approvals.clear();
  for (const approval of interrupts.interrupts) state.approvals.set(approval.tool_call_id, approval);
  renderMessages();
}

async function refreshApprovals() {
  const threadId = state.threadId;
  const body = await apiJson("GET", `/threads/${encodeURIComponent(threadId)}/interrupts`);
  if (threadId !== state.threadId) return;
  state.approvals.clear();
  for (const approval of body.interrupts) state.approvals.set(approval.tool_call_id, approval);
  renderMessages();
}

// ---------------------------------------------------------------------------------------------------
// Live events: one stream per open thread, resumed with Last-Event-ID after a drop.

function stopEvents() {
  if (state.eventsAbort) state.eventsAbort.abort();
  state.eventsAbort = null;
  setLive(false);
}

function setLive(live) {
  $("live-status").classList.toggle("live", live);
  $("live-text").textContent = live ? "live" : "offline";
}

async function startEvents(threadId) {
  const abort = new AbortController();
  state.eventsAbort = abort;
  let delay = 500;
  while (!abort.signal.aborted && state.threadId === threadId) {
    try {
      const headers = { Accept: "text/event-stream", Authorization: `Bearer ${state.token}` };
      if (state.lastEventId) headers["Last-Event-ID"] = state.lastEventId;
      const response = await fetch(`/threads/${encodeURIComponent(threadId)}/events`, { headers, signal: abort.signal });
      if (!response.ok) throw await toApiError(response);
      for await (const event of readEvents(response)) {
        if (event.event === "ready") { setLive(true); delay = 500; }
        if (event.id) state.lastEventId = event.id;
        applyEvent(event);
      }
    } catch (err) {
      if (abort.signal.aborted) return;
      if (handleAuthError(err)) return;
      if (err instanceof ApiError && err.status < 500) { showChatError(`Live updates stopped: ${err.message}`); setLive(false); return; }
    }
    setLive(false);
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 10000);
  }
}

function applyEvent(event) {
  if (event.id) {
    if (state.seenEvents.has(event.id)) return;
    state.seenEvents.add(event.id);
  }
  const data = event.data && event.data.data ? event.data.data : {};
  switch (event.event) {
    case "token":
      if (!state.draft) state.draft = { text: "" };
      state.draft.text += data.text || "";
      renderMessages();
      break;
    case "message": {
      const message = data.message;
      if (!message) break;
      if (message.role === "assistant") state.draft = null;
      state.messages.set(message.id, message);
      for (const call of message.tool_calls || []) {
        const id = `${call.id}:result`;
        if (!state.messages.has(id)) {
          state.messages.set(id, { id, role: "tool", tool_call_id: call.id, name: call.name, state: call.state, content: null });
        }
      }
      renderMessages();
      break;
    }
    case "tool_call": {
      const tool = state.messages.get(`${data.tool_call_id}:result`);
      if (tool) tool.state = data.state;
      if (data.state === "pending-authorization" || data.state === "awaiting-confirmation") refreshApprovals().catch(() => {});
      renderMessages();
      break;
    }
    case "interrupt":
      refreshApprovals().catch(() => {});
      break;
    case "tool_result": {
      const id = `${data.tool_call_id}:result`;
      const tool = state.messages.get(id) || { id, role: "tool", tool_call_id: data.tool_call_id, name: data.tool_name };
      Object.assign(tool, { state: "result", content: data.result });
      state.messages.set(id, tool);
      state.approvals.delete(data.tool_call_id);
      renderMessages();
      break;
    }
    case "turn_start":
      setBusy(true);
      break;
    case "turn_end":
      state.draft = null;
      setBusy(false);
      refreshThread().catch(() => {});
      bumpThread(state.threadId);
      break;
    case "error":
      showChatError(data.message || "Something went wrong.");
      break;
    case "reset":
      state.seenEvents.clear();
      refreshThread().catch(() => {});
      break;
    case "failed":
      showChatError(event.data.detail || "The request failed.");
      break;
    default:
      break;
  }
}

// ---------------------------------------------------------------------------------------------------
// Sending

function newMessageId() {
  if (window.crypto && crypto.randomUUID) return `web-${crypto.randomUUID()}`;
  return `web-${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

async function sendMessage(text) {
  const content = text.trim();
  if (!content || !state.threadId || state.busy) return;
  showChatError(null);
  $("message-input").value = "";
  autosize();
  setBusy(true);
  const threadId = state.threadId;
  // the message's own id: sending the same text again after a failure reuses it, so a message whose
  // answer was lost (a dropped connection, a 503) is stored and answered once, not twice
  const unsent = state.unsent && state.unsent.threadId === threadId && state.unsent.content === content ? state.unsent : null;
  const messageId = unsent ? unsent.messageId : newMessageId();
  state.unsent = { threadId, content, messageId };
  const optimisticId = `local-${Date.now()}`;
  state.messages.set(optimisticId, { id: optimisticId, role: "user", content, local: true });
  renderMessages();
  try {
    const response = await api("POST", `/threads/${encodeURIComponent(threadId)}/messages`, { content, message_id: messageId }, { Accept: "text/event-stream" });
    for await (const event of readEvents(response)) {
      if (threadId !== state.threadId) continue;
      if (event.event === "message" && event.data.data && event.data.data.message && event.data.data.message.role === "user") {
        state.messages.delete(optimisticId);
      }
      if (event.event === "done") {
        state.messages.delete(optimisticId);
        for (const message of event.data.messages) state.messages.set(message.id, message);
        state.draft = null;
        renderMessages();
      } else {
        applyEvent(event);
      }
    }
    state.unsent = null;
    bumpThread(threadId, content);
  } catch (err) {
    state.messages.delete(optimisticId);
    renderMessages();
    if (!handleAuthError(err)) {
      showChatError(`Message not sent: ${err.message}`);
      $("message-input").value = content;
    }
  } finally {
    setBusy(false);
  }
}

async function answerConfirmation(toolCallId, approved) {
  showChatError(null);
  try {
    const body = await apiJson("POST", `/threads/${encodeURIComponent(state.threadId)}/tool-results`, { tool_call_id: toolCallId, approved });
    for (const message of body.messages) state.messages.set(message.id, message);
    state.approvals.delete(toolCallId);
    renderMessages();
  } catch (err) {
    if (!handleAuthError(err)) showChatError(`Could not answer: ${err.message}`);
  }
}

async function withdrawApproval(toolCallId) {
  // the call ends "cancelled by the user"; approving the request on the device afterwards buys nothing
  showChatError(null);
  try {
    const body = await apiJson("DELETE", `/threads/${encodeURIComponent(state.threadId)}/interrupts/${encodeURIComponent(toolCallId)}`);
    for (const message of body.messages) state.messages.set(message.id, message);
    state.approvals.delete(toolCallId);
    await refreshThread();
  } catch (err) {
    if (!handleAuthError(err)) showChatError(`Could not withdraw: ${err.message}`);
  }
}

function bumpThread(threadId, content) {
  const thread = state.threads.find((t) => t.thread_id === threadId);
  if (!thread) return;
  thread.last_active_at = Date.now() / 1000;
  if (!thread.title && content) {
    thread.title = content.length > 80 ? content.slice(0, 79) + "…" : content;
    if (threadId === state.threadId) $("thread-title").textContent = thread.title;
  }
  state.threads.sort((a, b) => (b.last_active_at || 0) - (a.last_active_at || 0));
  renderThreads();
}

function setBusy(busy) {
  state.busy = busy;
  $("send").disabled = busy || !state.threadId;
  renderMessages();
}

function setComposerEnabled(enabled) {
  $("message-input").disabled = !enabled;
  $("send").disabled = !enabled || state.busy;
}

// ---------------------------------------------------------------------------------------------------
// Rendering

function renderMessages() {
  const box = $("messages");
  const nearBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  const nodes = [];
  for (const message of state.messages.values()) {
    const node = renderMessage(message);
    if (node) nodes.push(node);
  }
  if (state.draft && state.draft.text) {
    const draft = el("div", "msg assistant streaming", state.draft.text);
    nodes.push(draft);
  } else if (state.busy) {
    const typing = el("div", "typing");
    typing.append("Agent is thinking ", el("span", "", "."), el("span", "", "."), el("span", "", "."));
    nodes.push(typing);
  }
  $("placeholder").hidden = nodes.length > 0;
  box.replaceChildren($("placeholder"), ...nodes);
  if (nearBottom) box.scrollTop = box.scrollHeight;
}

function renderMessage(message) {
  if (message.role === "user") return el("div", "msg user", message.content || "");
  if (message.role === "assistant") {
    if (!message.content && (!message.tool_calls || !message.tool_calls.length)) return null;
    const node = el("div", "msg assistant", message.content || "");
    if (message.tool_calls && message.tool_calls.length) {
      const calls = el("div", "calls");
      for (const call of message.tool_calls) calls.append(el("span", "call-chip", `${call.name}(${formatArgs(call.arguments)})`));
      if (!message.content) node.classList.add("calls-only");
      node.append(calls);
    }
    return node;
  }
  if (message.role === "tool") return renderToolMessage(message);
  return null;
}

function renderToolMessage(message) {
  const approval = state.approvals.get(message.tool_call_id);
  if (message.state === "pending-authorization" || message.state === "awaiting-confirmation" || approval) {
    if (message.state !== "result") return renderApprovalCard(message, approval);
  }
  if (message.state === "result") {
    const text = message.content || "";
    const kind = /^purchased\b/i.test(text) ? "ok" : /denied|expired|error|not /i.test(text) ? "bad" : "info";
    const card = el("div", `result-card ${kind}`);
    card.dataset.toolCallId = message.tool_call_id;
    const label = kind === "ok" ? "Approved" : kind === "bad" ? "Not completed" : "Result";
    card.append(el("span", `badge ${kind}`, `${label} · ${message.name || "tool"}`), el("p", "", text));
    return card;
  }
  const running = el("div", "result-card info");
  running.append(el("span", "spinner"), document.createTextNode(` ${message.name || "tool"} running…`));
  return running;
}

function renderApprovalCard(message, approval) {
  const card = $("approval-template").content.firstElementChild.cloneNode(true);
  card.dataset.toolCallId = message.tool_call_id;
  const kind = approval ? approval.kind : message.state === "awaiting-confirmation" ? "confirmation" : "async-authorization";
  const binding = (approval && approval.binding_message) || describeCall(message, approval);
  card.querySelector(".binding").textContent = binding;
  const actions = card.querySelector(".approval-actions");
  const detail = card.querySelector(".detail");
  if (kind === "confirmation") {
    detail.textContent = `The agent wants to run ${message.name || "a tool"}. Allow it?`;
    const approve = el("button", "button ok small", "Approve");
    approve.type = "button";
    approve.addEventListener("click", () => answerConfirmation(message.tool_call_id, true));
    const deny = el("button", "button bad small", "Deny");
    deny.type = "button";
    deny.addEventListener("click", () => answerConfirmation(message.tool_call_id, false));
    actions.append(approve, deny);
  } else {
    detail.append(el("span", "spinner"), document.createTextNode(" Waiting for your approval on your device. This chat continues by itself once you approve."));
    const url = approvalsUrl();
    if (url) {
      const link = el("a", "button small approval-link", "Open approval page ↗");
      link.href = url;
      link.target = "_blank";
      link.rel = "noopener";
      actions.append(link);
    }
    const withdraw = el("button", "button bad small withdraw", "Withdraw");
    withdraw.type = "button";
    withdraw.addEventListener("click", () => withdrawApproval(message.tool_call_id));
    actions.append(withdraw);
  }
  const countdown = card.querySelector(".countdown");
  if (approval && approval.expires_at) {
    countdown.dataset.expiresAt = String(approval.expires_at);
    updateCountdown(countdown);
  }
  return card;
}

function describeCall(message) {
  for (const m of state.messages.values()) {
    for (const call of m.tool_calls || []) {
      if (call.id === message.tool_call_id) return `${call.name}(${formatArgs(call.arguments)})`;
    }
  }
  return message.name || "A tool call";
}

function updateCountdown(node) {
  const left = Math.round(Number(node.dataset.expiresAt) - Date.now() / 1000);
  if (left <= 0) {
    node.textContent = "expired";
    node.classList.add("urgent");
    return;
  }
  const minutes = Math.floor(left / 60);
  const seconds = String(left % 60).padStart(2, "0");
  node.textContent = `expires in ${minutes}:${seconds}`;
  node.classList.toggle("urgent", left < 30);
}

function formatArgs(args) {
  let value = args;
  if (typeof value === "string") {
    try { value = JSON.parse(value); } catch (_) { return value; }
  }
  if (!value || typeof value !== "object") return String(value);
  return Object.entries(value).map(([k, v]) => `${k}=${v}`).join(", ");
}

function relativeTime(seconds) {
  if (!seconds) return "";
  const delta = Date.now() / 1000 - seconds;
  if (delta < 60) return "just now";
  if (delta < 3600) return `${Math.floor(delta / 60)} min ago`;
  if (delta < 86400) return `${Math.floor(delta / 3600)} h ago`;
  return new Date(seconds * 1000).toLocaleDateString();
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function autosize() {
  const input = $("message-input");
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
}

// ---------------------------------------------------------------------------------------------------
// Start

async function main() {
  $("sign-out").addEventListener("click", signOut);
  $("new-thread").addEventListener("click", createThread);
  $("composer").addEventListener("submit", (e) => { e.preventDefault(); sendMessage($("message-input").value); });
  $("message-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); sendMessage($("message-input").value); }
  });
  $("message-input").addEventListener("input", autosize);
  for (const button of document.querySelectorAll(".suggestion")) {
    button.addEventListener("click", () => sendMessage(button.textContent));
  }
  $("token-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    showSigninError(null);
    try { await startSession($("token-input").value.trim()); $("token-input").value = ""; }
    catch (err) { showSigninError(`Sign-in failed: ${err.message}`); }
  });
  setInterval(() => document.querySelectorAll(".countdown[data-expires-at]").forEach(updateCountdown), 1000);

  try {
    state.config = await (await fetch("/config", { headers: { Accept: "application/json" } })).json();
  } catch (_) {
    state.config = {};
  }
  const users = state.config.dev_login_url ? state.config.demo_users || [] : [];
  $("demo-signin").hidden = users.length === 0;
  $("token-signin").open = users.length === 0;
  for (const user of users) {
    const button = el("button", "button", user[0].toUpperCase() + user.slice(1));
    button.type = "button";
    button.id = `login-${user}`;
    button.addEventListener("click", () => signInAs(user));
    $("demo-users").append(button);
  }
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) {
    try { await startSession(saved); return; } catch (_) { signOut(); }
  }
  $("signin").hidden = false;
}

main();
