// term.resize is debounced: one message per burst, only for a new size.
import assert from "node:assert/strict";
import { test } from "node:test";

import { ResizeReporter } from "../../relayline/web/static/js/terminal_resize.js";

/** Timers driven by hand: advance(ms) fires what falls due, in order. */
class FakeTimers {
  constructor() {
    this.now = 0;
    this.nextId = 1;
    this.due = new Map();
  }
  setTimeout(fn, ms) {
    const id = this.nextId++;
    this.due.set(id, { at: this.now + ms, fn });
    return id;
  }
  clearTimeout(id) {
    this.due.delete(id);
  }
  advance(ms) {
    const until = this.now + ms;
    for (;;) {
      const next = [...this.due.entries()].filter(([, t]) => t.at <= until).sort((a, b) => a[1].at - b[1].at)[0];
      if (!next) break;
      this.due.delete(next[0]);
      this.now = next[1].at;
      next[1].fn();
    }
    this.now = until;
  }
}

test("a burst of resizes sends one term.resize with the last size", () => {
  const timers = new FakeTimers();
  const sent = [];
  const r = new ResizeReporter({ send: (s) => sent.push(s), delayMs: 150, timers });
  for (let i = 0; i < 20; i += 1) {
    r.request(80 + i, 24);
    timers.advance(20);
  }
  assert.deepEqual(sent, []);
  timers.advance(150);
  assert.deepEqual(sent, [{ cols: 99, rows: 24 }]);
});

test("nothing is sent before the quiet time, nor twice for the same size", () => {
  const timers = new FakeTimers();
  const sent = [];
  const r = new ResizeReporter({ send: (s) => sent.push(s), delayMs: 100, timers });
  r.request(100, 30);
  timers.advance(99);
  assert.deepEqual(sent, []);
  timers.advance(1);
  assert.deepEqual(sent, [{ cols: 100, rows: 30 }]);
  r.request(100, 30);
  timers.advance(500);
  assert.equal(sent.length, 1);
  r.request(90, 30);
  r.request(100, 30); // back where it was before the burst settled
  timers.advance(500);
  assert.equal(sent.length, 1);
});

test("flush sends at once; forget makes the same size go again (after a reattach)", () => {
  const timers = new FakeTimers();
  const sent = [];
  const r = new ResizeReporter({ send: (s) => sent.push(s), delayMs: 100, timers });
  r.request(120, 40);
  r.flush();
  assert.deepEqual(sent, [{ cols: 120, rows: 40 }]);
  timers.advance(1000);
  assert.equal(sent.length, 1);
  r.forget();
  r.flush();
  assert.deepEqual(sent.at(-1), { cols: 120, rows: 40 });
  assert.equal(sent.length, 2);
  assert.deepEqual(r.last, { cols: 120, rows: 40 });
});

test("sizes that are not positive are ignored; dispose cancels what is pending", () => {
  const timers = new FakeTimers();
  const sent = [];
  const r = new ResizeReporter({ send: (s) => sent.push(s), delayMs: 100, timers });
  r.request(0, 24);
  r.request(80, Number.NaN);
  timers.advance(200);
  assert.deepEqual(sent, []);
  r.request(80, 24);
  r.dispose();
  timers.advance(200);
  assert.deepEqual(sent, []);
});
