// The relay's client socket (/v1/ws): authentication by subprotocol, ops with refs and acks,
// subscriptions that resume from (epoch, seq) after every reconnect, an application-level
// heartbeat, and reconnects paced by a configurable backoff policy. It owns no UI; it reports
// its state and every packet to whoever listens.

import { CLOSE, EVENT, OP } from "./protocol.js";
import { closeAction, ReconnectPolicy } from "./reconnect.js";

export { CLOSE_ACTIONS, closeAction, DEFAULT_RECONNECT, ReconnectPolicy } from "./reconnect.js";

const SUBPROTOCOL = "relayline.v1";
const textEncoder = typeof TextEncoder === "function" ? new TextEncoder() : null;

function byteLength(text) {
  return textEncoder ? textEncoder.encode(text).length : text.length;
}

const SUBSCRIBE_RETRY_BASE_MS = 500;
const SUBSCRIBE_RETRY_MAX_MS = 10_000;

export class SocketError extends Error {
  constructor(code, detail) {
    super(detail || code);
    this.name = "SocketError";
    this.code = code;
    // Whether sending the same op again later may succeed (the link failed, not the op).
    this.retryable = ["disconnected", "offline", "timeout"].includes(code);
  }
}

/**
 * One logical connection that survives reconnects.
 *
 * Events (via `on(type, fn)`): "state" {state, retryInMs, code, reason}, "event" (an envelope),
 * "ready" (after each successful (re)connect and resubscription), "error" (an error frame
 * without a ref), "auth" (the token was refused: 4401), "packet" (every frame in or out).
 * States: idle, connecting, online, reconnecting, offline.
 */
export class RelaySocket {
  /**
   * @param {object} options
   * @param {string} options.url
   * @param {string | null | (() => string | null)} options.token
   * @param {ReconnectPolicy | import("./reconnect.js").ReconnectOptions} [options.policy]
   * @param {any} [options.WebSocketImpl]
   * @param {any} [options.timers] setTimeout/clearTimeout/setInterval/clearInterval
   * @param {number} [options.heartbeatMs]
   * @param {number} [options.ackTimeoutMs]
   */
  constructor({
    url,
    token,
    policy = new ReconnectPolicy(),
    WebSocketImpl = globalThis.WebSocket,
    timers = globalThis,
    heartbeatMs = 20_000,
    ackTimeoutMs = 10_000,
  }) {
    this.url = url;
    this.tokenOf = typeof token === "function" ? token : () => token;
    this.policy = policy instanceof ReconnectPolicy ? policy : new ReconnectPolicy(policy);
    this.WebSocketImpl = WebSocketImpl;
    this.timers = timers;
    this.heartbeatMs = heartbeatMs;
    this.ackTimeoutMs = ackTimeoutMs;
    this.state = "idle";
    this.ws = null;
    this.topics = new Map(); // topic -> {epoch, seq}
    this.pending = new Map(); // ref -> {resolve, reject, timer, op}
    this.listeners = new Map();
    this.nextRef = 1;
    this.retryTimer = null;
    this.heartbeatTimer = null;
    this.refusedToken = null;
    this.stopped = true;
    this.lastClose = null;
  }

  on(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(fn);
    return () => this.listeners.get(type).delete(fn);
  }

  emit(type, value) {
    for (const fn of this.listeners.get(type) ?? []) {
      try {
        fn(value);
      } catch (err) {
        console.error("relayline: listener failed", err);
      }
    }
  }

  setState(state, extra = {}) {
    this.state = state;
    this.emit("state", { state, ...extra });
  }

  get online() {
    return this.state === "online";
  }

  /** Start (or restart at once) connecting. */
  connect() {
    this.stopped = false;
    this.clearRetry();
    this.open();
  }

  /** Use a new token: reconnect at once with it (subscriptions carry over). */
  setToken(token) {
    this.tokenOf = typeof token === "function" ? token : () => token;
    this.refusedToken = null;
    if (!this.stopped) this.reconnectNow();
  }

  /** Drop the current link (if any) and connect again without waiting. */
  reconnectNow() {
    this.stopped = false;
    this.clearRetry();
    this.drop("reconnect");
    this.policy.reset();
    this.open();
  }

  /** Stop for good (until connect()). */
  close() {
    this.stopped = true;
    this.clearRetry();
    this.drop("closed");
    this.setState("offline", { reason: "closed" });
  }

  /** The browser says the network is gone: stop burning attempts until it is back. */
  suspend(reason = "network") {
    this.clearRetry();
    this.drop(reason);
    if (!this.stopped) this.setState("offline", { reason });
  }

