// A terminal's size, told to the relay once the window has settled: dragging a window edge
// fires dozens of resize events a second, and each term.resize makes the program on the other
// end redraw. Only the last size of a burst is sent, and only if it differs from the last one
// sent.

export const DEFAULT_RESIZE_DELAY_MS = 150;

/**
 * @typedef {object} Size
 * @property {number} cols
 * @property {number} rows
 */

export class ResizeReporter {
  /**
   * @param {object} options
   * @param {(size: Size) => void} options.send called with each settled size
   * @param {number} [options.delayMs] quiet time before a size counts as settled
   * @param {{setTimeout: Function, clearTimeout: Function}} [options.timers]
   */
  constructor({ send, delayMs = DEFAULT_RESIZE_DELAY_MS, timers = globalThis }) {
    this.send = send;
    this.delayMs = delayMs;
    this.timers = timers;
    /** @type {Size | null} */
    this.sent = null;
    /** @type {Size | null} */
    this.wanted = null;
    this.timer = null;
  }

  /** The window is now `cols` x `rows`: send it once it has been quiet for the delay. */
  request(cols, rows) {
    if (!(cols > 0 && rows > 0)) return;
    this.wanted = { cols, rows };
    if (this.timer !== null) this.timers.clearTimeout(this.timer);
    this.timer = this.timers.setTimeout(() => {
      this.timer = null;
      this.flush();
    }, this.delayMs);
  }

  /** Send the wanted size now if it is new (e.g. the link came back). */
  flush() {
    if (this.timer !== null) {
      this.timers.clearTimeout(this.timer);
      this.timer = null;
    }
    const size = this.wanted;
    if (!size || (this.sent && this.sent.cols === size.cols && this.sent.rows === size.rows)) return;
    this.sent = size;
    this.send(size);
  }

  /** Forget what was sent (the other end may have another size now, say after a reattach). */
  forget() {
    this.sent = null;
  }

  /** The size last sent, as `{cols, rows}`, or null. */
  get last() {
    return this.sent ? { ...this.sent } : null;
  }

  dispose() {
    if (this.timer !== null) this.timers.clearTimeout(this.timer);
    this.timer = null;
  }
}
