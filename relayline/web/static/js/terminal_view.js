// One terminal on the page: an xterm.js screen kept in step with a PTY session on a worker.
// The relay answers a subscription with the screen as it is now (a `term.output` snapshot),
// then live output; after `events.missed` the screen is redrawn from the next snapshot. Keys
// typed while the link is down wait in a bounded queue and go out once it is back; the
// window's size is told to the other end once it settles.

import { bridgeXtermStyles } from "./csp_styles.js";
import { EVENT, OP } from "../sdk/protocol.js";
import { DEFAULT_CHUNK_BYTES, TerminalInputQueue, utf8Chunks } from "./terminal_input_queue.js";
import { ResizeReporter } from "./terminal_resize.js";
import { sessionStateOf } from "./terminal_state.js";
import { loadXterm, themeFrom } from "./xterm_loader.js";

// Following a terminal again after the relay refused or lost it (a restarted relay learns its
// terminals only when their worker is back): subscribe again after this long, doubling...
const FOLLOW_RETRY_BASE_MS = 500;
const FOLLOW_RETRY_MAX_MS = 8000;
// ...for this long before the terminal counts as gone (the relay keeps a detached session
// for the worker's detach grace, 60 s by default, and a margin).
const FOLLOW_GIVE_UP_MS = 90_000;
// A snapshot asked for and not come after this long is asked for again, then after twice as
// long, up to the maximum.
const SNAPSHOT_WAIT_MS = 3000;
const SNAPSHOT_WAIT_MAX_MS = 30_000;



export class TerminalView {
  /**
   * @param {object} options
   * @param {string} options.id
   * @param {string} options.program
   * @param {string} [options.topic]
   * @param {import("../sdk/api.js").Api} options.api
   * @param {import("../sdk/socket.js").RelaySocket} options.socket
   * @param {HTMLElement} options.container the element xterm draws in
   * @param {(change: {kind: string, [key: string]: any}) => void} [options.onChange] state, exit, drop, error
   * @param {number} [options.inputLimitBytes]
   */
  constructor({ id, program, topic = `term:${id}`, api, socket, container, onChange = () => {}, inputLimitBytes }) {
    this.id = id;
    this.program = program;
    this.topic = topic;
    this.api = api;
    this.socket = socket;
    this.container = container;
    this.onChange = onChange;
    this.state = "connecting";
    this.exit = null;
    this.writable = true;
    this.term = null;
    this.fit = null;
    this.closed = false;
    this.reloading = null;
    this.flushing = false;
    this.awaitingSnapshot = true;
    this.painted = false;
    this.missed = false;
    // Whether the relay took our subscription: keys wait until it has (it refuses term.input
    // for a terminal it does not know yet).
    this.following = false;
    this.followTimer = null;
    this.followSince = null;
    this.followDelay = FOLLOW_RETRY_BASE_MS;
    this.snapshotTimer = null;
    this.snapshotWait = SNAPSHOT_WAIT_MS;
    this.cleanups = [];
    this.queue = new TerminalInputQueue({
      limitBytes: inputLimitBytes,
      onDrop: (report) => this.onChange({ kind: "dropped", ...report }),
    });
    this.resizer = new ResizeReporter({ send: (size) => this.sendResize(size) });
  }

  /** Draw the screen in the container; the size it would have, before any snapshot. */
  async mount() {
    const { Terminal, FitAddon } = await loadXterm();
    const styles = getComputedStyle(this.container);
    const term = new Terminal({
      fontFamily: styles.getPropertyValue("--mono").trim() || "monospace",
      fontSize: 13.5,
      lineHeight: 1.2,
      cursorBlink: true,
      scrollback: 5000,
      theme: themeFrom(this.container),
      allowProposedApi: false,
    });
    this.cleanups.push(bridgeXtermStyles(this.container));
    this.fit = new FitAddon();
    term.loadAddon(this.fit);
    term.open(this.container);
    this.term = term;
    this.fitNow();
    const onData = term.onData((data) => this.input(data));
    const watcher = new ResizeObserver(() => this.onContainerResize());
    watcher.observe(this.container);
    this.cleanups.push(() => onData.dispose(), () => watcher.disconnect());
    return { cols: term.cols, rows: term.rows };
  }

  /** Load the screen as it is now and follow it live. */
  async attach() {
    await this.reload();
  }

  fitNow() {
    if (!this.term || !this.container.isConnected || this.container.clientWidth === 0) return;
    try {
      this.fit.fit();
    } catch {
      // Not laid out yet (hidden): the next resize fits it.
    }
  }

  onContainerResize() {
    if (this.closed || !this.term) return;
    this.fitNow();
    this.resizer.request(this.term.cols, this.term.rows);
    this.onChange({ kind: "size", cols: this.term.cols, rows: this.term.rows });
  }