  open() {
    const token = this.tokenOf();
    if (!token) {
      this.setState("offline", { reason: "no_token" });
      return;
    }
    if (token === this.refusedToken) {
      // Never loop on a token the relay already refused; wait for setToken().
      this.setState("offline", { reason: "unauthenticated", code: CLOSE.UNAUTHENTICATED });
      return;
    }
    this.setState(this.policy.attempt === 0 ? "connecting" : "reconnecting", { retryInMs: 0 });
    let ws;
    try {
      ws = new this.WebSocketImpl(this.url, [SUBPROTOCOL, `bearer.${token}`]);
    } catch (err) {
      this.scheduleRetry("backoff", 1006, String(err));
      return;
    }
    this.ws = ws;
    this.openedWith = token;
    ws.onopen = () => this.onOpen(ws);
    ws.onmessage = (msg) => this.onMessage(ws, msg);
    ws.onclose = (ev) => this.onClose(ws, ev.code, ev.reason);
    // In browsers a close event follows every error (in the same task) and carries what we
    // need; Node 20's WebSocket reports a refused connection with an error alone, so a close
    // that has not come by the next turn is taken as a dropped link.
    ws.onerror = () => {
      this.timers.setTimeout(() => {
        if (ws !== this.ws) return;
        ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
        try {
          ws.close();
        } catch {
          // never opened
        }
        this.onClose(ws, 1006, "connection failed");
      }, 0);
    };
  }

  onOpen(ws) {
    if (ws !== this.ws) return;
    // The relay accepts even a refused handshake and closes right after with the reason, so
    // "open" is not yet "online": the first ack proves the credential was taken.
    const subscriptions = [...this.topics.entries()];
    const probes = subscriptions.length
      ? subscriptions.map(([topic, pos]) => this.sendSubscribe(topic, pos))
      : [this.request(OP.PING, {})];
    Promise.allSettled(probes).then((results) => {
      if (ws !== this.ws) return;
      // Any answer from the relay (even a refused subscription) proves the link works.
      if (results.some((r) => r.status === "fulfilled" || !r.reason?.retryable)) {
        this.policy.reset();
        this.setState("online");
        this.startHeartbeat();
        this.emit("ready", {
          results: results.map((r, i) => ({
            topic: subscriptions[i]?.[0],
            ok: r.status === "fulfilled",
            value: r.status === "fulfilled" ? r.value : undefined,
            error: r.status === "rejected" ? r.reason : undefined,
          })),
        });
      } else if (this.ws === ws) {
        this.drop("no answer");
        this.scheduleRetry("backoff", 1006, "no answer");
      }
    });
  }

  onMessage(ws, msg) {
    if (ws !== this.ws || typeof msg.data !== "string") return;
    let frame;
    try {
      frame = JSON.parse(msg.data);
    } catch {
      return;
    }
    if (!frame || typeof frame !== "object") return;
    this.emit("packet", {
      dir: "in",
      at: Date.now(),
      topic: frame.topic ?? frame.data?.topic ?? "",
      type: frame.type ?? "?",
      seq: frame.seq ?? frame.data?.seq ?? null,
      size: byteLength(msg.data),
      ref: frame.ref ?? null,
    });
    if (frame.type === "ack" || frame.type === "error") {
      const waiter = frame.ref != null ? this.pending.get(String(frame.ref)) : undefined;
      if (waiter) {
        this.pending.delete(String(frame.ref));
        this.timers.clearTimeout(waiter.timer);
        if (frame.type === "ack") waiter.resolve(frame.data ?? {});
        else waiter.reject(new SocketError(frame.data?.code ?? "error", frame.data?.detail));
      } else if (frame.type === "error") {
        this.emit("error", frame.data ?? {});
      }
      return;
    }
    if (frame.type === "pong") return;
    if (typeof frame.topic === "string" && typeof frame.seq === "number") {
      const pos = this.topics.get(frame.topic);
      if (pos) {
        if (frame.type === EVENT.EVENTS_MISSED) {
          pos.epoch = frame.data?.epoch ?? pos.epoch;
          pos.seq = frame.data?.seq ?? frame.seq;
        } else if (frame.seq > pos.seq) {
          pos.seq = frame.seq;
        }
      }
      this.emit("event", frame);
    }
  }

  onClose(ws, code, reason) {
    if (ws !== this.ws) return;
    this.ws = null;
    this.lastClose = { code, reason };
    this.stopHeartbeat();
    const action = closeAction(code);
    this.failPending(code === CLOSE.TOO_BIG ? "too_big" : "disconnected", reason);
    if (this.stopped) return;
    if (action === "new_token") {
      this.refusedToken = this.openedWith;
      this.setState("offline", { reason: "unauthenticated", code });
      this.emit("auth", { code, reason });
      return;
    }
    if (action === "stop") {
      this.setState("offline", { reason: reason || "closed", code });
      return;
    }
    this.scheduleRetry(action, code, reason);
  }

  scheduleRetry(action, code, reason) {
    let delay;
    if (action === "now" && this.policy.attempt === 0) {
      // Once at once; should that fail too, the policy paces the rest.
      delay = 0;
      this.policy.attempt = 1;
    } else if (action === "jittered" && this.policy.attempt === 0) {
      // A relay restart: any instance will do, within the spread, then the policy as usual.
      delay = this.policy.restartDelay();
      this.policy.attempt = 1;
    } else {
      delay = this.policy.next();
    }
    if (delay === null) {
      this.setState("offline", { reason: "gave_up", code });
      return;
    }
    // A relay that said "too many" should not see us back within the same breath.
    if (code === CLOSE.RATE_LIMITED) delay = Math.max(delay, this.policy.options.baseMs);
    this.setState("reconnecting", { retryInMs: delay, code, reason });
    this.retryTimer = this.timers.setTimeout(() => {
      this.retryTimer = null;
      this.open();
    }, delay);
  }

