// The admin console's turn figures: durations and ages in words, how worrying a wait is,
// failures by category, the query of a page of failed turns and the cursors of its pages.
import assert from "node:assert/strict";
import { test } from "node:test";

import { FAILURE_CATEGORY } from "../../relayline/web/static/sdk/protocol.js";
import {
  ago,
  BREAKER_TEXT,
  CATEGORY_TEXT,
  CursorPager,
  failureEntries,
  failureRate,
  formatDuration,
  rangeText,
  turnsPath,
  WAIT_BAD_S,
  WAIT_WARN_S,
  waitTone,
} from "../../relayline/web/static/js/turn_report.js";

test("durations read as people say them", () => {
  assert.equal(formatDuration(0), "0 ms");
  assert.equal(formatDuration(849.6), "850 ms");
  assert.equal(formatDuration(1000), "1.0 s");
  assert.equal(formatDuration(4_290), "4.2 s");
  assert.equal(formatDuration(9_999), "9.9 s");
  assert.equal(formatDuration(48_000), "48 s");
  assert.equal(formatDuration(60_000), "1 min");
  assert.equal(formatDuration(185_000), "3 min 5 s");
  assert.equal(formatDuration(3_600_000), "1 h");
  assert.equal(formatDuration(7_800_000), "2 h 10 min");
  assert.equal(formatDuration(100 * 3_600_000), "4 d 4 h");
  assert.equal(formatDuration(-5), "0 ms"); // clocks of two hosts disagree by a little
  assert.equal(formatDuration(null), "—");
  assert.equal(formatDuration(undefined), "—");
  assert.equal(formatDuration(Number.NaN), "—");
});

test("ages keep their leading unit", () => {
  const now = 1_700_000_000_000;
  assert.equal(ago(now - 1200, now), "just now");
  assert.equal(ago(now - 42_000, now), "42 s ago");
  assert.equal(ago(now - 185_000, now), "3 min ago");
  assert.equal(ago(now - 7_800_000, now), "2 h ago");
  assert.equal(ago(null, now), "—");
});

test("a wait worries by its age, and at once when no worker is online", () => {
  assert.equal(waitTone({ queued: 0, oldest_queued_s: null }), "ok");
  assert.equal(waitTone({ queued: 0, oldest_queued_s: null }, { workersOnline: 0 }), "ok");
  assert.equal(waitTone({ queued: 3, oldest_queued_s: 2 }), "ok");
  assert.equal(waitTone({ queued: 1, oldest_queued_s: WAIT_WARN_S }), "warn");
  assert.equal(waitTone({ queued: 1, oldest_queued_s: WAIT_BAD_S }), "bad");
  assert.equal(waitTone({ queued: 1, oldest_queued_s: 1 }, { workersOnline: 0 }), "bad");
});

test("failures come most first, then by name, with their share", () => {
  assert.deepEqual(failureEntries({}), []);
  assert.deepEqual(failureEntries(null), []);
  assert.deepEqual(failureEntries({ upstream_5xx: 1, timeout: 3, internal: 1, tool_error: 0 }), [
    { category: "timeout", count: 3, share: 0.6 },
    { category: "internal", count: 1, share: 0.2 },
    { category: "upstream_5xx", count: 1, share: 0.2 },
  ]);
});

test("the failure rate is of the turns that ended", () => {
  const summary = (failed, completed, cancelled) => ({
    failed_last_hour: failed,
    completed_last_hour: completed,
    cancelled_last_hour: cancelled,
  });
  assert.equal(failureRate(summary({}, 0, 0)), null);
  assert.equal(failureRate(summary({}, 5, 0)), 0);
  assert.equal(failureRate(summary({ timeout: 1, internal: 1 }, 6, 2)), 0.2);
  assert.equal(failureRate(summary({ timeout: 3 }, 0, 0)), 1);
});

test("every failure category and breaker state has words", () => {
  for (const category of Object.values(FAILURE_CATEGORY)) assert.ok(CATEGORY_TEXT[category], category);
  for (const state of ["closed", "half_open", "open"]) assert.ok(BREAKER_TEXT[state], state);
});

test("a page's path carries only what is set, encoded", () => {
  assert.equal(turnsPath(), "/v1/admin/turns?state=failed&limit=20");
  assert.equal(
    turnsPath({ tenantId: "01HTENANT", before: "01HTURN", limit: 5 }),
    "/v1/admin/turns?state=failed&limit=5&tenant_id=01HTENANT&before=01HTURN",
  );
  assert.equal(turnsPath({ state: "queued", tenantId: "a b&c" }), "/v1/admin/turns?state=queued&limit=20&tenant_id=a+b%26c");
});

test("the range of a page says its total only on the last one", () => {
  assert.equal(rangeText(1, 20, 0, false), "");
  assert.equal(rangeText(1, 20, 20, true), "1–20");
  assert.equal(rangeText(1, 20, 7, false), "1–7 of 7");
  assert.equal(rangeText(2, 20, 1, false), "21 of 21");
  assert.equal(rangeText(3, 20, 5, false), "41–45 of 45");
});

test("the pager walks older with the API's cursor and back to exactly the page before", () => {
  const pager = new CursorPager();
  assert.equal(pager.current, null);
  assert.equal(pager.page, 1);
  assert.equal(pager.hasNewer, false);
  assert.equal(pager.older(), false); // no page shown yet
  pager.shown("T20");
  assert.equal(pager.hasOlder, true);
  assert.equal(pager.older(), true);
  assert.equal(pager.current, "T20");
  assert.equal(pager.page, 2);
  assert.equal(pager.hasOlder, false); // until the page says
  pager.shown("T40");
  pager.older();
  pager.shown(null); // the last page
  assert.equal(pager.current, "T40");
  assert.equal(pager.hasOlder, false);
  assert.equal(pager.older(), false);
  assert.equal(pager.newer(), true);
  assert.equal(pager.current, "T20");
  assert.equal(pager.newer(), true);
  assert.equal(pager.current, null);
  assert.equal(pager.newer(), false);
  pager.shown("T20");
  pager.older();
  pager.reset();
  assert.equal(pager.current, null);
  assert.equal(pager.page, 1);
  assert.equal(pager.hasOlder, false);
});
