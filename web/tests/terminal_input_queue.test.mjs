// Offline terminal input: the byte bound, oldest input dropped first, the drop notice, frames.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  TerminalInputQueue,
  utf8Bytes,
  utf8Chunks,
  utf8Tail,
} from "../../relayline/web/static/js/terminal_input_queue.js";

test("keeps input in order and drains it once", () => {
  const q = new TerminalInputQueue({ limitBytes: 100 });
  q.push("ls");
  q.push(" -la\r");
  assert.equal(q.size, 7);
  assert.deepEqual(q.drain(), ["ls -la\r"]);
  assert.equal(q.size, 0);
  assert.ok(q.empty);
  assert.deepEqual(q.drain(), []);
});

test("never holds more than the bound: the oldest input goes first, with a report", () => {
  const reports = [];
  const q = new TerminalInputQueue({ limitBytes: 10, onDrop: (r) => reports.push(r) });
  assert.equal(q.push("abcdef"), 0);
  assert.equal(q.push("ghij"), 0);
  assert.deepEqual(reports, []);
  assert.equal(q.push("XYZ"), 3);
  assert.equal(q.size, 10);
  assert.deepEqual(q.drain(), ["defghijXYZ"]);
  assert.deepEqual(reports, [{ bytes: 3, totalDropped: 3 }]);
});

test("whole old pieces go before the newest one is cut", () => {
  const reports = [];
  const q = new TerminalInputQueue({ limitBytes: 8, onDrop: (r) => reports.push(r) });
  q.push("aaaa");
  q.push("bbbb");
  q.push("cccc");
  assert.deepEqual(q.drain(), ["bbbbcccc"]);
  assert.deepEqual(reports, [{ bytes: 4, totalDropped: 4 }]);
});

test("a single piece over the bound keeps its newest part", () => {
  const reports = [];
  const q = new TerminalInputQueue({ limitBytes: 64 * 1024, onDrop: (r) => reports.push(r) });
  const paste = "x".repeat(100 * 1024 - 1) + "!";
  assert.equal(q.push(paste), 36 * 1024);
  assert.equal(q.size, 64 * 1024);
  const sent = q.drain().join("");
  assert.equal(sent.length, 64 * 1024);
  assert.ok(sent.endsWith("x!"));
  assert.equal(reports.at(-1).totalDropped, 36 * 1024);
});

test("the drop count adds up until the queue is emptied", () => {
  const reports = [];
  const q = new TerminalInputQueue({ limitBytes: 4, onDrop: (r) => reports.push(r) });
  q.push("1234");
  q.push("56");
  q.push("78");
  assert.deepEqual(reports.map((r) => r.totalDropped), [2, 4]);
  q.drain();
  q.push("12345");
  assert.deepEqual(reports.at(-1), { bytes: 1, totalDropped: 1 });
});

test("the bound counts UTF-8 bytes and never splits a character", () => {
  const q = new TerminalInputQueue({ limitBytes: 7 });
  q.push("é😀"); // 2 + 4 bytes
  q.push("ab"); // 8 in all: the é goes, not half of the emoji
  assert.equal(q.size, 6);
  assert.deepEqual(q.drain(), ["😀ab"]);
  assert.equal(utf8Tail("a😀", 3), "");
  assert.equal(utf8Tail("a😀", 4), "😀");
  assert.equal(utf8Tail("a😀", 5), "a😀");
});

test("drained input comes as frames of at most the chunk size, in order", () => {
  const q = new TerminalInputQueue({ limitBytes: 64 * 1024 });
  const typed = "é".repeat(5000) + "z".repeat(3000); // 13,000 bytes
  q.push(typed);
  const frames = q.drain(4096);
  assert.ok(frames.length === 4);
  for (const f of frames) assert.ok(utf8Bytes(f) <= 4096);
  assert.equal(frames.join(""), typed);
  assert.deepEqual(utf8Chunks("ab😀c", 4), ["ab", "😀", "c"]);
  assert.deepEqual(utf8Chunks("😀", 2), ["😀"]);
});

test("frames that could not go out go back in front of newer input", () => {
  const q = new TerminalInputQueue({ limitBytes: 100 });
  q.push("first ");
  const frames = q.drain();
  q.push("later");
  q.requeueFront(frames);
  assert.deepEqual(q.drain(), ["first later"]);
});

test("refuses a bound that cannot hold anything", () => {
  assert.throws(() => new TerminalInputQueue({ limitBytes: 0 }), RangeError);
});
