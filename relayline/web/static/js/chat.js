// The chat page: session token, chat list, the open conversation, composer, connection state.
// Wires the pieces together; the pieces themselves hold the logic (socket.js, conversation.js,
// message_list.js, offline_queue.js, store.js, render.js, terminal_panel.js).

import { Api } from "../sdk/api.js";
import { Conversation } from "./conversation.js";
import { DebugOverlay } from "./debug.js";
import { apiErrorText, closeText, connectionText } from "./errors.js";
import { MessageListView } from "./message_list.js";
import { OfflineQueue, QueueFullError } from "../sdk/offline_queue.js";
import { CLOSE, LIMITS, OP } from "../sdk/protocol.js";
import { loadRenderer } from "./render.js";
import { RelaySocket } from "../sdk/socket.js";
import { HistoryStore } from "../sdk/store.js";
import { TerminalPanel } from "./terminal_panel.js";
import { TerminalStore } from "./terminal_store.js";
import { UsagePanel } from "./usage_panel.js";
import { closestTo } from "./dom.js";

const TOKEN_KEY = "relayline.session";
const MAX_MESSAGE_CHARS = LIMITS.maxMessageChars; // the relay's default; it answers 422 past its own
// Reconnect pacing; the one place to tune it for this page.
/** @type {import("../sdk/reconnect.js").ReconnectOptions} */
const RECONNECT_POLICY = { baseMs: 500, maxMs: 15_000, factor: 2, jitter: "full" };

/** An element of the page by id (inputs, buttons, sections: the caller knows which). */
const $ = (/** @type {string} */ id) => /** @type {any} */ (document.getElementById(id));

function readToken() {
  const hash = new URLSearchParams(location.hash.slice(1));
  const fromLink = hash.get("session");
  if (fromLink) {
    localStorage.setItem(TOKEN_KEY, fromLink);
    // Keep the secret out of the address bar, history and anything copied from it.
    hash.delete("session");
    const rest = hash.toString();
    history.replaceState(null, "", location.pathname + (rest ? `#${rest}` : ""));
  }
  return localStorage.getItem(TOKEN_KEY);
}

function chatFromHash() {
  return new URLSearchParams(location.hash.slice(1)).get("chat");
}

function terminalFromHash() {
  return new URLSearchParams(location.hash.slice(1)).get("term");
}

class ChatApp {
  constructor() {
    this.token = readToken();
    this.api = new Api({ token: () => this.token });
    this.history = new HistoryStore({ storage: localStorage });
    this.queue = new OfflineQueue({ storage: sessionStorage });
    this.chats = [];
    this.conversation = null;
    this.connection = { state: "idle" };
    // Settled once the page has its chat list and has opened a chat (or a draft): a message
    // sent before then waits for it, or the page's first opening would replace its new chat.
    /** @type {() => void} */
    this.markLoaded = () => {};
    /** @type {Promise<void>} */
    this.loaded = new Promise((resolve) => {
      this.markLoaded = () => resolve();
    });
    this.submitting = false;
    this.notices = new Map();
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    this.socket = new RelaySocket({
      url: `${scheme}://${location.host}/v1/ws`,
      token: () => this.token,
      policy: RECONNECT_POLICY,
    });
    this.debug = new DebugOverlay({ capacity: 200, getState: () => ({ connection: connectionText(this.connection) }) });
    this.usage = new UsagePanel({ api: this.api, token: () => this.token });
    this.view = new MessageListView({
      scroller: $("scroller"),
      list: $("messages"),
      typing: $("typing"),
      badge: $("new-badge"),
      empty: $("empty"),
      onAction: (action, data) => this.onAction(action, data),
      onTurnChange: () => this.renderTurn(),
    });
    this.terminals = new TerminalPanel({
      api: this.api,
      socket: this.socket,
      store: new TerminalStore({ storage: localStorage }),
      $,
      onShow: (shown) => this.showTerminal(shown),
      notice: (id, kind, text, ttlMs) => this.notice(id, kind, text, ttlMs),
      clearNotice: (id) => this.clearNotice(id),
      onToken: (token) => {
        this.token = token;
        localStorage.setItem(TOKEN_KEY, token);
        this.socket.setToken(() => this.token);
      },
    });
  }

