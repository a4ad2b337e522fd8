// The public widget: a visitor with the tenant's access code (in the address, #code=…) gets a
// chat of their own, after a proof of work when the relay asks for one. The conversation
// itself is the same machinery as the main chat page.

import { Api } from "../sdk/api.js";
import { Conversation } from "./conversation.js";
import { DebugOverlay } from "./debug.js";
import { apiErrorText, connectionText } from "./errors.js";
import { MessageListView } from "./message_list.js";
import { OfflineQueue } from "../sdk/offline_queue.js";
import { solveChallenge } from "./pow.js";
import { LIMITS, OP } from "../sdk/protocol.js";
import { loadRenderer } from "./render.js";
import { RelaySocket } from "../sdk/socket.js";
import { HistoryStore } from "../sdk/store.js";
import { closestTo } from "./dom.js";

/** An element of the page by id (inputs, buttons, sections: the caller knows which). */
const $ = (/** @type {string} */ id) => /** @type {any} */ (document.getElementById(id));
const MAX_MESSAGE_CHARS = LIMITS.maxMessageChars; // the relay's default; it answers 422 past its own

function readCode() {
  return new URLSearchParams(location.hash.slice(1)).get("code");
}

function storageKey(code) {
  // One visitor chat per code and browser; the code itself is not stored.
  let h = 0;
  for (let i = 0; i < code.length; i += 1) h = (Math.imul(h, 31) + code.charCodeAt(i)) | 0;
  return `relayline.widget.${(h >>> 0).toString(36)}`;
}

class Widget {
  constructor() {
    this.code = readCode();
    this.visitor = null;
    this.api = new Api({ token: () => this.visitor?.token });
    this.history = new HistoryStore({ storage: localStorage, prefix: "relayline.widget.history.", limits: { maxChats: 5 } });
    this.queue = new OfflineQueue({ storage: sessionStorage, key: "relayline.widget.outbox" });
    this.conversation = null;
    this.connection = { state: "idle" };
    this.socket = new RelaySocket({
      url: `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/ws`,
      token: () => this.visitor?.token,
    });
    this.debug = new DebugOverlay({ getState: () => ({ connection: connectionText(this.connection) }) });
    this.view = new MessageListView({
      scroller: $("scroller"),
      list: $("messages"),
      typing: $("typing"),
      badge: $("new-badge"),
      empty: $("empty"),
      onAction: (action, data) => this.onAction(action, data),
      onTurnChange: () => {
        $("stop").hidden = !this.conversation?.activeTurn;
      },
    });
  }

  async start() {
    this.history.cleanup();
    await loadRenderer();
    this.bind();
    if (!this.code) {
      this.notice("This chat link is incomplete: it needs an access code.");
      $("input").disabled = true;
      return;
    }
    const saved = JSON.parse(localStorage.getItem(storageKey(this.code)) || "null");
    if (saved && saved.expires_at * 1000 > Date.now() + 60_000) await this.begin(saved);
  }

  bind() {
    const s = this.socket;
    s.on("packet", (p) => this.debug.record(p));
    s.on("state", (status) => {
      this.connection = status;
      $("conn").dataset.state = status.state;
      $("conn").lastChild.textContent = connectionText(status);
    });
    s.on("event", (event) => this.conversation?.apply(event));
    s.on("ready", () => this.flush());
    s.on("auth", () => {
      localStorage.removeItem(storageKey(this.code));
      this.notice("This chat has expired. Reload the page to start a new one.");
    });
    addEventListener("online", () => s.reconnectNow());
    addEventListener("offline", () => s.suspend("network"));
    $("composer").addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.submit();
    });
    $("input").addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        this.submit();
      }
    });
    $("stop").addEventListener("click", () => this.conversation?.stop().catch((err) => this.notice(apiErrorText(err))));
    $("notices").addEventListener("click", (ev) => closestTo(ev, ".notice__close")?.parentElement.remove());
  }

  notice(text) {
    const box = document.createElement("div");
    box.className = "notice notice--warn";
    box.setAttribute("role", "alert");
    const span = document.createElement("span");
    span.textContent = text;
    const close = document.createElement("button");
    close.type = "button";
    close.className = "notice__close";
    close.setAttribute("aria-label", "Dismiss");
    close.textContent = "×";
    box.append(span, close);
    $("notices").replaceChildren(box);
  }

  /** Trade the access code for a visitor session, solving the challenge when asked to. */
  async join() {
    const verify = $("verify");
    const body = { code: this.code };
    const challenge = await this.api.get("/v1/public/challenge");
    if (challenge.required) {
      verify.hidden = false;
      verify.textContent = "Checking that you're a person… (this takes a moment, once)";
      body.challenge = challenge.challenge;
      body.solution = await solveChallenge(challenge.challenge, challenge.bits);
    }
    try {
      const visitor = await this.api.post("/v1/public/sessions", body);
      localStorage.setItem(storageKey(this.code), JSON.stringify(visitor));
      return visitor;
    } finally {
      verify.hidden = true;
    }
  }

  async begin(visitor) {
    this.visitor = visitor;
    this.socket.connect();
    this.conversation = new Conversation({
      chatId: visitor.chat_id,
      api: this.api,
      socket: this.socket,
      queue: this.queue,
      history: this.history,
      view: this.view,
      notify: (notice) => notice && this.notice(notice.text),
      announce: (text) => {
        $("announcer").textContent = text;
      },
    });
    this.view.attach(this.conversation);
    try {
      await this.conversation.open();
    } catch (err) {
      if (err?.status === 401 || err?.status === 404) {
        localStorage.removeItem(storageKey(this.code));
        this.notice("This chat has expired. Reload the page to start a new one.");
      } else this.notice(apiErrorText(err));
    }
  }

  async submit() {
    const input = $("input");
    const content = input.value.trim();
    if (!content || content.length > MAX_MESSAGE_CHARS) return;
    input.disabled = true;
    try {
      if (!this.visitor) await this.begin(await this.join());
      this.conversation.send(content);
      input.value = "";
      this.flush();
    } catch (err) {
      this.notice(apiErrorText(err));
    } finally {
      input.disabled = false;
      input.focus();
    }
  }

  flush() {
    this.queue.flush((item) =>
      this.socket
        .request(OP.SEND, { topic: `chat:${item.chat_id}`, content: item.content, client_msg_id: item.client_msg_id })
        .then((ack) => this.conversation?.acked(item, ack)),
    );
  }

  onAction(action, data) {
    const conv = this.conversation;
    if (!conv) return;
    if (action === "approve" || action === "deny") conv.decide(data.approval, action).catch((err) => this.notice(apiErrorText(err)));
    else if (action === "retry-send") {
      this.queue.retry(data.id);
      this.flush();
    } else if (action === "discard-send") this.queue.discard(data.id);
  }
}

const widget = new Widget();
globalThis.relayline = widget; // for the console and the browser tests
widget.start().catch((err) => console.error("relayline: widget failed to start", err));
