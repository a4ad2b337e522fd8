// What the admin console's analytics tab and the chat's Usage view show of daily figures (GET
// /v1/admin/analytics, GET /v1/analytics): the query, the days of a range (UTC), the series
// its charts draw, the totals of the range. No DOM here: analytics_view.js draws it,
// web/tests checks it.

import { FAILURE_CATEGORY } from "../sdk/protocol.js";

export const DAY_MS = 86_400_000;
/** The ranges offered, in days. */
export const RANGES = Object.freeze([7, 30, 90, 365]);
/** A failed turn stored without a category is counted under this one (as the relay does). */
export const NO_CATEGORY = "unknown";

/** Each failure category's colour in the stacked bars (readable on light and dark). */
export const CATEGORY_COLOR = Object.freeze({
  [FAILURE_CATEGORY.TIMEOUT]: "#d08a0c",
  [FAILURE_CATEGORY.UPSTREAM_4XX]: "#8b5cf6",
  [FAILURE_CATEGORY.UPSTREAM_5XX]: "#e5484d",
  [FAILURE_CATEGORY.CIRCUIT_OPEN]: "#f97316",
  [FAILURE_CATEGORY.TOOL_ERROR]: "#0ea5a4",
  [FAILURE_CATEGORY.INTERNAL]: "#3b82f6",
  [FAILURE_CATEGORY.INCOMPLETE]: "#db2777",
  [NO_CATEGORY]: "#8b8fa0",
});
const SPARE_COLORS = ["#65a30d", "#0891b2", "#a16207", "#9333ea"];

/**
 * A UTC day, "YYYY-MM-DD", of a time in ms since the epoch.
 * @param {number} ms
 */
export function utcDay(ms) {
  return new Date(ms).toISOString().slice(0, 10);
}

/**
 * 00:00 UTC of a "YYYY-MM-DD" day, in ms.
 * @param {string} day
 */
export function dayStart(day) {
  return Date.parse(`${day}T00:00:00Z`);
}

/**
 * The `count` days up to yesterday (UTC), the newest whose figures can exist.
 * @param {number} count
 * @param {number} [now]
 * @returns {{ from: string, to: string }}
 */
export function lastDays(count, now = Date.now()) {
  const yesterday = dayStart(utcDay(now)) - DAY_MS;
  return { from: utcDay(yesterday - (count - 1) * DAY_MS), to: utcDay(yesterday) };
}

/**
 * The operator's query: one tenant's days, or (no tenant) every tenant's added up.
 * @param {{ tenantId?: string, from: string, to: string }} query
 */
export function analyticsPath({ tenantId = "", from, to }) {
  const params = new URLSearchParams(tenantId ? { tenant: tenantId, from, to } : { from, to });
  return `/v1/admin/analytics?${params}`;
}

/**
 * A tenant's own days (GET /v1/analytics: its key, or a session token minted with analytics).
 * @param {{ from: string, to: string }} range
 */
export function usagePath({ from, to }) {
  return `/v1/analytics?${new URLSearchParams({ from, to })}`;
}

/**
 * Every day from `from` to `to`, both included.
 * @param {string} from
 * @param {string} to
 * @returns {string[]}
 */
export function dayList(from, to) {
  const days = [];
  for (let t = dayStart(from), end = dayStart(to); t <= end; t += DAY_MS) days.push(utcDay(t));
  return days;
}

/**
 * The failure categories the rows name, in the protocol's order, then any other by name.
 * @param {any[]} rows
 * @returns {string[]}
 */
export function categoriesOf(rows) {
  const seen = new Set();
  for (const row of rows) for (const [name, count] of Object.entries(row.failed_by_category ?? {})) if (count > 0) seen.add(name);
  const known = Object.values(FAILURE_CATEGORY).filter((c) => seen.has(c));
  const others = [...seen].filter((c) => !known.includes(c)).sort();
  return [...known, ...others];
}

/**
 * A category's colour (a spare one, by position, for a category this console does not know).
 * @param {string} category
 * @param {number} index
 */
export function categoryColor(category, index) {
  return CATEGORY_COLOR[category] ?? SPARE_COLORS[index % SPARE_COLORS.length];
}

/**
 * What the charts draw for the days `from`..`to`: x in seconds (00:00 UTC of each day), and per
 * day the figures of a computed day, or null for a day not computed (a gap, not a zero).
 * Failures are stacked: `stacks[i]` is the sum of the first i+1 categories' counts.
 * @param {any[]} rows the `days` of GET /v1/admin/analytics
 * @param {string} from
 * @param {string} to
 */
export function chartSeries(rows, from, to) {
  const byDay = new Map(rows.map((r) => [r.day, r]));
  const days = dayList(from, to);
  const categories = categoriesOf(rows);
  const pick = (/** @type {(row: any) => any} */ f) => days.map((d) => (byDay.has(d) ? f(byDay.get(d)) : null));
  const counts = categories.map((c) => pick((r) => r.failed_by_category?.[c] ?? 0));
  const stacks = counts.map((_, i) => days.map((_, j) => (byDay.has(days[j]) ? counts.slice(0, i + 1).reduce((t, s) => t + s[j], 0) : null)));
  return {
    days,
    x: days.map((d) => dayStart(d) / 1000),
    computed: days.filter((d) => byDay.has(d)).length,
    messages: pick((r) => r.messages),
    answered: pick((r) => r.answered),
    failed: pick((r) => r.failed),
    categories,
    counts,
    stacks,
    firstTokenP50: pick((r) => r.first_token_p50_ms),
    firstTokenP95: pick((r) => r.first_token_p95_ms),
    latencyP50: pick((r) => r.latency_p50_ms),
    latencyP95: pick((r) => r.latency_p95_ms),
  };
}

/**
 * The range's totals; `failureRate` is the failed share of the turns that ended (null: none).
 * @param {any[]} rows
 */
export function totals(rows) {
  const sum = (/** @type {string} */ k) => rows.reduce((t, r) => t + (r[k] ?? 0), 0);
  const turns = sum("turns");
  const counted = sum("usage_reported") + sum("usage_counted");
  const estimated = sum("usage_estimated");
  return {
    days: rows.length,
    messages: sum("messages"),
    turns,
    answered: sum("answered"),
    cancelled: sum("cancelled"),
    failed: sum("failed"),
    failureRate: turns ? sum("failed") / turns : null,
    tokensIn: sum("tokens_in"),
    tokensOut: sum("tokens_out"),
    // The share of the answers with token counts whose counts were estimated.
    estimatedShare: counted + estimated ? estimated / (counted + estimated) : null,
  };
}

/**
 * "Mar 31" for a "YYYY-MM-DD" day (in UTC, whatever the browser's zone).
 * @param {string} day
 * @param {string} [locale]
 */
export function dayLabel(day, locale = undefined) {
  return new Intl.DateTimeFormat(locale, { month: "short", day: "numeric", timeZone: "UTC" }).format(new Date(dayStart(day)));
}