  async start() {
    this.history.cleanup();
    await loadRenderer();
    this.bindUi();
    if (!this.token) {
      this.markLoaded();
      this.showSignIn();
      return;
    }
    this.bindSocket();
    this.socket.connect();
    const wantedTerminal = terminalFromHash();
    try {
      await Promise.all([this.refreshChats(), this.terminals.start()]);
      const wanted = chatFromHash();
      const first = this.chats.find((c) => c.id === wanted) ?? this.chats[0];
      if (first) await this.openChat(first.id);
      else this.startDraft();
    } finally {
      this.markLoaded();
    }
    if (wantedTerminal) await this.terminals.show(wantedTerminal);
  }

  // Wiring

  bindSocket() {
    const s = this.socket;
    s.on("packet", (p) => this.debug.record(p));
    s.on("state", (status) => {
      this.setConnection(status);
      this.terminals.setLink(status.state);
    });
    s.on("event", (event) => {
      if (event.topic.startsWith("term:")) this.terminals.apply(event);
      else this.conversation?.apply(event);
    });
    s.on("ready", (info) => {
      this.flushQueue();
      this.terminals.ready(info);
    });
    s.on("auth", () => this.showSignIn("Your session has expired. Open a fresh link to continue."));
    s.on("error", (data) => {
      if (data.code === "rate_limited") this.notice("rate", "warn", apiErrorText(data), 6000);
    });
    addEventListener("offline", () => s.suspend("network"));
    addEventListener("online", () => s.reconnectNow());
    addEventListener("storage", (ev) => {
      // Another tab started a chat and got a token that covers it: use that one too.
      if (ev.key === TOKEN_KEY && ev.newValue && ev.newValue !== this.token) {
        this.token = ev.newValue;
        s.setToken(() => this.token);
        this.refreshChats();
      }
    });
  }

