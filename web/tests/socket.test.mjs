// Reconnection policy and the client socket's reconnect / resume behaviour, with a fake
// WebSocket and fake timers (no network, no real time).
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  closeAction,
  ReconnectPolicy,
  RelaySocket,
} from "../../relayline/web/static/sdk/socket.js";

test("full jitter stays within an exponentially growing, capped window", () => {
  const policy = new ReconnectPolicy({ baseMs: 100, maxMs: 1000, factor: 2 }, () => 0.999999);
  const delays = Array.from({ length: 8 }, () => policy.next());
  assert.deepEqual(delays, [100, 200, 400, 800, 1000, 1000, 1000, 1000]);
  const low = new ReconnectPolicy({ baseMs: 100, maxMs: 1000 }, () => 0);
  assert.deepEqual([low.next(), low.next(), low.next()], [0, 0, 0]);
});

test("full jitter spreads delays over the window", () => {
  const policy = new ReconnectPolicy({ baseMs: 1000, maxMs: 1000 });
  const samples = Array.from({ length: 2000 }, () => policy.delay(5));
  assert.ok(samples.every((d) => d >= 0 && d <= 1000));
  const mean = samples.reduce((a, b) => a + b, 0) / samples.length;
  assert.ok(mean > 400 && mean < 600, `mean ${mean}`);
});

test("equal and no jitter, maxAttempts and reset", () => {
  const equal = new ReconnectPolicy({ baseMs: 100, maxMs: 1000, jitter: "equal" }, () => 0);
  assert.equal(equal.delay(2), 200);
  const none = new ReconnectPolicy({ baseMs: 100, maxMs: 1000, jitter: "none", maxAttempts: 2 });
  assert.deepEqual([none.next(), none.next(), none.next()], [100, 200, null]);
  none.reset();
  assert.equal(none.next(), 100);
});

test("invalid policies are refused", () => {
  assert.throws(() => new ReconnectPolicy({ baseMs: 10, maxMs: 5 }), RangeError);
  assert.throws(() => new ReconnectPolicy({ factor: 0.5 }), RangeError);
  assert.throws(() => new ReconnectPolicy({ jitter: "sometimes" }), RangeError);
});

test("close codes map to the design's client actions", () => {
  assert.equal(closeAction(4401), "new_token");
  assert.equal(closeAction(4403), "stop");
  assert.equal(closeAction(4408), "now");
  assert.equal(closeAction(4009), "now");
  assert.equal(closeAction(1012), "jittered");
  assert.equal(closeAction(4429), "backoff");
  assert.equal(closeAction(1006), "backoff");
});

