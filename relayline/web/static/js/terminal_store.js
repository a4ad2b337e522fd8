// The terminals this browser has open, remembered in localStorage so a reload reattaches to
// them. Only ids and labels are kept (the screen itself always comes from the relay), under
// one key, bounded by count, age and size; the start-up sweep also drops anything malformed.

export const DEFAULT_TERMINAL_LIMITS = Object.freeze({
  maxTerminals: 8,
  maxAgeMs: 24 * 3600 * 1000,
  maxChars: 4096,
});

const ID = /^[A-Za-z0-9_-]{1,64}$/;
const LABEL_CHARS = 64;

/**
 * @typedef {object} RememberedTerminal
 * @property {string} id
 * @property {string} program
 * @property {string | null} chatId
 * @property {number} usedAt ms since the epoch, last time it was opened or shown
 */

export class TerminalStore {
  /**
   * @param {object} [options]
   * @param {Storage | null} [options.storage] localStorage in a page
   * @param {string} [options.key]
   * @param {Partial<typeof DEFAULT_TERMINAL_LIMITS>} [options.limits]
   * @param {() => number} [options.now]
   */
  constructor({ storage = null, key = "relayline.terminals", limits = {}, now = Date.now } = {}) {
    this.storage = storage;
    this.key = key;
    this.limits = { ...DEFAULT_TERMINAL_LIMITS, ...limits };
    this.now = now;
  }

  /** @returns {RememberedTerminal[]} valid entries, most recently used first */
  read() {
    let raw;
    try {
      raw = JSON.parse(this.storage?.getItem(this.key) || "[]");
    } catch {
      return [];
    }
    if (!Array.isArray(raw)) return [];
    return raw
      .filter(
        (e) =>
          e &&
          typeof e.id === "string" &&
          ID.test(e.id) &&
          typeof e.program === "string" &&
          Number.isFinite(e.usedAt),
      )
      .map((e) => ({
        id: e.id,
        program: e.program.slice(0, LABEL_CHARS),
        chatId: typeof e.chatId === "string" && ID.test(e.chatId) ? e.chatId : null,
        usedAt: e.usedAt,
      }))
      .sort((a, b) => b.usedAt - a.usedAt);
  }

  /** Keep what the limits allow and write it back; returns what was kept. */
  write(entries) {
    const { maxTerminals, maxAgeMs, maxChars } = this.limits;
    const cutoff = this.now() - maxAgeMs;
    const seen = new Set();
    let kept = entries.filter((e) => {
      if (seen.has(e.id) || e.usedAt < cutoff) return false;
      seen.add(e.id);
      return true;
    });
    kept = kept.slice(0, maxTerminals);
    let text = JSON.stringify(kept);
    while (kept.length && text.length > maxChars) {
      kept = kept.slice(0, -1);
      text = JSON.stringify(kept);
    }
    try {
      if (kept.length) this.storage?.setItem(this.key, text);
      else this.storage?.removeItem(this.key);
    } catch {
      // Quota or blocked storage: terminals still work, a reload just will not reattach.
    }
    return kept;
  }

  /** Remember (or touch) a terminal; it becomes the most recent. */
  remember({ id, program, chatId = null }) {
    if (!ID.test(id)) return this.read();
    const entry = { id, program: String(program).slice(0, LABEL_CHARS), chatId, usedAt: this.now() };
    return this.write([entry, ...this.read().filter((e) => e.id !== id)]);
  }

  forget(id) {
    return this.write(this.read().filter((e) => e.id !== id));
  }

  /** Start-up sweep: count, age and size caps, malformed entries out. */
  cleanup() {
    const before = this.rawCount();
    const kept = this.write(this.read());
    return { kept: kept.length, removed: Math.max(0, before - kept.length) };
  }

  rawCount() {
    try {
      const raw = JSON.parse(this.storage?.getItem(this.key) || "[]");
      return Array.isArray(raw) ? raw.length : 1;
    } catch {
      return 1;
    }
  }
}
