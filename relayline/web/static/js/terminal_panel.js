// Terminals in the chat page: the sidebar's list and program picker, and the panel that shows
// one terminal in place of the conversation. Terminals this browser opened are remembered
// (terminal_store.js), so a reload reattaches to the one that was showing, screen and all.

import { apiErrorText } from "./errors.js";
import { exitText } from "./terminal_state.js";
import { TerminalView } from "./terminal_view.js";

/**
 * The programs a `GET /v1/terminals` answer offers: names of the workers' allowlisted
 * programs, each once, sorted.
 * @param {any} body
 * @returns {string[]}
 */
export function programsOf(body) {
  const raw = Array.isArray(body?.programs) ? body.programs : [];
  const names = raw.map((p) => (typeof p === "string" ? p : p?.name)).filter((p) => typeof p === "string" && p);
  return [...new Set(names)].sort();
}

/** The sessions in a `GET /v1/terminals` answer. */
export function sessionsOf(body) {
  const raw = Array.isArray(body?.items) ? body.items : Array.isArray(body?.terminals) ? body.terminals : [];
  return raw.filter((t) => t && typeof t.id === "string");
}

const LINK_TEXT = {
  connecting: "Connecting to the relay…",
  reconnecting: "Disconnected — reconnecting. What you type is kept and sent when the link is back.",
  offline: "Disconnected. What you type is kept and sent when the link is back.",
};

// A remembered terminal the relay does not list is forgotten only after this long: a relay
// that restarted learns its terminals when their workers reconnect.
const MISSING_GRACE_MS = 90_000;
const MISSING_RECHECK_MS = 15_000;

const STATE_TEXT = {
  connecting: "connecting",
  starting: "starting",
  running: "running",
  detached: "worker away",
  exited: "ended",
};

export class TerminalPanel {
  /**
   * @param {object} options
   * @param {import("../sdk/api.js").Api} options.api
   * @param {import("../sdk/socket.js").RelaySocket} options.socket
   * @param {import("./terminal_store.js").TerminalStore} options.store
   * @param {(id: string) => any} options.$ the page's elements by id
   * @param {(shown: {id: string, program: string} | null) => void} options.onShow the panel replaced the conversation (or gave it back)
   * @param {(id: string, kind: string, text: string, ttlMs?: number) => void} options.notice
   * @param {(id: string) => void} options.clearNotice
   * @param {(token: string) => void} [options.onToken] a session token that also lists a terminal just opened
   */
  constructor({ api, socket, store, $, onShow, notice, clearNotice, onToken = () => {} }) {
    this.api = api;
    this.socket = socket;
    this.store = store;
    this.$ = $;
    this.onShow = onShow;
    this.notice = notice;
    this.clearNotice = clearNotice;
    this.onToken = onToken;
    /** @type {TerminalView | null} */
    this.view = null;
    this.programs = [];
    this.sessions = new Map(); // id -> {id, program, state}
    this.link = "idle";
    this.missing = new Map(); // id -> when the relay's list first lacked it
    this.recheck = null;
  }

  get currentId() {
    return this.view?.id ?? null;
  }