  clearRetry() {
    if (this.retryTimer !== null) {
      this.timers.clearTimeout(this.retryTimer);
      this.retryTimer = null;
    }
  }

  drop(reason) {
    const ws = this.ws;
    this.ws = null;
    this.stopHeartbeat();
    this.failPending("disconnected", reason);
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(4000, reason.slice(0, 100));
      } catch {
        // already closing
      }
    }
  }

  failPending(code, detail) {
    const waiters = [...this.pending.values()];
    this.pending.clear();
    for (const waiter of waiters) {
      this.timers.clearTimeout(waiter.timer);
      waiter.reject(new SocketError(code, detail || code));
    }
  }

  startHeartbeat() {
    this.stopHeartbeat();
    this.heartbeatTimer = this.timers.setInterval(() => {
      this.request(OP.PING, {}).catch((err) => {
        // An unanswered ping means a half-open link: replace it now, resume from (epoch, seq).
        if (err.code === "timeout" && this.ws) {
          this.drop("heartbeat");
          this.scheduleRetry("now", CLOSE.HEARTBEAT_TIMEOUT, "heartbeat timeout");
        }
      });
    }, this.heartbeatMs);
  }

  stopHeartbeat() {
    if (this.heartbeatTimer !== null) {
      this.timers.clearInterval(this.heartbeatTimer);
      this.heartbeatTimer = null;
    }
  }

  /** Send an op and wait for its ack; rejects with a SocketError. */
  request(op, fields = {}, { timeoutMs = this.ackTimeoutMs } = {}) {
    const ws = this.ws;
    if (!ws || ws.readyState !== 1) {
      return Promise.reject(new SocketError("offline", "not connected"));
    }
    const ref = String(this.nextRef++);
    const frame = { op, ref, ...fields };
    const text = JSON.stringify(frame);
    return new Promise((resolve, reject) => {
      const timer = this.timers.setTimeout(() => {
        if (this.pending.delete(ref)) reject(new SocketError("timeout", `${op}: no answer`));
      }, timeoutMs);
      this.pending.set(ref, { resolve, reject, timer, op });
      try {
        ws.send(text);
      } catch (err) {
        this.pending.delete(ref);
        this.timers.clearTimeout(timer);
        reject(new SocketError("disconnected", String(err)));
        return;
      }
      this.emit("packet", {
        dir: "out",
        at: Date.now(),
        topic: fields.topic ?? "",
        type: op,
        seq: fields.after_seq ?? null,
        size: byteLength(text),
        ref,
      });
    });
  }

  sendSubscribe(topic, pos, attempt = 0) {
    const fields = { topic };
    if (pos.epoch) {
      fields.epoch = pos.epoch;
      fields.after_seq = pos.seq;
    }
    return this.request(OP.SUBSCRIBE, fields).then(
      (ack) => {
        const current = this.topics.get(topic);
        if (current) {
          if (current.epoch !== ack.epoch) current.seq = ack.seq;
          else current.seq = Math.max(current.seq, ack.seq);
          current.epoch = ack.epoch;
        }
        return ack;
      },
      (err) => {
        if (err?.code === "unavailable") this.retrySubscribe(topic, attempt);
        throw err;
      },
    );
  }

  /**
   * The relay could not reach its event bus (its Redis is away): ask again on this connection,
   * paced with jittered backoff, for as long as the topic is wanted. "subscribed" tells the
   * page once it worked, so it can reload what it missed meanwhile.
   */
  retrySubscribe(topic, attempt) {
    const ws = this.ws;
    const ceiling = Math.min(SUBSCRIBE_RETRY_MAX_MS, SUBSCRIBE_RETRY_BASE_MS * 2 ** attempt);
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this.timers.setTimeout(() => {
      const pos = this.topics.get(topic);
      if (!pos || !ws || ws !== this.ws || ws.readyState !== 1) return;
      this.sendSubscribe(topic, pos, attempt + 1).then(
        (ack) => this.emit("subscribed", { topic, ack }),
        () => {},
      );
    }, delay);
  }

  /**
   * Watch a topic from now on and after every reconnect. With `epoch` and `after_seq` the relay
   * replays what came after that point (or sends events.missed when it cannot).
   */
  subscribe(topic, { epoch = null, after_seq = 0 } = {}) {
    const pos = { epoch, seq: after_seq };
    this.topics.set(topic, pos);
    if (!this.ws || this.ws.readyState !== 1) {
      return Promise.reject(new SocketError("offline", "will subscribe on connect"));
    }
    return this.sendSubscribe(topic, pos);
  }

  unsubscribe(topic) {
    this.topics.delete(topic);
    if (this.online) this.request(OP.UNSUBSCRIBE, { topic }).catch(() => {});
  }

  position(topic) {
    const pos = this.topics.get(topic);
    return pos ? { ...pos } : null;
  }
}
