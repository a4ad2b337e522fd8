// The admin console's analytics: UTC days whatever the browser's zone, the query, the series
// the charts draw (gaps for days not computed, failures stacked by category), the totals.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  analyticsPath,
  usagePath,
  categoriesOf,
  categoryColor,
  CATEGORY_COLOR,
  chartSeries,
  dayLabel,
  dayList,
  dayStart,
  lastDays,
  NO_CATEGORY,
  totals,
  utcDay,
} from "../../relayline/web/static/js/analytics_report.js";
import { FAILURE_CATEGORY } from "../../relayline/web/static/sdk/protocol.js";

const row = (day, fields = {}) => ({
  day,
  messages: 0,
  turns: 0,
  answered: 0,
  cancelled: 0,
  failed: 0,
  failed_by_category: {},
  first_token_p50_ms: null,
  first_token_p95_ms: null,
  latency_p50_ms: null,
  latency_p95_ms: null,
  tokens_in: 0,
  tokens_out: 0,
  usage_reported: 0,
  usage_counted: 0,
  usage_estimated: 0,
  ...fields,
});

test("days are UTC days", () => {
  assert.equal(utcDay(Date.parse("2024-03-30T23:59:59.999Z")), "2024-03-30");
  assert.equal(utcDay(Date.parse("2024-03-31T00:00:00.000Z")), "2024-03-31");
  assert.equal(dayStart("2024-03-31"), Date.parse("2024-03-31T00:00:00Z"));
  assert.deepEqual(dayList("2024-03-30", "2024-04-02"), ["2024-03-30", "2024-03-31", "2024-04-01", "2024-04-02"]);
  assert.deepEqual(dayList("2024-03-31", "2024-03-31"), ["2024-03-31"]);
  assert.equal(dayLabel("2024-03-31", "en-US"), "Mar 31");
  assert.equal(dayLabel("2024-01-01", "en-US"), "Jan 1");
});

test("a range ends yesterday, UTC", () => {
  // 00:30 UTC on April 2nd: the figures of April 1st can exist, not yet those of the 2nd.
  const now = Date.parse("2024-04-02T00:30:00Z");
  assert.deepEqual(lastDays(7, now), { from: "2024-03-26", to: "2024-04-01" });
  assert.deepEqual(lastDays(1, now), { from: "2024-04-01", to: "2024-04-01" });
  assert.equal(dayList(lastDays(30, now).from, lastDays(30, now).to).length, 30);
});

test("the query names the tenant and the range", () => {
  assert.equal(
    analyticsPath({ tenantId: "01HX", from: "2024-03-01", to: "2024-03-31" }),
    "/v1/admin/analytics?tenant=01HX&from=2024-03-01&to=2024-03-31",
  );
  // No tenant: every tenant's figures added up.
  assert.equal(analyticsPath({ tenantId: "", from: "2024-03-01", to: "2024-03-31" }), "/v1/admin/analytics?from=2024-03-01&to=2024-03-31");
  // A tenant's own, with its key or its session.
  assert.equal(usagePath({ from: "2024-03-01", to: "2024-03-31" }), "/v1/analytics?from=2024-03-01&to=2024-03-31");
});

test("categories follow the protocol's order, unknown ones after by name", () => {
  const rows = [
    row("2024-03-30", { failed_by_category: { internal: 1, zzz: 2, timeout: 0 } }),
    row("2024-03-31", { failed_by_category: { upstream_5xx: 3, [NO_CATEGORY]: 1 } }),
  ];
  // timeout counted 0 times is left out.
  assert.deepEqual(categoriesOf(rows), ["upstream_5xx", "internal", NO_CATEGORY, "zzz"]);
  assert.equal(categoryColor("timeout", 0), CATEGORY_COLOR.timeout);
  assert.match(categoryColor("zzz", 3), /^#[0-9a-f]{6}$/);
  for (const category of Object.values(FAILURE_CATEGORY)) assert.ok(CATEGORY_COLOR[category], category);
});

test("the series leave gaps for days not computed and stack the failures", () => {
  const rows = [
    row("2024-03-30", {
      messages: 10,
      answered: 7,
      failed: 3,
      turns: 10,
      failed_by_category: { timeout: 1, upstream_5xx: 2 },
      first_token_p50_ms: 300,
      first_token_p95_ms: 900,
      latency_p50_ms: 1200,
      latency_p95_ms: 4000,
    }),
    row("2024-04-01", { messages: 4, answered: 4, turns: 4 }),
  ];
  const s = chartSeries(rows, "2024-03-30", "2024-04-01");
  assert.deepEqual(s.days, ["2024-03-30", "2024-03-31", "2024-04-01"]);
  assert.deepEqual(s.x, [Date.parse("2024-03-30T00:00:00Z") / 1000, Date.parse("2024-03-31T00:00:00Z") / 1000, Date.parse("2024-04-01T00:00:00Z") / 1000]);
  assert.equal(s.computed, 2);
  assert.deepEqual(s.messages, [10, null, 4]);
  assert.deepEqual(s.categories, ["timeout", "upstream_5xx"]);
  assert.deepEqual(s.counts, [[1, null, 0], [2, null, 0]]);
  // The second stack is the sum of both: its top is the day's failures.
  assert.deepEqual(s.stacks, [[1, null, 0], [3, null, 0]]);
  assert.deepEqual(s.failed, [3, null, 0]);
  assert.deepEqual(s.firstTokenP50, [300, null, null]);
  assert.deepEqual(s.latencyP95, [4000, null, null]);
});

test("totals over the computed days", () => {
  const rows = [
    row("2024-03-30", { messages: 10, turns: 10, answered: 6, cancelled: 1, failed: 3, tokens_in: 1000, tokens_out: 200, usage_reported: 5, usage_estimated: 1 }),
    row("2024-03-31", { messages: 5, turns: 5, answered: 5, tokens_in: 500, tokens_out: 100, usage_counted: 4 }),
  ];
  const t = totals(rows);
  assert.deepEqual(
    { days: t.days, messages: t.messages, turns: t.turns, answered: t.answered, cancelled: t.cancelled, failed: t.failed, tokensIn: t.tokensIn, tokensOut: t.tokensOut },
    { days: 2, messages: 15, turns: 15, answered: 11, cancelled: 1, failed: 3, tokensIn: 1500, tokensOut: 300 },
  );
  assert.equal(t.failureRate, 3 / 15);
  assert.equal(t.estimatedShare, 1 / 10);
  const none = totals([row("2024-03-30")]);
  assert.equal(none.failureRate, null);
  assert.equal(none.estimatedShare, null);
  assert.equal(totals([]).days, 0);
});
