// The admin console's agent settings: empty fields are null (the worker's default), numbers
// stay numbers, stop sequences are written with escapes and kept within the relay's bounds.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  addStop,
  agentBody,
  decodeStop,
  encodeStop,
  fieldsOfDetail,
  GENERATION_BOUNDS,
  numberOrNull,
} from "../../relayline/web/static/js/agent_settings.js";

test("the bounds are the relay's", () => {
  assert.deepEqual(GENERATION_BOUNDS.temperature, { min: 0, max: 2, step: 0.01 });
  assert.equal(GENERATION_BOUNDS.top_p.max, 1);
  assert.deepEqual(GENERATION_BOUNDS.max_tokens, { min: 1, max: 32768, step: 1 });
  assert.deepEqual(GENERATION_BOUNDS.stop, { maxItems: 4, maxChars: 64 });
});

test("an empty form asks for every default", () => {
  assert.deepEqual(agentBody({}), {
    model: null,
    system_prompt: null,
    tools: [],
    temperature: null,
    top_p: null,
    max_tokens: null,
    stop: null,
    store_completions: false,
  });
  assert.deepEqual(agentBody({ model: "  ", systemPrompt: "\n", temperature: " ", stop: [] }).model, null);
});

test("filled fields become numbers, trimmed text and a list of stop sequences", () => {
  const body = agentBody({
    model: " local ",
    systemPrompt: " Be brief. ",
    tools: ["read_file"],
    temperature: "0.7",
    topP: "1",
    maxTokens: "256",
    stop: ["END", "\n\nUser:"],
    storeCompletions: true,
  });
  assert.deepEqual(body, {
    model: "local",
    system_prompt: "Be brief.",
    tools: ["read_file"],
    temperature: 0.7,
    top_p: 1,
    max_tokens: 256,
    stop: ["END", "\n\nUser:"],
    store_completions: true,
  });
  assert.equal(JSON.stringify(body.max_tokens), "256");
  assert.equal(numberOrNull("0"), 0); // zero is a value, not "unset"
  assert.equal(numberOrNull(""), null);
  assert.equal(numberOrNull("warm"), "warm"); // sent as typed: the relay names the field
});

test("stop sequences are typed and shown with escapes", () => {
  assert.equal(decodeStop("\\n\\nUser:"), "\n\nUser:");
  assert.equal(decodeStop("a\\tb\\\\n"), "a\tb\\n");
  assert.equal(decodeStop("plain ###"), "plain ###");
  for (const value of ["\n\nUser:", "a\tb\\n", "C:\\path", "\r\n", " spaced "]) {
    assert.equal(decodeStop(encodeStop(value)), value);
  }
  assert.equal(encodeStop("\n\nUser:"), "\\n\\nUser:");
});

test("adding a stop sequence keeps the list within the bounds", () => {
  let stops = [];
  for (const typed of ["END", "\\n\\n", "###", "END", ""]) ({ stops } = addStop(stops, typed));
  assert.deepEqual(stops, ["END", "\n\n", "###"]);
  ({ stops } = addStop(stops, "Q:"));
  const full = addStop(stops, "one more");
  assert.equal(full.stops, stops);
  assert.match(full.refused, /At most 4/);
  const long = addStop([], "x".repeat(65));
  assert.deepEqual(long.stops, []);
  assert.match(long.refused, /64 characters/);
  assert.deepEqual(addStop([], "x".repeat(64)).stops, ["x".repeat(64)]);
});

test("a validation detail names the fields to mark", () => {
  assert.deepEqual(fieldsOfDetail("top_p: Input should be greater than 0"), ["top_p"]);
  assert.deepEqual(
    fieldsOfDetail("stop.0: String should have at most 64 characters; stop.1: …; max_tokens: Input should be less than or equal to 32768"),
    ["stop", "max_tokens"],
  );
  assert.deepEqual(fieldsOfDetail("invalid request"), []);
  assert.deepEqual(fieldsOfDetail(undefined), []);
});