// A fake WebSocket the tests drive by hand.
class FakeWs {
  static instances = [];
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    this.sent = [];
    FakeWs.instances.push(this);
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  close() {
    this.readyState = 3;
  }
  open() {
    this.readyState = 1;
    this.onopen?.();
  }
  receive(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  serverClose(code, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  ackAll() {
    for (const frame of this.sent.splice(0)) {
      const data = frame.op === "subscribe" ? { topic: frame.topic, epoch: "E1", seq: frame.after_seq ?? 0, replayed: 0, missed: false } : {};
      this.receive({ type: "ack", ref: frame.ref, data });
    }
  }
}

class FakeTimers {
  constructor() {
    this.now = 0;
    this.queue = [];
    this.nextId = 1;
  }
  setTimeout(fn, ms) {
    const id = this.nextId++;
    this.queue.push({ id, at: this.now + ms, fn });
    return id;
  }
  clearTimeout(id) {
    this.queue = this.queue.filter((t) => t.id !== id);
  }
  setInterval() {
    return 0;
  }
  clearInterval() {}
  advance(ms) {
    this.now += ms;
    for (;;) {
      const due = this.queue.filter((t) => t.at <= this.now).sort((a, b) => a.at - b.at)[0];
      if (!due) return;
      this.queue = this.queue.filter((t) => t !== due);
      due.fn();
    }
  }
}

const flush = () => new Promise((resolve) => setImmediate(resolve));

function makeSocket(policy = { baseMs: 1000, maxMs: 8000, jitter: "none", restartSpreadMs: 1000 }, token = "tok") {
  FakeWs.instances = [];
  const timers = new FakeTimers();
  const states = [];
  const socket = new RelaySocket({ url: "ws://relay/v1/ws", token, policy, WebSocketImpl: FakeWs, timers });
  socket.on("state", (s) => states.push(s));
  return { socket, timers, states };
}

test("authenticates with subprotocols and is online after the first ack", async () => {
  const { socket, states } = makeSocket();
  socket.connect();
  const ws = FakeWs.instances[0];
  assert.deepEqual(ws.protocols, ["relayline.v1", "bearer.tok"]);
  ws.open();
  assert.equal(socket.state, "connecting");
  ws.ackAll();
  await flush();
  assert.equal(socket.state, "online");
  assert.deepEqual(states.map((s) => s.state), ["connecting", "online"]);
});

test("after a relay restart (1012) reconnects within the restart spread and resumes from the last seq seen", async () => {
  const { socket, timers, states } = makeSocket();
  socket.topics.set("chat:1", { epoch: null, seq: 0 });
  socket.connect();
  let ws = FakeWs.instances[0];
  ws.open();
  assert.deepEqual(ws.sent.map((f) => [f.op, f.topic, f.epoch]), [["subscribe", "chat:1", undefined]]);
  ws.ackAll();
  await flush();
  ws.receive({ v: 1, topic: "chat:1", type: "message.delta", seq: 7, data: {} });
  ws.serverClose(1012, "relay restarting");
  const waiting = states.at(-1);
  assert.equal(waiting.state, "reconnecting");
  assert.equal(waiting.retryInMs, 1000);
  timers.advance(999);
  assert.equal(FakeWs.instances.length, 1);
  timers.advance(1);
  ws = FakeWs.instances[1];
  ws.open();
  assert.deepEqual(ws.sent[0], { op: "subscribe", ref: ws.sent[0].ref, topic: "chat:1", epoch: "E1", after_seq: 7 });
});

test("a connection that fails with an error and no close event (Node 20's WebSocket) is retried", () => {
  const { socket, timers, states } = makeSocket();
  socket.connect();
  const ws = FakeWs.instances[0];
  ws.onerror?.({ type: "error" });
  timers.advance(0);
  assert.equal(ws.onclose, null);
  assert.deepEqual(states.at(-1), { state: "reconnecting", retryInMs: 1000, code: 1006, reason: "connection failed" });
  timers.advance(1000);
  assert.equal(FakeWs.instances.length, 2);
});

test("an error followed by its close event is handled once, with the close's code", () => {
  const { socket, timers, states } = makeSocket();
  socket.connect();
  const ws = FakeWs.instances[0];
  ws.onerror?.({ type: "error" });
  ws.serverClose(1006, "");
  timers.advance(0);
  assert.deepEqual(states.filter((s) => s.state === "reconnecting").map((s) => s.code), [1006]);
  assert.equal(states.at(-1).reason, "");
});

test("a subscription refused as unavailable (the relay's bus is away) is asked again, paced", async () => {
  const { socket, timers } = makeSocket();
  socket.topics.set("chat:1", { epoch: "E1", seq: 4 });
  socket.topics.set("chat:2", { epoch: "E1", seq: 9 });
  const subscribed = [];
  socket.on("subscribed", (e) => subscribed.push(e.topic));
  socket.connect();
  const ws = FakeWs.instances[0];
  ws.open();
  const refuse = (frame) => ws.receive({ type: "error", ref: frame.ref, data: { code: "unavailable", detail: "event bus unavailable" } });
  for (const frame of ws.sent.splice(0)) refuse(frame);
  await flush();
  assert.equal(socket.state, "online"); // the relay answered: the link works
  socket.unsubscribe("chat:2"); // no longer wanted: not asked again
  ws.sent.splice(0);
  timers.advance(10_000);
  assert.deepEqual(ws.sent.map((f) => [f.op, f.topic, f.epoch, f.after_seq]), [["subscribe", "chat:1", "E1", 4]]);
  refuse(ws.sent.shift()); // still away: again, later
  await flush();
  timers.advance(10_000);
  assert.deepEqual(ws.sent.map((f) => [f.op, f.topic]), [["subscribe", "chat:1"]]);
  ws.ackAll();
  await flush();
  assert.deepEqual(subscribed, ["chat:1"]);
  timers.advance(60_000);
  assert.equal(ws.sent.length, 0); // done: nothing more
});

test("consecutive failures back off exponentially; success resets the policy", async () => {
  const { socket, timers, states } = makeSocket();
  socket.connect();
  const delays = [];
  for (let i = 0; i < 4; i += 1) {
    FakeWs.instances.at(-1).serverClose(1006);
    delays.push(states.at(-1).retryInMs);
    timers.advance(states.at(-1).retryInMs);
  }
  assert.deepEqual(delays, [1000, 2000, 4000, 8000]);
  const ws = FakeWs.instances.at(-1);
  ws.open();
  ws.ackAll();
  await flush();
  assert.equal(socket.state, "online");
  ws.serverClose(1006);
  assert.equal(states.at(-1).retryInMs, 1000);
});

test("heartbeat timeout (4408) reconnects at once", async () => {
  const { socket, states } = makeSocket();
  socket.connect();
  const ws = FakeWs.instances[0];
  ws.open();
  ws.ackAll();
  await flush();
  ws.serverClose(4408);
  assert.equal(states.at(-1).retryInMs, 0);
});

test("4401 never retries the refused token; a new token reconnects", async () => {
  let token = "old";
  const { socket, timers, states } = makeSocket(undefined, () => token);
  let refused = 0;
  socket.on("auth", () => refused++);
  socket.connect();
  FakeWs.instances[0].open();
  FakeWs.instances[0].serverClose(4401, "unauthenticated");
  assert.equal(refused, 1);
  assert.equal(states.at(-1).state, "offline");
  timers.advance(60_000);
  assert.equal(FakeWs.instances.length, 1, "no retry with the refused token");
  socket.connect();
  assert.equal(FakeWs.instances.length, 1, "connect() with the same token still refuses");
  token = "new";
  socket.setToken(() => token);
  assert.equal(FakeWs.instances.length, 2);
  assert.deepEqual(FakeWs.instances[1].protocols, ["relayline.v1", "bearer.new"]);
});

test("4403 stops; 4429 waits at least the base delay", () => {
  const { socket, timers, states } = makeSocket({ baseMs: 500, maxMs: 8000, jitter: "full" }, "t");
  socket.policy.random = () => 0;
  socket.connect();
  FakeWs.instances[0].serverClose(4429);
  assert.equal(states.at(-1).retryInMs, 500);
  timers.advance(500);
  FakeWs.instances[1].serverClose(4403, "origin not allowed");
  assert.equal(states.at(-1).state, "offline");
  timers.advance(60_000);
  assert.equal(FakeWs.instances.length, 2);
});

test("pending ops fail as retryable when the link drops; 1009 fails them for good", async () => {
  const { socket } = makeSocket();
  socket.connect();
  let ws = FakeWs.instances[0];
  ws.open();
  ws.ackAll();
  await flush();
  const lost = socket.request("send", { topic: "chat:1", content: "hi", client_msg_id: "a" });
  ws.serverClose(1006);
  await assert.rejects(lost, (err) => err.code === "disconnected" && err.retryable);
  socket.reconnectNow();
  ws = FakeWs.instances.at(-1);
  ws.open();
  ws.ackAll();
  await flush();
  const big = socket.request("send", { topic: "chat:1", content: "x", client_msg_id: "b" });
  ws.serverClose(1009, "frame too big");
  await assert.rejects(big, (err) => err.code === "too_big" && !err.retryable);
});

test("events.missed moves the topic to the new epoch and seq", async () => {
  const { socket } = makeSocket();
  socket.topics.set("chat:1", { epoch: "E0", seq: 3 });
  socket.connect();
  const ws = FakeWs.instances[0];
  ws.open();
  ws.receive({ v: 1, topic: "chat:1", type: "events.missed", seq: 40, data: { epoch: "E9", seq: 40, reason: "epoch_changed" } });
  assert.deepEqual(socket.position("chat:1"), { epoch: "E9", seq: 40 });
});

test("the restart spread is jittered: uniform within it, the whole of it without jitter", () => {
  const draws = [0, 0.25, 0.999];
  const policy = new ReconnectPolicy({ restartSpreadMs: 4000 }, () => draws.shift());
  assert.deepEqual([policy.restartDelay(), policy.restartDelay(), policy.restartDelay()], [0, 1000, 3996]);
  assert.equal(new ReconnectPolicy({ jitter: "none", restartSpreadMs: 4000 }).restartDelay(), 4000);
});

test("the close-action table is the relay's catalogue, generated (protocol.js)", async () => {
  const { CLOSE, CLOSE_ACTIONS } = await import("../../relayline/web/static/sdk/protocol.js");
  assert.equal(CLOSE_ACTIONS[CLOSE.RESTARTING], "jittered");
  assert.equal(closeAction(CLOSE.UNAUTHENTICATED), "new_token");
  assert.equal(closeAction(1006), "backoff");
});
