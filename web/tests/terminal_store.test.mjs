// Remembered terminals in localStorage: count, age and size caps, cleanup at start-up.
import assert from "node:assert/strict";
import { test } from "node:test";

import { TerminalStore } from "../../relayline/web/static/js/terminal_store.js";

class MemoryStorage {
  constructor() {
    this.map = new Map();
  }
  getItem(k) {
    return this.map.has(k) ? this.map.get(k) : null;
  }
  setItem(k, v) {
    this.map.set(k, String(v));
  }
  removeItem(k) {
    this.map.delete(k);
  }
}

test("remembers terminals, most recently used first, each once", () => {
  let now = 1000;
  const store = new TerminalStore({ storage: new MemoryStorage(), now: () => now });
  store.remember({ id: "t1", program: "shell" });
  now += 1;
  store.remember({ id: "t2", program: "claude", chatId: "c1" });
  now += 1;
  store.remember({ id: "t1", program: "shell" });
  assert.deepEqual(
    store.read().map((e) => [e.id, e.program, e.chatId]),
    [
      ["t1", "shell", null],
      ["t2", "claude", "c1"],
    ],
  );
});

test("keeps at most maxTerminals, dropping the least recently used", () => {
  let now = 0;
  const storage = new MemoryStorage();
  const store = new TerminalStore({ storage, limits: { maxTerminals: 3 }, now: () => now });
  for (const id of ["a", "b", "c", "d", "e"]) {
    now += 1;
    store.remember({ id, program: "shell" });
  }
  assert.deepEqual(store.read().map((e) => e.id), ["e", "d", "c"]);
  assert.equal(JSON.parse(storage.getItem("relayline.terminals")).length, 3);
});

test("the whole record stays under maxChars", () => {
  let now = 0;
  const storage = new MemoryStorage();
  const store = new TerminalStore({ storage, limits: { maxChars: 300 }, now: () => now });
  for (let i = 0; i < 8; i += 1) {
    now += 1;
    store.remember({ id: `term_${i}`, program: "p".repeat(60) });
  }
  assert.ok(storage.getItem("relayline.terminals").length <= 300);
  assert.equal(store.read()[0].id, "term_7");
});

test("cleanup at start-up drops old, malformed and excess entries", () => {
  const storage = new MemoryStorage();
  const now = 10 * 24 * 3600 * 1000;
  storage.setItem(
    "relayline.terminals",
    JSON.stringify([
      { id: "fresh", program: "shell", usedAt: now - 1000 },
      { id: "stale", program: "shell", usedAt: now - 2 * 24 * 3600 * 1000 },
      { id: "../evil", program: "shell", usedAt: now },
      { id: "noprogram", usedAt: now },
      "junk",
      null,
    ]),
  );
  const store = new TerminalStore({ storage, now: () => now });
  assert.deepEqual(store.cleanup(), { kept: 1, removed: 5 });
  assert.deepEqual(store.read().map((e) => e.id), ["fresh"]);
});

test("cleanup removes the key when nothing is worth keeping, or when it is not JSON", () => {
  const storage = new MemoryStorage();
  storage.setItem("relayline.terminals", "{not json");
  const store = new TerminalStore({ storage });
  assert.deepEqual(store.cleanup(), { kept: 0, removed: 1 });
  assert.equal(storage.getItem("relayline.terminals"), null);
});

test("forget removes one terminal", () => {
  const store = new TerminalStore({ storage: new MemoryStorage() });
  store.remember({ id: "a", program: "shell" });
  store.remember({ id: "b", program: "shell" });
  store.forget("a");
  assert.deepEqual(store.read().map((e) => e.id), ["b"]);
});

test("a storage that refuses writes does not break remembering", () => {
  const storage = new MemoryStorage();
  storage.setItem = () => {
    throw new Error("QuotaExceededError");
  };
  const store = new TerminalStore({ storage });
  assert.doesNotThrow(() => store.remember({ id: "a", program: "shell" }));
});
