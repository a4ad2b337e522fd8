// A topic's events as an async iterator: each event once, in seq order, across reconnects;
// events.missed becomes a Reset that carries the reloaded snapshot (for a chat).

import { EVENT } from "./protocol.js";

/**
 * The relay no longer held what was missed: rebuild from `snapshot` (null for a topic that is
 * not a chat, or when the snapshot could not be loaded: then `error` says why).
 */
export class Reset {
  constructor(topic, reason, snapshot, error = null) {
    this.topic = topic;
    this.reason = reason;
    this.snapshot = snapshot;
    this.error = error;
  }
}

/**
 * Made by RelayClient.subscribe (or listen). Guarantees: events reach the iterator in `seq`
 * order, at most once per position (a replay that overlaps what arrived live is dropped); a
 * Reset comes before the events of a new log. The buffer is unbounded: a subscription nobody
 * reads holds memory until close().
 */
export class Subscription {
  /**
   * @param {string} topic
   * @param {(topic: string) => Promise<object | null>} load the snapshot after events.missed
   * @param {(sub: Subscription) => void} onClose
   */
  constructor(topic, load, onClose) {
    this.topic = topic;
    this.load = load;
    this.onClose = onClose;
    this.items = [];
    this.waiters = [];
    this.error = null;
    this.closed = false;
    /** Settles once the relay acknowledged the subscription (rejects when it refused). */
    this.ready = Promise.resolve();
  }

  /** @internal an event from the connection, already deduplicated */
  push(event) {
    if (this.closed) return;
    const waiter = this.waiters.shift();
    if (waiter) waiter.resolve(event);
    else this.items.push(event);
  }

  /** @internal the connection ended for good (or the subscription was refused) */
  fail(error) {
    if (this.closed || this.error) return;
    this.error = error;
    for (const waiter of this.waiters.splice(0)) waiter.reject(error);
  }

  async #nextRaw() {
    if (this.items.length) return this.items.shift();
    if (this.closed) return null;
    if (this.error) throw this.error;
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  /** The next event or Reset; `{done: true}` once closed. */
  async next() {
    const event = await this.#nextRaw();
    if (event === null) return { done: true, value: undefined };
    if (event.type === EVENT.EVENTS_MISSED) {
      const reason = String(event.data?.reason ?? "");
      try {
        return { done: false, value: new Reset(this.topic, reason, await this.load(this.topic)) };
      } catch (err) {
        return { done: false, value: new Reset(this.topic, reason, null, err) };
      }
    }
    return { done: false, value: event };
  }

  /** Stop listening (the relay subscription ends with the last listener of the topic). */
  close() {
    if (this.closed) return;
    this.closed = true;
    this.items = [];
    for (const waiter of this.waiters.splice(0)) waiter.resolve(null);
    this.onClose(this);
  }

  async return() {
    this.close();
    return { done: true, value: undefined };
  }

  [Symbol.asyncIterator]() {
    return this;
  }
}
