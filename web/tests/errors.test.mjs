// Every failure the relay can report has its own sentence for people.
import assert from "node:assert/strict";
import { test } from "node:test";

import { apiErrorText, closeText, connectionText, finishReasonText, RECOVERY, turnFailureText } from "../../relayline/web/static/js/errors.js";
import { FINISH_REASON } from "../../relayline/web/static/sdk/protocol.js";

const CATEGORIES = ["no_worker", "timeout", "upstream_4xx", "upstream_5xx", "circuit_open", "rate_limited", "tool_error", "internal"];

test("each failure category has a distinct human message", () => {
  const texts = CATEGORIES.map(turnFailureText);
  assert.equal(new Set(texts).size, CATEGORIES.length);
  for (const text of texts) assert.match(text, /^[A-Z].*\.$/s);
  assert.equal(turnFailureText("something_new"), turnFailureText("internal"));
  assert.match(turnFailureText("no_worker"), /No agent is online/);
  assert.match(turnFailureText("timeout"), /upstream timeout/);
  assert.match(turnFailureText("circuit_open"), /circuit open/);
});

test("API errors, close codes, recovery and connection states read well", () => {
  assert.match(apiErrorText({ code: "network" }), /could not be reached/);
  assert.match(apiErrorText({ code: "validation_error", message: "content: at most 10 characters" }), /at most 10/);
  assert.match(apiErrorText({ code: "queue_full" }), /waiting to be sent/);
  assert.match(closeText(4403), /not allowed/);
  assert.equal(closeText(1006), null);
  assert.match(RECOVERY.events_missed, /reloaded/);
  assert.equal(connectionText({ state: "reconnecting", retryInMs: 2500 }), "Reconnecting in 3 s");
  assert.equal(connectionText({ state: "online" }), "Online");
  assert.equal(connectionText({ state: "offline", reason: "network" }), "Offline");
  assert.equal(connectionText({ state: "connecting" }), "Connecting…");
});

test("an answer the model ended early says why; one that ended on its own says nothing", () => {
  assert.equal(finishReasonText(FINISH_REASON.LENGTH), "Cut at the length limit");
  assert.equal(finishReasonText(FINISH_REASON.CONTENT_FILTER), "Withheld by the model server's content filter");
  assert.equal(finishReasonText(FINISH_REASON.STOP), null);
  assert.equal(finishReasonText(null), null);
  assert.equal(finishReasonText(undefined), null);
  assert.equal(finishReasonText("something_new"), null);
  assert.equal(finishReasonText("toString"), null);
});
