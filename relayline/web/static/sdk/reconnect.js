// Reconnect pacing for the relay's sockets: exponential backoff with jitter (a configurable
// policy object), and what each close code from the relay asks a client to do next (the
// catalogue itself is generated from the relay's: protocol.js).

import { CLOSE_ACTIONS, DEFAULT_CLOSE_ACTION, RESTART_SPREAD_MS } from "./protocol.js";

export { CLOSE_ACTIONS };

/**
 * @typedef {object} ReconnectOptions
 * @property {number} [baseMs] the first delay's ceiling
 * @property {number} [maxMs] the largest ceiling
 * @property {number} [factor] growth per attempt
 * @property {"full" | "equal" | "none"} [jitter]
 * @property {number} [maxAttempts]
 * @property {number} [restartSpreadMs] after 1012, come back within this long
 */

/** @type {Readonly<Required<ReconnectOptions>>} */
export const DEFAULT_RECONNECT = Object.freeze({
  baseMs: 500,
  maxMs: 30_000,
  factor: 2,
  jitter: "full", // "full" | "equal" | "none"
  maxAttempts: Infinity,
  restartSpreadMs: RESTART_SPREAD_MS, // after 1012, come back within this long
});

/**
 * Exponential backoff with jitter. With "full" jitter the delay before attempt n is uniform in
 * [0, min(maxMs, baseMs * factor^n)]: a relay restart then sees its clients come back spread
 * over the window instead of all in the same millisecond.
 */
export class ReconnectPolicy {
  /**
   * @param {ReconnectOptions} [options]
   * @param {() => number} [random] uniform in [0, 1)
   */
  constructor(options = {}, random = Math.random) {
    const merged = { ...DEFAULT_RECONNECT, ...options };
    if (!(merged.baseMs >= 0) || !(merged.maxMs >= merged.baseMs) || !(merged.factor >= 1)) {
      throw new RangeError("reconnect policy: need 0 <= baseMs <= maxMs and factor >= 1");
    }
    if (!["full", "equal", "none"].includes(merged.jitter)) {
      throw new RangeError(`reconnect policy: unknown jitter ${merged.jitter}`);
    }
    this.options = Object.freeze(merged);
    this.random = random;
    this.attempt = 0;
  }

  /** The ceiling of the delay before attempt `n` (0-based). */
  ceiling(n) {
    const { baseMs, maxMs, factor } = this.options;
    return Math.min(maxMs, baseMs * factor ** Math.min(n, 64));
  }

  /** The delay before attempt `n`, jitter applied. */
  delay(n) {
    const cap = this.ceiling(n);
    switch (this.options.jitter) {
      case "none":
        return cap;
      case "equal":
        return cap / 2 + this.random() * (cap / 2);
      default:
        return this.random() * cap;
    }
  }

  /** The next delay in ms, or null once maxAttempts are used up. */
  next() {
    if (this.attempt >= this.options.maxAttempts) return null;
    const ms = Math.round(this.delay(this.attempt));
    this.attempt += 1;
    return ms;
  }

  /**
   * The delay before coming back after a relay restart (1012): uniform in [0, restartSpreadMs],
   * so the clients of a restarting instance return spread out, not all at once ("none" jitter:
   * the whole spread).
   */
  restartDelay() {
    const spread = this.options.restartSpreadMs;
    return Math.round(this.options.jitter === "none" ? spread : this.random() * spread);
  }

  reset() {
    this.attempt = 0;
  }
}

/** What to do after the relay closed the socket with `code` (the relay's catalogue). */
export function closeAction(code) {
  return CLOSE_ACTIONS[code] ?? DEFAULT_CLOSE_ACTION;
}