  bind() {
    const $ = this.$;
    $("term-new").addEventListener("click", () => this.toggleMenu());
    $("term-menu").addEventListener("click", (ev) => {
      const program = ev.target.closest?.("[data-program]")?.dataset.program;
      if (program) {
        this.closeMenu();
        this.openProgram(program);
      }
    });
    $("term-list").addEventListener("click", (ev) => {
      const forget = ev.target.closest?.("[data-forget]")?.dataset.forget;
      if (forget) {
        this.forget(forget);
        return;
      }
      const id = ev.target.closest?.("[data-term]")?.dataset.term;
      if (id && id !== this.currentId) this.show(id);
    });
    $("term-end").addEventListener("click", () => this.end());
    $("term-close").addEventListener("click", () => this.hide());
    document.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape" && !$("term-menu").hidden) this.closeMenu();
    });
  }

  /** Start-up: sweep the remembered terminals, list what the relay has, offer its programs. */
  async start() {
    this.store.cleanup();
    await this.refresh();
  }

  async refresh() {
    let body = null;
    try {
      body = await this.api.get("/v1/terminals");
    } catch (err) {
      // A relay without terminals (or a session that may not use them): the section says so.
      if (err?.status !== 404 && err?.status !== 403) this.notice("term", "error", apiErrorText(err), 8000);
    }
    this.programs = programsOf(body);
    const live = new Map(sessionsOf(body).map((t) => [t.id, t]));
    const remembered = this.store.read();
    this.sessions.clear();
    const now = Date.now();
    for (const r of remembered) {
      const t = live.get(r.id);
      if (t || !body) {
        this.missing.delete(r.id);
      } else {
        // Not on the relay's list: gone, or its worker has not reconnected to a relay that
        // restarted. Only a long absence counts as gone.
        if (!this.missing.has(r.id)) this.missing.set(r.id, now);
        if (now - this.missing.get(r.id) > MISSING_GRACE_MS && r.id !== this.currentId) {
          this.missing.delete(r.id);
          this.store.forget(r.id);
          continue;
        }
      }
      this.sessions.set(r.id, { id: r.id, program: t?.program ?? r.program, state: t?.state ?? (t || !body ? "running" : "detached") });
    }
    clearTimeout(this.recheck);
    this.recheck = this.missing.size ? setTimeout(() => this.refresh(), MISSING_RECHECK_MS) : null;
    // Running terminals this session may use, opened elsewhere (another tab, another device).
    for (const t of live.values()) {
      if (!this.sessions.has(t.id) && t.state !== "exited") {
        this.sessions.set(t.id, { id: t.id, program: String(t.program ?? "terminal"), state: t.state ?? "running" });
      }
    }
    this.render();
  }

  render() {
    const $ = this.$;
    const items = [...this.sessions.values()].map((t) => {
      const li = document.createElement("li");
      li.className = "chat-item term-item";
      li.dataset.state = t.state;
      if (t.id === this.currentId) li.classList.add("is-active");
      const open = document.createElement("button");
      open.type = "button";
      open.className = "chat-item__open";
      open.dataset.term = t.id;
      if (t.id === this.currentId) open.setAttribute("aria-current", "page");
      const dot = document.createElement("span");
      dot.className = "term-item__dot";
      dot.setAttribute("aria-hidden", "true");
      const title = document.createElement("span");
      title.className = "chat-item__title term-item__title";
      title.textContent = t.program;
      const state = document.createElement("span");
      state.className = "chat-item__when";
      state.textContent = STATE_TEXT[t.state] ?? t.state;
      open.append(dot, title, state);
      const forget = document.createElement("button");
      forget.type = "button";
      forget.className = "chat-item__remove";
      forget.dataset.forget = t.id;
      forget.setAttribute("aria-label", `Remove the ${t.program} terminal from this list`);
      forget.textContent = "×";
      li.append(open, forget);
      return li;
    });
    $("term-list").replaceChildren(...items);
    // A relay whose workers run no terminals (and none open here): no section at all.
    $("term-nav").hidden = items.length === 0 && this.programs.length === 0;
    $("term-list-empty").hidden = items.length > 0;
    $("term-list-empty").textContent = "Open a program from the list to start.";
    $("term-new").disabled = this.programs.length === 0;
    const menu = this.programs.map((p) => {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "term-menu__item";
      b.setAttribute("role", "menuitem");
      b.dataset.program = p;
      const name = document.createElement("span");
      name.className = "term-menu__name";
      name.textContent = p;
      b.append(name);
      return b;
    });
    $("term-menu").replaceChildren(...menu);
  }

  toggleMenu() {
    const menu = this.$("term-menu");
    if (menu.hidden) {
      menu.hidden = false;
      this.$("term-new").setAttribute("aria-expanded", "true");
      menu.querySelector("button")?.focus();
    } else this.closeMenu();
  }

  closeMenu() {
    this.$("term-menu").hidden = true;
    this.$("term-new").setAttribute("aria-expanded", "false");
  }

  // Showing one terminal

  makeView(id, program) {
    return new TerminalView({
      id,
      program,
      topic: id ? `term:${id}` : undefined,
      api: this.api,
      socket: this.socket,
      container: this.$("term-screen"),
      onChange: (change) => this.onViewChange(change),
    });
  }

  reveal(id, program) {
    this.view?.dispose();
    this.$("term-screen").replaceChildren();
    this.$("term-panel").hidden = false;
    this.onShow({ id, program });
    this.renderBanner();
  }

  /** Start `program` on a worker and show it. */
  async openProgram(program) {
    this.reveal(null, program);
    const view = this.makeView(null, program);
    this.view = view;
    try {
      const size = await view.mount();
      const created = await this.api.post("/v1/terminals", { program, cols: size.cols, rows: size.rows });
      if (view !== this.view) return;
      view.id = created.id;
      view.topic = created.topic ?? `term:${created.id}`;
      // A session token opened it: the relay's new token lists it, so a reload (or a token
      // minted later from this one) still reaches it.
      if (created.session_token) this.onToken(created.session_token);
      this.store.remember({ id: created.id, program });
      this.sessions.set(created.id, { id: created.id, program, state: "running" });
      this.onShow({ id: created.id, program });
      this.render();
      await view.attach();
      view.focus();
    } catch (err) {
      if (view === this.view) {
        this.notice("term", "error", apiErrorText(err), 10000);
        this.hide();
      }
    }
  }

  /** Show a terminal this browser knows (after a reload too): the screen as it is now. */
  async show(id) {
    const known = this.sessions.get(id) ?? this.store.read().find((r) => r.id === id);
    const program = known?.program ?? "terminal";
    this.reveal(id, program);
    const view = this.makeView(id, program);
    this.view = view;
    this.store.remember({ id, program });
    this.render();
    try {
      await view.mount();
      await view.attach();
      if (view === this.view) view.focus();
    } catch (err) {
      if (view !== this.view) return;
      if (err?.status === 404) {
        this.notice("term", "info", `The ${program} terminal has ended and is no longer on the relay.`, 8000);
        this.forget(id);
      } else {
        this.notice("term", "error", apiErrorText(err), 10000);
      }
    }
  }

  /** Give the page back to the conversation; the terminal keeps running. */
  hide() {
    this.view?.dispose();
    this.view = null;
    this.$("term-panel").hidden = true;
    this.$("term-screen").replaceChildren();
    this.onShow(null);
    this.render();
  }

  forget(id) {
    this.store.forget(id);
    this.sessions.delete(id);
    this.missing.delete(id);
    if (id === this.currentId) this.hide();
    else this.render();
  }

  /** End the program on the worker. */
  async end() {
    const view = this.view;
    if (!view?.id) return;
    try {
      await this.api.delete(`/v1/terminals/${encodeURIComponent(view.id)}`);
    } catch (err) {
      if (err?.status !== 404) {
        this.notice("term", "error", apiErrorText(err), 8000);
        return;
      }
    }
    this.forget(view.id);
  }

  // Events from the page's socket

  apply(event) {
    if (this.view && event.topic === this.view.topic) this.view.apply(event);
  }

  setLink(state) {
    this.link = state;
    this.renderBanner();
  }

  /** @param {{results?: {topic?: string, ok: boolean}[]}} [info] the socket's "ready" */
  ready(info = {}) {
    this.view?.online(info.results ?? []);
    // Workers may have come or gone while the link was down.
    this.refresh();
  }

  onViewChange(change) {
    const view = this.view;
    if (!view) return;
    if (change.kind === "state" && view.id) {
      const s = this.sessions.get(view.id);
      if (s) s.state = change.state;
      this.render();
    } else if (change.kind === "dropped") {
      const kb = (change.totalDropped / 1024).toFixed(change.totalDropped < 10_240 ? 1 : 0);
      this.notice(
        "term-drop",
        "warn",
        `Too much typed while offline: the oldest ${kb} KB of it was dropped; the newest 64 KB will be sent when the link is back.`,
      );
    } else if (change.kind === "redrawn") {
      this.notice("term-redraw", "info", "Some output could not be replayed, so the terminal was redrawn as it is now.", 6000);
    } else if (change.kind === "error") {
      this.notice("term", "error", apiErrorText(change.error), 8000);
    }
    this.renderBanner();
  }

  renderBanner() {
    const $ = this.$;
    const view = this.view;
    const banner = $("term-banner");
    const panel = $("term-panel");
    let kind = "";
    let text = "";
    if (view?.state === "exited") {
      kind = "exited";
      text = exitText(view.exit);
    } else if (view?.state === "detached" && this.link === "online") {
      kind = "offline";
      text = "The worker running this terminal is away; waiting for it to come back. What you type is kept.";
    } else if (this.link !== "online" && this.link !== "idle") {
      kind = "offline";
      text = LINK_TEXT[this.link] ?? LINK_TEXT.offline;
    }
    const queued = view?.queue.size ?? 0;
    if (kind === "offline" && queued) text += ` ${queued} ${queued === 1 ? "byte" : "bytes"} typed, waiting to be sent.`;
    panel.dataset.link = this.link === "online" ? "online" : "offline";
    panel.dataset.state = view?.state ?? "idle";
    banner.hidden = !kind;
    banner.dataset.kind = kind;
    $("term-banner-text").textContent = text;
    $("term-end").hidden = !view?.id || view.state === "exited";
    const size = view?.term ? `${view.term.cols}×${view.term.rows}` : "";
    const access = view && !view.writable ? "view only" : "";
    $("term-meta").textContent = view ? [STATE_TEXT[view.state] ?? view.state, size, access].filter(Boolean).join(" · ") : "";
    $("term-meta").dataset.state = view?.state ?? "";
  }
}
