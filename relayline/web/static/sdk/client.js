// RelayClient: the client half of the relay's protocol for browsers and Node 20+, on top of
// RelaySocket (the connection), Api (REST) and OfflineQueue (sends that wait for the link).
//
//   const client = new RelayClient({ url: "https://relay.example", token: key });
//   await client.connect();
//   const chat = await client.createChat("hello");
//   for await (const delta of await chat.send("What is relayline?")) console.log(delta.text);

import { Api, ApiError } from "./api.js";
import { Chat } from "./chat.js";
import { OfflineQueue } from "./offline_queue.js";
import { EVENT, OP } from "./protocol.js";
import { closeAction } from "./reconnect.js";
import { RelaySocket } from "./socket.js";
import { Subscription } from "./subscription.js";

/** The connection ended for good: 4403, a refused token with no new one, or close(). */
export class ConnectionStopped extends Error {
  constructor(code, reason) {
    super(reason || `stopped (${code})`);
    this.name = "ConnectionStopped";
    this.code = code;
    this.retryable = false;
  }
}

/**
 * Whether a failed subscribe will still be taken without the caller: the link went down (the
 * next connect resubscribes) or the relay's bus is away (RelaySocket asks again, paced).
 */
const pending = (err) => Boolean(err?.retryable) || err?.code === "unavailable";

/** `http(s)://host[:port][/prefix]` → the relay's `ws(s)://…/v1/ws`. */
export function socketUrl(base) {
  const url = new URL(base);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.pathname = `${url.pathname.replace(/\/+$/, "")}/v1/ws`;
  url.search = url.hash = "";
  return url.toString();
}

export class RelayClient {
  /** @param {import("./client.js").RelayClientOptions} options */
  constructor({
    url = globalThis.location?.origin,
    token,
    onNewToken = null,
    WebSocket = globalThis.WebSocket,
    fetch = undefined,
    policy = undefined,
    storage = null,
    queueKey = "relayline.outbox",
    heartbeatMs = undefined,
    ackTimeoutMs = undefined,
  }) {
    if (!url) throw new TypeError("RelayClient: url is required outside a page");
    if (typeof WebSocket !== "function") {
      throw new TypeError("RelayClient: no WebSocket here; pass one (e.g. the ws package's) as WebSocket");
    }
    this.url = url.replace(/\/+$/, "");
    this.token = token;
    this.onNewToken = onNewToken;
    this.stopped = null;
    this.topics = new Map(); // topic -> {subs: Set<Subscription>, seq: number | null, ready}
    this.waiters = new Map(); // client_msg_id -> {resolve, reject}
    this.api = new Api({
      base: this.url,
      token: () => this.token,
      ...(fetch ? { fetchImpl: fetch } : {}),
    });
    this.queue = new OfflineQueue({ storage, key: queueKey });
    this.socket = new RelaySocket({
      url: socketUrl(this.url),
      token: () => this.token,
      WebSocketImpl: WebSocket,
      ...(policy ? { policy } : {}),
      ...(heartbeatMs ? { heartbeatMs } : {}),
      ...(ackTimeoutMs ? { ackTimeoutMs } : {}),
    });
    this.socket.on("event", (event) => this.onEvent(event));
    this.socket.on("ready", (info) => this.onReady(info));
    this.socket.on("auth", () => this.onRefused());
    this.socket.on("state", (s) => this.onState(s));
    // A subscription the relay could not take yet (its event bus was away), taken on a retry.
    this.socket.on("subscribed", ({ topic, ack }) => this.topics.get(topic)?.settle(null, ack));
  }

  /** Listen to the connection: "state", "ready", "event", "error", "packet" (see RelaySocket). */
  on(type, fn) {
    return this.socket.on(type, fn);
  }

  /** Connect; resolves once the relay answered, rejects with ConnectionStopped if it refused for good. */
  connect() {
    this.stopped = null;
    /** @type {Promise<void>} */
    const done = new Promise((resolve, reject) => {
      const offReady = this.socket.on("ready", () => {
        offReady();
        offStop();
        resolve();
      });
      const offStop = this.socket.on("stopped", (err) => {
        offReady();
        offStop();
        reject(err);
      });
    });
    this.socket.connect();
    return done;
  }