  /**
   * Learn the session's state, then follow its topic. The relay answers a new subscription
   * with the screen as it is now (a `term.output` snapshot); output before it is not drawn.
   */
  reload() {
    this.reloading ??= (async () => {
      try {
        let body;
        try {
          body = await this.api.get(`/v1/terminals/${encodeURIComponent(this.id)}`);
        } catch (err) {
          if (err?.status !== 404 || this.closed) throw err;
          // Unknown to the relay: ended long ago, or a relay that restarted before the
          // terminal's worker came back. Ask again, paced, until it is known or given up.
          this.retryFollow();
          return;
        }
        if (this.closed) return;
        const info = sessionStateOf(body);
        if (info.program) this.program = info.program;
        this.writable = info.writable;
        this.setState(info.state, info.exit);
        this.follow();
      } finally {
        this.reloading = null;
      }
    })();
    return this.reloading;
  }

  /** Replace what the screen shows with a snapshot drawn at `cols` x `rows`. */
  paint(text, cols, rows) {
    const term = this.term;
    term.reset();
    // The snapshot was drawn at the session's size: write it at that size, then fit ours.
    if (cols > 0 && rows > 0 && (cols !== term.cols || rows !== term.rows)) term.resize(cols, rows);
    if (text) term.write(text);
    this.awaitingSnapshot = false;
    this.snapshotWait = SNAPSHOT_WAIT_MS;
    this.clearSnapshotWatch();
    this.fitNow();
    this.resizer.forget();
    this.resizer.request(term.cols, term.rows);
    this.resizer.flush();
  }

  setState(state, exit = null) {
    this.state = state;
    if (exit) this.exit = exit;
    this.onChange({ kind: "state", state, exit: this.exit });
  }

  /** An event of this terminal's topic. */
  apply(event) {
    if (this.closed || event.topic !== this.topic || !this.term) return;
    const data = event.data ?? {};
    switch (event.type) {
      case EVENT.TERM_OUTPUT:
        if (typeof data.data !== "string") break;
        if (data.snapshot) {
          const redrawn = this.painted;
          this.paint(data.data, data.cols, data.rows);
          this.painted = true;
          if (redrawn && this.missed) this.onChange({ kind: "redrawn" });
          this.missed = false;
        } else if (!this.awaitingSnapshot) {
          this.term.write(data.data);
        }
        break;
      case EVENT.TERM_STATE:
        if (this.state !== "exited" && typeof data.state === "string") this.setState(data.state);
        break;
      case EVENT.TERM_EXITED:
        this.setState("exited", { reason: data.reason ?? null, status: data.status ?? null, signal: data.signal ?? null, error: data.error ?? null });
        break;
      case EVENT.EVENTS_MISSED:
        // What was missed cannot be replayed: the relay sends the screen as it is now.
        this.awaitingSnapshot = true;
        this.missed = true;
        this.watchSnapshot();
        break;
      default:
        break;
    }
  }

  /** Keys from xterm: straight to the relay, or into the queue while the link is down. */
  input(data) {
    if (this.closed || this.state === "exited" || !this.writable) return;
    if (this.socket.online && this.following && this.queue.empty && !this.flushing) {
      for (const piece of utf8Chunks(data, DEFAULT_CHUNK_BYTES)) this.sendInput(piece);
      return;
    }
    this.queue.push(data);
    this.onChange({ kind: "queued", bytes: this.queue.size });
    if (this.socket.online && this.following) this.flush();
  }

  sendInput(data) {
    return this.socket.request(OP.TERM_INPUT, { topic: this.topic, data }).catch((err) => {
      // Never written to a socket: it waits. Written but unanswered: it may have arrived, and
      // sending it again could type it twice, so it is not resent.
      if (err?.code === "offline") {
        this.queue.requeueFront([data]);
        this.onChange({ kind: "queued", bytes: this.queue.size });
      } else if (!err?.retryable) {
        this.onChange({ kind: "error", error: err });
      }
    });
  }

  /**
   * The link is back and the socket renewed its subscriptions (`results`: how each went). If
   * ours was taken, the size is told again and queued keys go out; if not (a relay that
   * restarted knows the terminal only once its worker is back), we ask again, paced.
   * @param {{topic?: string, ok: boolean}[]} [results]
   */
  async online(results = []) {
    if (this.closed) return;
    // No result for our topic: it was never taken on any link (the relay did not know the
    // terminal when the page opened it); follow() and its retries see to it.
    const mine = results.find((r) => r.topic === this.topic);
    if (mine) this.following = mine.ok;
    if (!this.following) {
      if (mine) this.retryFollow();
      return;
    }
    if (this.state === "detached") this.refreshState();
    this.resizer.forget();
    this.resizer.flush();
    if (this.awaitingSnapshot) this.watchSnapshot();
    await this.flush();
  }

