// Messages typed while the link is down (and, briefly, every message on its way out). Each
// keeps the client_msg_id it was given when typed, so however often it is sent again after a
// reconnect the relay stores it once. Kept in sessionStorage: a reload of the tab keeps its
// unsent messages, and two tabs never send each other's.

export const DEFAULT_QUEUE_LIMIT = 50;

export class QueueFullError extends Error {
  constructor(limit) {
    super(`at most ${limit} messages can wait to be sent`);
    this.name = "QueueFullError";
    this.code = "queue_full";
  }
}

/** A client_msg_id: 1 to 128 of [A-Za-z0-9._:-], unique enough to never collide. */
export function newClientMsgId(random = globalThis.crypto) {
  const bytes = new Uint8Array(12);
  random.getRandomValues(bytes);
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `c_${Date.now().toString(36)}_${hex}`;
}

export class OfflineQueue {
  constructor({ storage = null, key = "relayline.outbox", limit = DEFAULT_QUEUE_LIMIT, now = Date.now } = {}) {
    this.storage = storage;
    this.key = key;
    this.limit = limit;
    this.now = now;
    this.items = [];
    this.listeners = new Set();
    this.flushing = null;
    this.again = false;
    this.load();
  }

  onChange(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  changed() {
    this.save();
    for (const fn of this.listeners) fn(this.items);
  }

  load() {
    if (!this.storage) return;
    try {
      const raw = JSON.parse(this.storage.getItem(this.key) || "[]");
      if (Array.isArray(raw)) {
        // An item caught mid-send by a reload is simply sent again (same id, no duplicate).
        this.items = raw
          .filter((i) => i && typeof i.client_msg_id === "string" && typeof i.content === "string")
          .slice(0, this.limit)
          .map((i) => ({ ...i, state: i.state === "failed" ? "failed" : "queued" }));
      }
    } catch {
      this.items = [];
    }
  }

  save() {
    if (!this.storage) return;
    try {
      if (this.items.length) this.storage.setItem(this.key, JSON.stringify(this.items));
      else this.storage.removeItem(this.key);
    } catch {
      // Storage full or blocked: the queue still works for this page's lifetime.
    }
  }

  get size() {
    return this.items.length;
  }

  /** Queue a message; throws QueueFullError past the limit. */
  add(chatId, content, clientMsgId = newClientMsgId()) {
    const existing = this.items.find((i) => i.client_msg_id === clientMsgId);
    if (existing) return existing;
    if (this.items.length >= this.limit) throw new QueueFullError(this.limit);
    const item = {
      client_msg_id: clientMsgId,
      chat_id: chatId,
      content,
      created_at: this.now(),
      state: "queued",
      error: null,
    };
    this.items.push(item);
    this.changed();
    return item;
  }

  get(clientMsgId) {
    return this.items.find((i) => i.client_msg_id === clientMsgId) ?? null;
  }

  forChat(chatId) {
    return this.items.filter((i) => i.chat_id === chatId);
  }

  /** The relay has the message (an ack, or its message.created event was seen). */
  delivered(clientMsgId) {
    const before = this.items.length;
    this.items = this.items.filter((i) => i.client_msg_id !== clientMsgId);
    if (this.items.length !== before) this.changed();
  }

  /** Put a failed message back in line (the user pressed retry). */
  retry(clientMsgId) {
    const item = this.get(clientMsgId);
    if (item && item.state === "failed") {
      item.state = "queued";
      item.error = null;
      this.changed();
    }
    return item;
  }

  discard(clientMsgId) {
    this.delivered(clientMsgId);
  }

  /**
   * Send every queued message, oldest first, once each, with `send(item)` (a promise). A
   * rejection whose error is `retryable` (the link went down) leaves the item queued and ends
   * this pass; any other rejection marks the item failed and goes on with the next one.
   * Concurrent calls share one pass (and trigger one more pass after it).
   */
  flush(send) {
    if (this.flushing) {
      this.again = true;
      return this.flushing;
    }
    const pass = async () => {
      do {
        this.again = false;
        for (const item of [...this.items]) {
          if (item.state !== "queued" || !this.items.includes(item)) continue;
          item.state = "sending";
          this.changed();
          try {
            await send(item);
            this.delivered(item.client_msg_id);
          } catch (err) {
            if (!this.items.includes(item)) continue; // delivered meanwhile
            if (err && err.retryable) {
              item.state = "queued";
              this.changed();
              return;
            }
            item.state = "failed";
            item.error = { code: err?.code ?? "error", detail: err?.message ?? String(err) };
            this.changed();
          }
        }
      } while (this.again);
    };
    // Cleared in a later microtask, never before it is set: a pass with nothing to send
    // finishes synchronously.
    this.flushing = pass().finally(() => {
      this.flushing = null;
    });
    return this.flushing;
  }
}