  /** Stop for good: subscriptions and waiting sends end with ConnectionStopped. */
  close() {
    this.socket.close();
    this.stop(null, "closed");
  }

  stop(code, reason) {
    if (this.stopped) return;
    this.stopped = new ConnectionStopped(code, reason);
    this.socket.close();
    for (const entry of this.topics.values()) for (const sub of entry.subs) sub.fail(this.stopped);
    for (const waiter of this.waiters.values()) waiter.reject(this.stopped);
    this.waiters.clear();
    this.socket.emit("stopped", this.stopped);
  }

  /** @param {import("./socket.js").StateChange} change */
  onState({ state, code, reason }) {
    if (state !== "offline" || this.stopped) return;
    if (reason === "gave_up") this.stop(code ?? null, "gave up reconnecting");
    else if (code != null && closeAction(code) === "stop") this.stop(code, reason);
  }

  /** 4401: ask onNewToken once; never reconnect with the refused token. */
  async onRefused() {
    const refused = this.token;
    let fresh;
    try {
      fresh = this.onNewToken ? await this.onNewToken() : null;
    } catch (err) {
      this.stop(4401, `the token callback failed: ${err}`);
      return;
    }
    if (this.stopped) return;
    if (!fresh || fresh === refused) {
      this.stop(4401, this.onNewToken ? "unauthenticated; no new token" : "unauthenticated and no token callback");
      return;
    }
    this.token = fresh;
    this.socket.setToken(() => this.token);
  }

  onReady({ results }) {
    for (const r of results) {
      const entry = r.topic ? this.topics.get(r.topic) : undefined;
      if (entry && r.ok) entry.settle(null, r.value);
      else if (entry && !pending(r.error)) entry.settle(r.error);
    }
    this.flush();
  }

  onEvent(event) {
    const entry = this.topics.get(event.topic);
    if (!entry) return;
    if (event.type === EVENT.EVENTS_MISSED) {
      entry.seq = event.data?.seq ?? event.seq;
    } else if (entry.seq !== null && event.seq <= entry.seq) {
      return; // a replay overlapping what was already delivered
    } else {
      entry.seq = event.seq;
    }
    for (const sub of entry.subs) sub.push(event);
  }

  // REST

