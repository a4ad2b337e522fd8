// A local copy of recent conversations in localStorage, so a reload paints at once (the REST
// snapshot that follows is the truth). Bounded three ways: messages per chat, number of chats
// and total size; entries older than maxAgeMs go at start-up. Also remembers chats the user
// removed from this device.

export const DEFAULT_HISTORY_LIMITS = Object.freeze({
  maxChats: 50,
  maxAgeMs: 7 * 24 * 3600 * 1000,
  maxMessagesPerChat: 200,
  maxTotalChars: 2_000_000,
  maxHidden: 500,
});

export class HistoryStore {
  /**
   * @param {object} [options]
   * @param {Storage | null} [options.storage] where to keep history (localStorage in a page)
   * @param {string} [options.prefix]
   * @param {object} [options.limits] overrides of DEFAULT_HISTORY_LIMITS
   * @param {() => number} [options.now]
   */
  constructor({ storage = null, prefix = "relayline.history.", limits = {}, now = Date.now } = {}) {
    this.storage = storage;
    this.prefix = prefix;
    this.limits = { ...DEFAULT_HISTORY_LIMITS, ...limits };
    this.now = now;
  }

  get indexKey() {
    return `${this.prefix}index`;
  }

  get hiddenKey() {
    return `${this.prefix}hidden`;
  }

  chatKey(chatId) {
    return `${this.prefix}chat.${chatId}`;
  }

  readJson(key, fallback) {
    try {
      const raw = this.storage?.getItem(key);
      return raw ? JSON.parse(raw) : fallback;
    } catch {
      return fallback;
    }
  }

  /** [{id, updatedAt, size}], most recent first. */
  index() {
    const raw = this.readJson(this.indexKey, []);
    return Array.isArray(raw)
      ? raw.filter((e) => e && typeof e.id === "string").sort((a, b) => b.updatedAt - a.updatedAt)
      : [];
  }

  writeIndex(entries) {
    this.trySet(this.indexKey, JSON.stringify(entries));
  }

  trySet(key, value) {
    try {
      this.storage?.setItem(key, value);
      return true;
    } catch {
      return false; // quota: the caller evicts and may try again
    }
  }

  load(chatId) {
    const record = this.readJson(this.chatKey(chatId), null);
    return record && Array.isArray(record.messages) ? record : null;
  }

  /** Store a chat's recent state (trimmed to the per-chat cap), then enforce the totals. */
  save(chatId, record) {
    if (!this.storage) return;
    const messages = (record.messages ?? []).slice(-this.limits.maxMessagesPerChat);
    const value = JSON.stringify({ ...record, id: chatId, messages, updatedAt: this.now() });
    const entries = this.index().filter((e) => e.id !== chatId);
    entries.unshift({ id: chatId, updatedAt: this.now(), size: value.length });
    if (value.length > this.limits.maxTotalChars) return; // one chat may not evict all others
    let stored = this.trySet(this.chatKey(chatId), value);
    const kept = this.enforce(entries, chatId);
    if (!stored) {
      // Out of quota: evict the oldest others one by one until it fits.
      while (!stored && kept.length > 1) {
        const victim = kept.pop();
        this.storage.removeItem(this.chatKey(victim.id));
        stored = this.trySet(this.chatKey(chatId), value);
      }
      if (!stored) kept.splice(kept.findIndex((e) => e.id === chatId), 1);
    }
    this.writeIndex(kept);
  }

  /** Apply count, age and size caps to `entries` (most recent first); returns what stays. */
  enforce(entries, keepId = null) {
    const { maxChats, maxAgeMs, maxTotalChars } = this.limits;
    const cutoff = this.now() - maxAgeMs;
    const kept = [];
    let total = 0;
    for (const entry of entries) {
      const fresh = entry.id === keepId || entry.updatedAt >= cutoff;
      const fits = total + (entry.size ?? 0) <= maxTotalChars;
      if (fresh && kept.length < maxChats && (fits || entry.id === keepId)) {
        kept.push(entry);
        total += entry.size ?? 0;
      } else {
        this.storage.removeItem(this.chatKey(entry.id));
      }
    }
    return kept;
  }

  /** Start-up sweep: caps, age, and entries the index no longer knows (left by old pages). */
  cleanup() {
    if (!this.storage) return { removed: 0 };
    const before = this.index();
    const kept = this.enforce(before);
    const known = new Set(kept.map((e) => e.id));
    let orphans = 0;
    const chatPrefix = `${this.prefix}chat.`;
    for (let i = this.storage.length - 1; i >= 0; i -= 1) {
      const key = this.storage.key(i);
      if (key?.startsWith(chatPrefix) && !known.has(key.slice(chatPrefix.length))) {
        this.storage.removeItem(key);
        orphans += 1;
      }
    }
    this.writeIndex(kept);
    return { removed: before.length - kept.length + orphans };
  }

  /** Forget a chat here; with `hide` it also stays out of this device's chat list. */
  remove(chatId, { hide = false } = {}) {
    this.storage?.removeItem(this.chatKey(chatId));
    this.writeIndex(this.index().filter((e) => e.id !== chatId));
    if (hide) {
      const hidden = this.hidden().filter((id) => id !== chatId);
      hidden.push(chatId);
      this.trySet(this.hiddenKey, JSON.stringify(hidden.slice(-this.limits.maxHidden)));
    }
  }

  hidden() {
    const raw = this.readJson(this.hiddenKey, []);
    return Array.isArray(raw) ? raw.filter((id) => typeof id === "string") : [];
  }
}
