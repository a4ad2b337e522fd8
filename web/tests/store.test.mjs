// Local history caps: per chat, chat count, age, total size; cleanup and removal.
import assert from "node:assert/strict";
import { test } from "node:test";

import { HistoryStore } from "../../relayline/web/static/sdk/store.js";

class MemoryStorage {
  constructor() {
    this.map = new Map();
  }
  get length() {
    return this.map.size;
  }
  key(i) {
    return [...this.map.keys()][i] ?? null;
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

const msgs = (n) => Array.from({ length: n }, (_, i) => ({ id: `m${i}`, seq: i + 1, content: `message ${i}` }));

test("keeps the newest messages of a chat up to the per-chat cap", () => {
  const store = new HistoryStore({ storage: new MemoryStorage(), limits: { maxMessagesPerChat: 10 } });
  store.save("c1", { title: "t", messages: msgs(25) });
  const record = store.load("c1");
  assert.equal(record.messages.length, 10);
  assert.equal(record.messages[0].id, "m15");
});

test("keeps at most maxChats chats, dropping the least recently used", () => {
  let now = 1000;
  const storage = new MemoryStorage();
  const store = new HistoryStore({ storage, limits: { maxChats: 3 }, now: () => now });
  for (const id of ["a", "b", "c", "d"]) {
    now += 1;
    store.save(id, { messages: msgs(1) });
  }
  assert.deepEqual(store.index().map((e) => e.id), ["d", "c", "b"]);
  assert.equal(store.load("a"), null);
});

test("cleanup drops chats older than maxAge and orphaned entries", () => {
  let now = 0;
  const storage = new MemoryStorage();
  const store = new HistoryStore({ storage, limits: { maxAgeMs: 1000 }, now: () => now });
  store.save("old", { messages: msgs(1) });
  now = 900;
  store.save("fresh", { messages: msgs(1) });
  storage.setItem("relayline.history.chat.orphan", JSON.stringify({ messages: [] }));
  now = 1500;
  const { removed } = store.cleanup();
  assert.equal(removed, 2);
  assert.deepEqual(store.index().map((e) => e.id), ["fresh"]);
  assert.equal(storage.getItem("relayline.history.chat.orphan"), null);
});

test("the total size cap evicts the oldest chats first", () => {
  let now = 0;
  const store = new HistoryStore({ storage: new MemoryStorage(), limits: { maxTotalChars: 3000 }, now: () => now });
  for (const id of ["a", "b", "c", "d"]) {
    now += 1;
    store.save(id, { messages: [{ id: "x", content: "y".repeat(900) }] });
  }
  const ids = store.index().map((e) => e.id);
  assert.deepEqual(ids, ["d", "c", "b"]);
});

test("remove forgets a chat and can hide it from this device's list", () => {
  const store = new HistoryStore({ storage: new MemoryStorage() });
  store.save("a", { messages: msgs(2) });
  store.remove("a", { hide: true });
  assert.equal(store.load("a"), null);
  assert.deepEqual(store.hidden(), ["a"]);
});

test("a full storage evicts others instead of failing", () => {
  const storage = new MemoryStorage();
  let now = 0;
  const store = new HistoryStore({ storage, now: () => now });
  store.save("a", { messages: msgs(3) });
  now = 1;
  store.save("b", { messages: msgs(3) });
  const real = storage.setItem.bind(storage);
  let refusals = 1;
  storage.setItem = (k, v) => {
    if (k.endsWith("chat.c") && refusals-- > 0) throw new Error("QuotaExceededError");
    real(k, v);
  };
  now = 2;
  store.save("c", { messages: msgs(3) });
  assert.ok(store.load("c"));
  assert.equal(store.index().length, 2);
});