  bindUi() {
    const input = $("input");
    $("composer").addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.submit();
    });
    input.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing && !ev.altKey) {
        ev.preventDefault();
        this.submit();
      }
    });
    input.addEventListener("input", () => this.resizeInput());
    $("stop").addEventListener("click", () => this.stop());
    $("new-chat").addEventListener("click", () => {
      this.startDraft();
      this.closeDrawer();
    });
    $("menu-btn").addEventListener("click", () => this.toggleDrawer());
    this.terminals.bind();
    $("term-list").addEventListener("click", () => this.closeDrawer());
    $("scrim").addEventListener("click", () => this.closeDrawer());
    $("chat-list").addEventListener("click", (ev) => this.onChatListClick(ev));
    $("notices").addEventListener("click", (ev) => {
      const id = closestTo(ev, "[data-dismiss]")?.dataset.dismiss;
      if (id) this.clearNotice(id);
    });
    $("empty").addEventListener("click", (ev) => {
      const prompt = closestTo(ev, "[data-prompt]")?.dataset.prompt;
      if (prompt) {
        input.value = prompt;
        this.submit();
      }
    });
    $("signin-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const value = $("signin-token").value.trim();
      if (!value) return;
      localStorage.setItem(TOKEN_KEY, value);
      location.reload();
    });
    setInterval(() => this.renderConnection(), 500);
  }

  // Connection and notices

  setConnection(status) {
    this.connection = { ...status, retryAt: status.retryInMs ? Date.now() + status.retryInMs : null };
    this.renderConnection();
    const message = status.state === "offline" ? closeText(status.code) : null;
    if (message && status.code !== CLOSE.UNAUTHENTICATED) this.notice("conn", "error", message);
    if (status.state === "online") this.clearNotice("conn");
  }

  renderConnection() {
    const c = this.connection;
    let view = c;
    if (c.state === "reconnecting" && c.retryAt) view = { ...c, retryInMs: Math.max(0, c.retryAt - Date.now()) };
    const root = $("conn");
    root.dataset.state = c.state;
    const text = connectionText(view);
    if (root.lastChild.textContent !== text) root.lastChild.textContent = text;
    const queued = this.queue.size;
    $("queued-count").hidden = queued === 0 || c.state === "online";
    $("queued-count").textContent = `${queued} waiting`;
  }

  notice(id, kind, text, ttlMs = 0) {
    this.clearNotice(id);
    const box = document.createElement("div");
    box.className = `notice notice--${kind}`;
    box.setAttribute("role", kind === "error" ? "alert" : "status");
    box.dataset.notice = id;
    const span = document.createElement("span");
    span.textContent = text;
    const close = document.createElement("button");
    close.type = "button";
    close.className = "notice__close";
    close.dataset.dismiss = id;
    close.setAttribute("aria-label", "Dismiss");
    close.textContent = "×";
    box.append(span, close);
    $("notices").append(box);
    const timer = ttlMs ? setTimeout(() => this.clearNotice(id), ttlMs) : null;
    this.notices.set(id, { box, timer });
  }

  clearNotice(id) {
    const n = this.notices.get(id);
    if (!n) return;
    clearTimeout(n.timer);
    n.box.remove();
    this.notices.delete(id);
  }

  announce(text) {
    const node = $("announcer");
    node.textContent = "";
    // A fresh text node in a later task makes screen readers announce repeats too.
    setTimeout(() => {
      node.textContent = text;
    }, 50);
  }

  // Chats

  async refreshChats() {
    try {
      const body = await this.api.get("/v1/chats?limit=50");
      const hidden = new Set(this.history.hidden());
      this.chats = body.items.filter((c) => !hidden.has(c.id)).sort((a, b) => b.created_at - a.created_at);
      this.renderChatList();
    } catch (err) {
      this.handleApiError(err);
    }
  }

  renderChatList() {
    const list = $("chat-list");
    const current = this.terminals.view ? null : this.conversation?.chatId;
    const items = this.chats.map((c) => {
      const li = document.createElement("li");
      li.className = "chat-item";
      if (c.id === current) li.classList.add("is-active");
      const open = document.createElement("button");
      open.type = "button";
      open.className = "chat-item__open";
      open.dataset.chat = c.id;
      if (c.id === current) open.setAttribute("aria-current", "page");
      const title = document.createElement("span");
      title.className = "chat-item__title";
      title.textContent = c.title || "Untitled chat";
      const when = document.createElement("span");
      when.className = "chat-item__when";
      when.textContent = new Date(c.created_at).toLocaleDateString(undefined, { month: "short", day: "numeric" });
      open.append(title, when);
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "chat-item__remove";
      remove.dataset.remove = c.id;
      remove.setAttribute("aria-label", `Remove “${c.title || "Untitled chat"}” from this device`);
      remove.textContent = "×";
      li.append(open, remove);
      return li;
    });
    list.replaceChildren(...items);
    $("chat-list-empty").hidden = items.length > 0;
  }

  async onChatListClick(ev) {
    const removeId = closestTo(ev, "[data-remove]")?.dataset.remove;
    if (removeId) {
      this.history.remove(removeId, { hide: true });
      this.history.cleanup();
      this.chats = this.chats.filter((c) => c.id !== removeId);
      this.renderChatList();
      if (this.conversation?.chatId === removeId) this.startDraft();
      return;
    }
    const id = closestTo(ev, "[data-chat]")?.dataset.chat;
    if (id && (id !== this.conversation?.chatId || this.terminals.view)) {
      this.closeDrawer();
      await this.openChat(id);
    }
  }

  async openChat(chatId) {
    if (this.terminals.view) this.terminals.hide();
    this.conversation?.close();
    const conv = new Conversation({
      chatId,
      api: this.api,
      socket: this.socket,
      queue: this.queue,
      history: this.history,
      view: this.view,
      notify: (notice, clearId) => {
        if (notice) this.notice(notice.id ?? "chat", notice.kind, notice.text, notice.ttlMs ?? 0);
        else this.clearNotice(clearId ?? "chat");
      },
      announce: (text) => this.announce(text),
    });
    this.conversation = conv;
    this.clearNotice("chat");
    this.clearNotice("no_worker");
    this.view.attach(conv);
    history.replaceState(null, "", `${location.pathname}#chat=${encodeURIComponent(chatId)}`);
    this.renderChatList();
    this.setTitle(this.chats.find((c) => c.id === chatId)?.title);
    try {
      await conv.open();
      if (conv === this.conversation) this.setTitle(conv.title);
    } catch (err) {
      if (conv === this.conversation) this.handleApiError(err);
    }
    this.renderTurn();
  }

  startDraft() {
    if (this.terminals.view) this.terminals.hide();
    this.conversation?.close();
    this.conversation = null;
    this.view.detach();
    this.clearNotice("chat");
    this.clearNotice("no_worker");
    history.replaceState(null, "", location.pathname);
    this.setTitle(null);
    this.renderChatList();
    this.renderTurn();
    $("input").focus();
  }

  /** A terminal took the main column (or gave it back to the conversation). */
  showTerminal(shown) {
    const on = Boolean(shown);
    for (const id of ["scroller", "composer"]) $(id).hidden = on;
    if (on) $("new-badge").hidden = true;
    $("term-actions").hidden = !on;
    $("app").classList.toggle("is-terminal", on);
    if (on) {
      $("chat-title").textContent = shown.program;
      document.title = `${shown.program} · relayline`;
      if (shown.id) history.replaceState(null, "", `${location.pathname}#term=${encodeURIComponent(shown.id)}`);
      this.closeDrawer();
    } else {
      this.setTitle(this.conversation?.title ?? this.chats.find((c) => c.id === this.conversation?.chatId)?.title);
      const chat = this.conversation?.chatId;
      history.replaceState(null, "", location.pathname + (chat ? `#chat=${encodeURIComponent(chat)}` : ""));
    }
    this.renderChatList();
  }

  setTitle(title) {
    $("chat-title").textContent = title || "New chat";
    document.title = title ? `${title} · relayline` : "relayline";
  }

  renderTurn() {
    const active = Boolean(this.conversation?.activeTurn);
    $("stop").hidden = !active;
    $("composer").classList.toggle("is-busy", active);
  }

  // Sending

  resizeInput() {
    const input = $("input");
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight, Math.round(innerHeight * 0.4))}px`;
    const over = input.value.length > MAX_MESSAGE_CHARS;
    $("composer").classList.toggle("is-over", over);
    $("send").disabled = over;
  }

  async submit() {
    // One at a time: a second Enter while the first message still makes its chat would make
    // another chat; the text stays in the box until the first is sent.
    if (this.submitting) return;
    this.submitting = true;
    try {
      await this.loaded;
      await this.sendInput();
    } finally {
      this.submitting = false;
    }
  }

  async sendInput() {
    const input = $("input");
    const content = input.value.trim();
    if (!content || content.length > MAX_MESSAGE_CHARS) return;
    try {
      if (!this.conversation) await this.createChat(content);
      this.conversation.send(content);
    } catch (err) {
      if (err instanceof QueueFullError) this.notice("send", "error", apiErrorText(err), 8000);
      else this.handleApiError(err);
      return;
    }
    input.value = "";
    this.resizeInput();
    this.view.scrollToBottom();
    this.flushQueue();
  }

  async createChat(firstMessage) {
    // The first line, without Markdown punctuation, makes a readable title.
    const title = firstMessage.split("\n")[0].replace(/[*_`#>~[\]]/g, "").trim().slice(0, 60) || "New chat";
    const chat = await this.api.post("/v1/chats", { title });
    if (chat.session_token) {
      // The new token also covers the new chat; the socket reconnects with it.
      this.token = chat.session_token;
      localStorage.setItem(TOKEN_KEY, this.token);
      this.socket.setToken(() => this.token);
    }
    this.chats.unshift(chat);
    await this.openChat(chat.id);
  }

  flushQueue() {
    this.queue
      .flush((item) =>
        this.socket
          .request(OP.SEND, { topic: `chat:${item.chat_id}`, content: item.content, client_msg_id: item.client_msg_id })
          .then((ack) => {
            if (this.conversation?.chatId === item.chat_id) this.conversation.acked(item, ack);
          }),
      )
      .finally(() => this.renderConnection());
  }

  async stop() {
    try {
      await this.conversation?.stop();
    } catch (err) {
      this.handleApiError(err);
    }
  }

  async onAction(action, data) {
    const conv = this.conversation;
    if (!conv) return;
    try {
      if (action === "approve" || action === "deny") await conv.decide(data.approval, action);
      else if (action === "retry-send") {
        this.queue.retry(data.id);
        this.flushQueue();
      } else if (action === "discard-send") this.queue.discard(data.id);
    } catch (err) {
      this.handleApiError(err);
    }
  }

  handleApiError(err) {
    if (err?.status === 401 || err?.code === "unauthorized") {
      this.showSignIn("Your session has expired. Open a fresh link to continue.");
      return;
    }
    this.notice("api", "error", apiErrorText(err), 10000);
  }

  // Layout

  toggleDrawer() {
    const open = !$("app").classList.contains("is-drawer-open");
    $("app").classList.toggle("is-drawer-open", open);
    $("scrim").hidden = !open;
    $("menu-btn").setAttribute("aria-expanded", String(open));
  }

  closeDrawer() {
    $("app").classList.remove("is-drawer-open");
    $("scrim").hidden = true;
    $("menu-btn").setAttribute("aria-expanded", "false");
  }

  showSignIn(reason) {
    $("signin").hidden = false;
    $("app").inert = true;
    if (reason) $("signin-reason").textContent = reason;
    $("signin-token").focus();
  }
}

const app = new ChatApp();
globalThis.relayline = app; // for the console and the browser tests
app.start().catch((err) => console.error("relayline: start failed", err));
