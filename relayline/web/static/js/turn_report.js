// What the admin console says about turns: durations and ages in words, how worrying a wait
// is, failures by category, the query of a page of turns and the cursors of the pages seen.
// No DOM here: admin.js and admin_turns.js draw it, web/tests checks it.

import { FAILURE_CATEGORY } from "../sdk/protocol.js";

/** What each failure category means, for an operator (the chat tells people otherwise). */
export const CATEGORY_TEXT = Object.freeze({
  [FAILURE_CATEGORY.TIMEOUT]: "The model took too long: no answer within the upstream timeout or the turn's deadline.",
  [FAILURE_CATEGORY.UPSTREAM_4XX]: "The model server refused the request (4xx): check the model name, key and settings.",
  [FAILURE_CATEGORY.UPSTREAM_5XX]: "The model server failed (5xx) or dropped the connection.",
  [FAILURE_CATEGORY.CIRCUIT_OPEN]: "The worker's breaker was open: calls to a failing model server were paused.",
  [FAILURE_CATEGORY.TOOL_ERROR]: "A tool the agent relied on failed.",
  [FAILURE_CATEGORY.INCOMPLETE]: "The model server ended the answer before it was finished.",
  [FAILURE_CATEGORY.INTERNAL]: "The relay or the worker failed, or the turn was lost on every attempt.",
});

/** The worker's circuit breaker, in words. */
export const BREAKER_TEXT = Object.freeze({
  closed: "Calls to the model server go through.",
  half_open: "Trying the model server again with one call.",
  open: "Calls to the model server are paused after repeated failures.",
});

export const BREAKER_TONE = Object.freeze({ closed: "ok", half_open: "warn", open: "bad" });

/**
 * A duration for people: "850 ms", "4.2 s", "48 s", "3 min 5 s", "2 h 10 min", "3 d 4 h".
 * @param {number | null | undefined} ms
 * @returns {string}
 */
export function formatDuration(ms) {
  if (ms == null || !Number.isFinite(ms)) return "—";
  const value = Math.max(0, ms);
  if (value < 1000) return `${Math.round(value)} ms`;
  if (value < 10_000) return `${(Math.floor(value / 100) / 10).toFixed(1)} s`;
  const s = Math.floor(value / 1000);
  if (s < 60) return `${s} s`;
  const min = Math.floor(s / 60);
  if (min < 60) return s % 60 ? `${min} min ${s % 60} s` : `${min} min`;
  const h = Math.floor(min / 60);
  if (h < 24) return min % 60 ? `${h} h ${min % 60} min` : `${h} h`;
  const d = Math.floor(h / 24);
  return h % 24 ? `${d} d ${h % 24} h` : `${d} d`;
}

/**
 * How long ago `ts` (ms since the epoch) was, for people: "just now", "42 s ago", "3 min ago".
 * @param {number | null | undefined} ts
 * @param {number} now
 */
export function ago(ts, now) {
  if (ts == null) return "—";
  const ms = now - ts;
  if (ms < 5000) return "just now";
  const words = formatDuration(ms);
  // "3 min ago" reads better than "3 min 5 s ago"; keep only the leading unit past a minute.
  return `${ms >= 60_000 ? words.split(" ").slice(0, 2).join(" ") : words} ago`;
}

/** Past these many seconds a waiting turn is worth a look, then worth acting on. */
export const WAIT_WARN_S = 30;
export const WAIT_BAD_S = 300;

/**
 * "ok", "warn" or "bad": how worrying the queue is. Nobody waiting is fine; a turn waits a
 * moment for a free worker, so the oldest one's age decides; with no worker online anyone
 * waiting waits for an operator.
 * @param {{ queued: number, oldest_queued_s: number | null }} summary
 * @param {{ workersOnline?: number }} [context]
 */
export function waitTone(summary, { workersOnline = 1 } = {}) {
  if (!summary.queued) return "ok";
  if (workersOnline === 0) return "bad";
  const age = summary.oldest_queued_s ?? 0;
  if (age >= WAIT_BAD_S) return "bad";
  if (age >= WAIT_WARN_S) return "warn";
  return "ok";
}

/**
 * The failures of a summary, most first (then by name), with their share of all failures.
 * @param {Record<string, number> | null | undefined} byCategory
 * @returns {{ category: string, count: number, share: number }[]}
 */
export function failureEntries(byCategory) {
  const entries = Object.entries(byCategory ?? {}).filter(([, n]) => Number(n) > 0);
  const total = entries.reduce((t, [, n]) => t + Number(n), 0);
  return entries
    .map(([category, n]) => ({ category, count: Number(n), share: total ? Number(n) / total : 0 }))
    .sort((a, b) => b.count - a.count || a.category.localeCompare(b.category));
}

/**
 * Failed turns as a share of the turns that ended (failed, completed, cancelled) in the hour;
 * null when none ended.
 * @param {{ failed_last_hour: Record<string, number>, completed_last_hour: number, cancelled_last_hour: number }} summary
 */
export function failureRate(summary) {
  const failed = failureEntries(summary.failed_last_hour).reduce((t, e) => t + e.count, 0);
  const ended = failed + summary.completed_last_hour + summary.cancelled_last_hour;
  return ended ? failed / ended : null;
}

/**
 * The path of a page of turns.
 * @param {{ state?: string, tenantId?: string | null, before?: string | null, limit?: number }} options
 */
export function turnsPath({ state = "failed", tenantId = null, before = null, limit = 20 } = {}) {
  const q = new URLSearchParams({ state, limit: String(limit) });
  if (tenantId) q.set("tenant_id", tenantId);
  if (before) q.set("before", before);
  return `/v1/admin/turns?${q}`;
}

/**
 * Which rows a page shows: "1–20" while older ones exist, "21–25 of 25" or "21 of 21" on the
 * last page, "" when it is empty.
 * @param {number} page 1 for the newest
 * @param {number} pageSize
 * @param {number} count rows on this page
 * @param {boolean} hasOlder
 */
export function rangeText(page, pageSize, count, hasOlder) {
  if (!count) return "";
  const first = (page - 1) * pageSize + 1;
  const last = first + count - 1;
  const shown = first === last ? String(first) : `${first}–${last}`;
  return hasOlder ? shown : `${shown} of ${last}`;
}

/**
 * Pages newest first, walked with the API's `before` cursor: remembers the cursor of every
 * page on the way, so "newer" goes back exactly to the page seen before.
 */
export class CursorPager {
  constructor() {
    /** @type {(string | null)[]} the `before` of each page seen; the last one is shown */
    this.cursors = [null];
    /** @type {string | null} the `next_before` of the page shown */
    this.next = null;
  }

  /** The `before` of the page to show. */
  get current() {
    return this.cursors[this.cursors.length - 1];
  }

  /** 1 for the newest page. */
  get page() {
    return this.cursors.length;
  }

  get hasNewer() {
    return this.cursors.length > 1;
  }

  get hasOlder() {
    return this.next != null;
  }

  /** The page shown said where the next one starts (null: it is the last). */
  shown(nextBefore) {
    this.next = nextBefore ?? null;
  }

  older() {
    if (this.next == null) return false;
    this.cursors.push(this.next);
    this.next = null;
    return true;
  }

  newer() {
    if (this.cursors.length <= 1) return false;
    this.cursors.pop();
    this.next = null;
    return true;
  }

  /** Back to the newest page (a new filter). */
  reset() {
    this.cursors = [null];
    this.next = null;
  }
}