  /** The session's state as the relay has it now (after we followed it again). */
  refreshState() {
    this.api.get(`/v1/terminals/${encodeURIComponent(this.id)}`).then(
      (body) => {
        if (this.closed) return;
        const info = sessionStateOf(body);
        this.writable = info.writable;
        this.setState(info.state, info.exit);
      },
      () => {
        // Not known (yet) or not reachable: term.state events still tell us.
      },
    );
  }

  /** Subscribe to the terminal's topic (the relay answers with a snapshot, then live). */
  follow() {
    if (this.closed) return;
    this.awaitingSnapshot = true;
    this.watchSnapshot();
    this.socket.subscribe(this.topic).then(
      () => {
        if (this.closed) return;
        this.following = true;
        this.followSince = null;
        this.followDelay = FOLLOW_RETRY_BASE_MS;
        if (this.state === "detached") this.refreshState();
        this.resizer.forget();
        this.resizer.flush();
        this.flush();
      },
      (err) => {
        // Offline: the socket subscribes once it is back, and online() hears how it went.
        if (err?.code !== "offline") this.retryFollow();
      },
    );
  }

  retryFollow() {
    if (this.closed || this.followTimer !== null || this.state === "exited") return;
    const now = Date.now();
    this.followSince ??= now;
    if (now - this.followSince > FOLLOW_GIVE_UP_MS) {
      this.setState("exited", { reason: "lost" });
      return;
    }
    if (this.state !== "detached") this.setState("detached");
    const delay = this.followDelay;
    this.followDelay = Math.min(FOLLOW_RETRY_MAX_MS, this.followDelay * 2);
    this.followTimer = setTimeout(() => {
      this.followTimer = null;
      // Offline, this still registers the topic: the socket subscribes once it is back, and
      // online() hears how that went.
      this.follow();
    }, delay);
  }

  /** Ask for a snapshot again should the one asked for not come (its worker was away). */
  watchSnapshot() {
    this.clearSnapshotWatch();
    const wait = this.snapshotWait;
    this.snapshotTimer = setTimeout(() => {
      this.snapshotTimer = null;
      if (this.closed || !this.awaitingSnapshot || !this.socket.online || !this.following) return;
      this.snapshotWait = Math.min(SNAPSHOT_WAIT_MAX_MS, wait * 2);
      this.follow();
    }, wait);
  }

  clearSnapshotWatch() {
    if (this.snapshotTimer !== null) clearTimeout(this.snapshotTimer);
    this.snapshotTimer = null;
  }

  /** Send what waits, once each, in order, for as long as the link holds. */
  async flush() {
    if (this.flushing) return;
    this.flushing = true;
    try {
      while (!this.closed && !this.queue.empty && this.socket.online && this.following) {
        const frames = this.queue.drain();
        for (let i = 0; i < frames.length; i += 1) {
          try {
            await this.socket.request(OP.TERM_INPUT, { topic: this.topic, data: frames[i] });
          } catch (err) {
            if (err?.code === "offline" || err?.code === "disconnected") {
              // Not written ("offline"): it waits with the rest. Written when the link dropped:
              // it may have arrived, so only what follows it waits.
              this.queue.requeueFront(frames.slice(err.code === "offline" ? i : i + 1));
              return;
            }
            if (!err?.retryable) this.onChange({ kind: "error", error: err });
          }
        }
      }
    } finally {
      this.flushing = false;
      this.onChange({ kind: "queued", bytes: this.queue.size });
    }
  }

  sendResize({ cols, rows }) {
    if (this.closed || this.state === "exited" || !this.writable || !this.socket.online) return;
    this.socket.request(OP.TERM_RESIZE, { topic: this.topic, cols, rows }).catch(() => {
      // Told again after the next reconnect (online() sends the current size).
    });
  }

  focus() {
    this.term?.focus();
  }

  /** Text of the visible rows (for tests and screen readers' sake, not for rendering). */
  screenText() {
    const buf = this.term?.buffer.active;
    if (!buf) return "";
    const lines = [];
    for (let y = 0; y < this.term.rows; y += 1) lines.push(buf.getLine(buf.viewportY + y)?.translateToString(true) ?? "");
    return lines.join("\n");
  }

  /** Stop following the terminal here (it keeps running on the worker). */
  dispose() {
    this.closed = true;
    this.clearSnapshotWatch();
    if (this.followTimer !== null) clearTimeout(this.followTimer);
    this.resizer.dispose();
    this.socket.unsubscribe(this.topic);
    for (const fn of this.cleanups.splice(0)) fn();
    this.term?.dispose();
    this.term = null;
  }
}
