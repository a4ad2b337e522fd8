// The offline queue: bounded, ordered, sent once each with a stable client_msg_id.
import assert from "node:assert/strict";
import { test } from "node:test";

import { newClientMsgId, OfflineQueue, QueueFullError } from "../../relayline/web/static/sdk/offline_queue.js";

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

const retryable = (code = "disconnected") => Object.assign(new Error(code), { code, retryable: true });

test("client_msg_id matches the relay's pattern and is unique", () => {
  const ids = new Set(Array.from({ length: 500 }, () => newClientMsgId()));
  assert.equal(ids.size, 500);
  for (const id of ids) assert.match(id, /^[A-Za-z0-9._:-]{1,128}$/);
});

test("bounded at 50 by default", () => {
  const q = new OfflineQueue();
  for (let i = 0; i < 50; i += 1) q.add("c1", `m${i}`);
  assert.throws(() => q.add("c1", "one too many"), QueueFullError);
  assert.equal(q.size, 50);
});

test("messages go out in order, once each, and leave the queue", async () => {
  const q = new OfflineQueue();
  q.add("c1", "a");
  q.add("c2", "b");
  q.add("c1", "c");
  const sent = [];
  await q.flush(async (item) => sent.push(item.content));
  assert.deepEqual(sent, ["a", "b", "c"]);
  assert.equal(q.size, 0);
  await q.flush(async (item) => sent.push(item.content));
  assert.deepEqual(sent, ["a", "b", "c"]);
});

test("a dropped link keeps the rest queued, with the same ids, for the next flush", async () => {
  const q = new OfflineQueue();
  const ids = ["a", "b", "c"].map((c) => q.add("c1", c).client_msg_id);
  const firstPass = [];
  await q.flush(async (item) => {
    firstPass.push(item.client_msg_id);
    if (item.content === "b") throw retryable();
  });
  assert.deepEqual(firstPass, [ids[0], ids[1]]);
  assert.deepEqual(q.items.map((i) => [i.content, i.state]), [["b", "queued"], ["c", "queued"]]);
  const secondPass = [];
  await q.flush(async (item) => secondPass.push(item.client_msg_id));
  assert.deepEqual(secondPass, [ids[1], ids[2]], "resent with the ids they were given when typed");
  assert.equal(q.size, 0);
});

test("a refused message is marked failed; retry puts it back in line", async () => {
  const q = new OfflineQueue();
  q.add("c1", "bad");
  q.add("c1", "good");
  const sent = [];
  await q.flush(async (item) => {
    if (item.content === "bad") throw Object.assign(new Error("too long"), { code: "validation_error" });
    sent.push(item.content);
  });
  assert.deepEqual(sent, ["good"]);
  assert.equal(q.items[0].state, "failed");
  assert.equal(q.items[0].error.code, "validation_error");
  await q.flush(async (item) => sent.push(item.content));
  assert.deepEqual(sent, ["good"], "failed items wait for the user");
  q.retry(q.items[0].client_msg_id);
  await q.flush(async (item) => sent.push(item.content));
  assert.deepEqual(sent, ["good", "bad"]);
});

test("concurrent flushes share one pass and never send an item twice", async () => {
  const q = new OfflineQueue();
  q.add("c1", "a");
  const sent = [];
  let release;
  const gate = new Promise((r) => (release = r));
  const send = async (item) => {
    sent.push(item.content);
    await gate;
  };
  const p1 = q.flush(send);
  q.add("c1", "b");
  const p2 = q.flush(send);
  release();
  await Promise.all([p1, p2]);
  assert.deepEqual(sent, ["a", "b"]);
});

test("a flush with nothing to send does not block later flushes", async () => {
  const q = new OfflineQueue();
  await q.flush(async () => {});
  q.add("c1", "later");
  const sent = [];
  await q.flush(async (item) => sent.push(item.content));
  assert.deepEqual(sent, ["later"]);
});

test("delivered (seen as message.created) removes an item even mid-flight", async () => {
  const q = new OfflineQueue();
  const item = q.add("c1", "a");
  await q.flush(async () => {
    q.delivered(item.client_msg_id);
    throw retryable();
  });
  assert.equal(q.size, 0);
});

test("survives a reload through storage; an item caught mid-send is queued again", () => {
  const storage = new MemoryStorage();
  const q = new OfflineQueue({ storage });
  const item = q.add("c1", "hello");
  item.state = "sending";
  q.save();
  const reloaded = new OfflineQueue({ storage });
  assert.equal(reloaded.size, 1);
  assert.equal(reloaded.items[0].client_msg_id, item.client_msg_id);
  assert.equal(reloaded.items[0].state, "queued");
  reloaded.delivered(item.client_msg_id);
  assert.equal(storage.getItem("relayline.outbox"), null);
});

test("adding the same client_msg_id twice keeps one item", () => {
  const q = new OfflineQueue();
  q.add("c1", "x", "id-1");
  q.add("c1", "x", "id-1");
  assert.equal(q.size, 1);
});