  /** A REST call with the current credential; a 401 asks onNewToken once, then tries again. */
  async request(method, path, options = {}) {
    try {
      return await this.api.request(method, path, options);
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 401 || !this.onNewToken) throw err;
      const fresh = await this.onNewToken();
      if (!fresh || fresh === this.token) throw err;
      this.token = fresh;
      this.socket.setToken(() => this.token);
      return this.api.request(method, path, options);
    }
  }

  get(path, options) {
    return this.request("GET", path, options);
  }

  // Chats

  /** A chat the credential may use (no request is made). */
  chat(chatId) {
    return new Chat(this, chatId);
  }

  /** POST /v1/chats (a tenant key, or a session token allowed to create chats). */
  async createChat(title = null) {
    const body = await this.request("POST", "/v1/chats", { body: title ? { title } : {} });
    return new Chat(this, body.id);
  }

  /** GET /v1/chats/{id}: the chat, its turn in progress and the topic's position. */
  snapshot(chatId) {
    return this.get(`/v1/chats/${encodeURIComponent(chatId)}`);
  }

  // Topics

  /**
   * A Subscription to `topic` at once, without waiting for the relay (its `ready` settles
   * when the relay answers; offline, that is after the next connect).
   */
  listen(topic) {
    let entry = this.topics.get(topic);
    if (!entry) {
      entry = { subs: new Set(), seq: null };
      entry.ready = new Promise((resolve, reject) => {
        entry.settle = (err, ack) => {
          entry.settle = () => {};
          if (err) reject(err);
          else resolve(ack);
        };
      });
      entry.ready.then(
        (ack) => {
          if (entry.seq === null) entry.seq = ack?.seq ?? 0;
        },
        (err) => {
          for (const sub of entry.subs) sub.fail(err);
          if (this.topics.get(topic) === entry) {
            this.topics.delete(topic);
            this.socket.unsubscribe(topic);
          }
        },
      );
      this.topics.set(topic, entry);
      this.socket.subscribe(topic).then(
        (ack) => entry.settle(null, ack),
        (err) => {
          if (!pending(err)) entry.settle(err);
        },
      );
    }
    const sub = new Subscription(topic, (t) => this.snapshotOfTopic(t), (s) => this.unlisten(s));
    sub.ready = entry.ready.then(() => undefined);
    sub.ready.catch(() => {}); // the refusal also reaches the iterator
    entry.subs.add(sub);
    if (this.stopped) sub.fail(this.stopped);
    return sub;
  }

  /** Follow `topic` (chat:<id>, tenant:<id>, …) from now on; resolves once the relay took it. */
  async subscribe(topic) {
    const sub = this.listen(topic);
    const stopped = this.whenStopped();
    try {
      await Promise.race([sub.ready, stopped.promise]);
    } catch (err) {
      sub.close();
      throw err;
    } finally {
      stopped.off();
    }
    return sub;
  }

  unlisten(sub) {
    const entry = this.topics.get(sub.topic);
    if (!entry) return;
    entry.subs.delete(sub);
    if (entry.subs.size === 0) {
      this.topics.delete(sub.topic);
      this.socket.unsubscribe(sub.topic);
    }
  }

  /** A promise that rejects when the connection stops for good, and how to stop waiting. */
  whenStopped() {
    let off = () => {};
    const promise = this.stopped
      ? Promise.reject(this.stopped)
      : new Promise((_, reject) => {
          off = this.socket.on("stopped", reject);
        });
    promise.catch(() => {});
    return { promise, off: () => off() };
  }

  async snapshotOfTopic(topic) {
    const [kind, id] = [topic.slice(0, topic.indexOf(":")), topic.slice(topic.indexOf(":") + 1)];
    return kind === "chat" && id ? this.snapshot(id) : null;
  }

  // Ops

  /** Send an op now; rejects with a SocketError (offline, refused, no answer). */
  call(op, fields = {}) {
    if (this.stopped) return Promise.reject(this.stopped);
    return this.socket.request(op, fields);
  }

  /**
   * Queue a message and send it (now, or once the link is back): resolves with the relay's
   * ack ({message, turn_id, duplicate}). However often it goes out, it carries the same
   * client_msg_id, so the relay stores it once.
   */
  sendMessage(chatId, content, clientMsgId = undefined) {
    if (this.stopped) return Promise.reject(this.stopped);
    const item = this.queue.add(chatId, content, clientMsgId);
    const acked = new Promise((resolve, reject) => {
      this.waiters.set(item.client_msg_id, { resolve, reject });
    });
    this.flush();
    return acked;
  }

  /** Send what waits in the queue (done on every (re)connect). */
  flush() {
    if (!this.socket.online || this.stopped) return Promise.resolve();
    return this.queue.flush(async (item) => {
      const topic = `chat:${item.chat_id}`;
      const entry = this.topics.get(topic);
      if (entry) await entry.ready; // the answer's events must not start before the subscription
      let ack;
      try {
        ack = await this.socket.request(OP.SEND, { topic, content: item.content, client_msg_id: item.client_msg_id });
      } catch (err) {
        if (!err?.retryable) this.settleSend(item.client_msg_id, err);
        throw err;
      }
      this.queue.delivered(item.client_msg_id); // before the sender hears of it
      this.settleSend(item.client_msg_id, null, ack);
    });
  }

  settleSend(clientMsgId, err, ack = undefined) {
    const waiter = this.waiters.get(clientMsgId);
    if (!waiter) return;
    this.waiters.delete(clientMsgId);
    if (err) {
      this.queue.discard(clientMsgId);
      waiter.reject(err);
    } else {
      waiter.resolve(ack);
    }
  }
}
