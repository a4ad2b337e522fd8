// RelayClient over a fake WebSocket and a fake fetch: events delivered once across a resume,
// events.missed as a Reset with the snapshot, sends queued while offline and sent once after
// the next connect, the token callback after 4401, a stop after 4403.
import assert from "node:assert/strict";
import { test } from "node:test";

import { ConnectionStopped, RelayClient, Reset, socketUrl } from "../../relayline/web/static/sdk/index.js";

class FakeWs {
  static instances = [];
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    this.sent = [];
    FakeWs.instances.push(this);
    // Like a relay: open on the next turn.
    setImmediate(() => {
      if (this.readyState !== 0) return;
      this.readyState = 1;
      this.onopen?.();
    });
  }
  static get last() {
    return FakeWs.instances.at(-1);
  }
  send(text) {
    const frame = JSON.parse(text);
    this.sent.push(frame);
    this.onframe?.(frame);
  }
  close() {
    this.readyState = 3;
  }
  receive(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  serverClose(code, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
}

/** Answer every op like a relay whose chat:1 log is at (epoch, seq). */
function autoAck(log = { epoch: "E1", seq: 0 }, sendAck = (f) => ({ message: { id: "m", client_msg_id: f.client_msg_id }, turn_id: "t1" })) {
  return (ws) => {
    ws.onframe = (f) => {
      let data = {};
      if (f.op === "subscribe") {
        if (f.epoch && f.epoch !== log.epoch) {
          ws.receive({ v: 1, id: `x${log.seq}`, topic: f.topic, type: "events.missed", seq: log.seq, data: { epoch: log.epoch, seq: log.seq, reason: "epoch" } });
        }
        data = { topic: f.topic, epoch: log.epoch, seq: log.seq };
      } else if (f.op === "send") {
        data = sendAck(f);
      }
      setImmediate(() => ws.receive({ type: "ack", ref: f.ref, data }));
    };
  };
}

const tick = () => new Promise((resolve) => setImmediate(resolve));
async function until(check) {
  for (let i = 0; i < 200 && !check(); i += 1) await tick();
  assert.ok(check(), "never happened");
}

function makeClient(options = {}, onSocket = autoAck()) {
  FakeWs.instances = [];
  const fetched = [];
  const fetch = async (url, init) => {
    fetched.push({ url, init });
    return new Response(JSON.stringify({ id: "1", epoch: "E2", seq: 5, turn: null }), {
      status: 200,
      headers: { "content-type": "application/json" },
    });
  };
  const client = new RelayClient({
    url: "http://relay.test/",
    token: "tok",
    WebSocket: class extends FakeWs {
      constructor(...args) {
        super(...args);
        onSocket(this);
      }
    },
    fetch,
    policy: { baseMs: 1, maxMs: 2, restartSpreadMs: 1 },
    ...options,
  });
  return { client, fetched };
}

const event = (seq, type = "message.delta", data = {}) => ({ v: 1, id: `e${seq}`, topic: "chat:1", type, seq, ts: 0, data });

test("the socket URL follows the relay's scheme and path", () => {
  assert.equal(socketUrl("http://relay.test:8080"), "ws://relay.test:8080/v1/ws");
  assert.equal(socketUrl("https://example.com/relay/"), "wss://example.com/relay/v1/ws");
});

test("events come once each, in order, across a reconnect that replays some of them", async () => {
  const { client } = makeClient();
  await client.connect();
  const sub = await client.subscribe("chat:1");
  const ws = FakeWs.last;
  ws.receive(event(1));
  ws.receive(event(2));
  ws.serverClose(1012, "relay restarting");
  await until(() => FakeWs.instances.length === 2 && FakeWs.last.sent.length > 0);
  assert.deepEqual(FakeWs.last.sent[0], { op: "subscribe", ref: FakeWs.last.sent[0].ref, topic: "chat:1", epoch: "E1", after_seq: 2 });
  FakeWs.last.receive(event(2)); // overlap
  FakeWs.last.receive(event(3));
  const seqs = [];
  for (let i = 0; i < 3; i += 1) seqs.push((await sub.next()).value.seq);
  assert.deepEqual(seqs, [1, 2, 3]);
  client.close();
});

test("events.missed becomes a Reset with the chat's snapshot, and the new log's events follow", async () => {
  const log = { epoch: "E1", seq: 0 };
  const { client, fetched } = makeClient({}, autoAck(log));
  await client.connect();
  const sub = await client.subscribe("chat:1");
  FakeWs.last.receive(event(1));
  log.epoch = "E2";
  log.seq = 5;
  FakeWs.last.serverClose(1012);
  await until(() => FakeWs.instances.length === 2 && FakeWs.last.readyState === 1);
  FakeWs.last.receive(event(1)); // the new log starts again from 1
  assert.equal((await sub.next()).value.seq, 1);
  const reset = (await sub.next()).value;
  assert.ok(reset instanceof Reset);
  assert.equal(reset.snapshot.epoch, "E2");
  assert.equal(fetched.at(-1).url, "http://relay.test/v1/chats/1");
  assert.equal(fetched.at(-1).init.headers.Authorization, "Bearer tok");
  await until(() => client.socket.online);
  FakeWs.last.receive(event(6));
  assert.equal((await sub.next()).value.seq, 6);
  client.close();
});

test("a message sent while offline waits, then goes out once with its client_msg_id", async () => {
  const { client } = makeClient();
  await client.connect();
  await client.subscribe("chat:1");
  FakeWs.last.serverClose(1006);
  assert.equal(client.socket.online, false);
  const acked = client.sendMessage("1", "hello", "c-1");
  assert.equal(client.queue.size, 1);
  await until(() => client.socket.online);
  const ack = await acked;
  assert.equal(ack.turn_id, "t1");
  const sends = FakeWs.instances.flatMap((ws) => ws.sent).filter((f) => f.op === "send");
  assert.deepEqual(sends.map((f) => [f.topic, f.content, f.client_msg_id]), [["chat:1", "hello", "c-1"]]);
  assert.equal(client.queue.size, 0);
  client.close();
});

test("a send whose ack the link lost is sent again with the same client_msg_id", async () => {
  let first = true;
  const { client } = makeClient({}, (ws) => {
    autoAck()(ws);
    const ack = ws.onframe;
    ws.onframe = (f) => {
      if (f.op === "send" && first) {
        first = false;
        setImmediate(() => ws.serverClose(1006)); // stored, but the ack never arrives
        return;
      }
      ack(f);
    };
  });
  await client.connect();
  await client.sendMessage("1", "once", "c-2");
  const sends = FakeWs.instances.flatMap((ws) => ws.sent).filter((f) => f.op === "send");
  assert.deepEqual(sends.map((f) => f.client_msg_id), ["c-2", "c-2"]);
  client.close();
});

test("4401 asks onNewToken and reconnects with the new token; the refused one is not tried again", async () => {
  const asked = [];
  const { client } = makeClient({ onNewToken: async () => (asked.push(1), "fresh") });
  await client.connect();
  FakeWs.last.serverClose(4401, "token expired");
  await until(() => client.socket.online && FakeWs.instances.length === 2);
  assert.deepEqual(asked, [1]);
  assert.deepEqual(FakeWs.last.protocols, ["relayline.v1", "bearer.fresh"]);
  client.close();
});

test("4401 without a token callback, or 4403, stops: subscriptions and connect() reject", async () => {
  const { client } = makeClient();
  await client.connect();
  const sub = await client.subscribe("chat:1");
  const next = sub.next();
  FakeWs.last.serverClose(4403, "origin not allowed");
  await assert.rejects(next, (err) => err instanceof ConnectionStopped && err.code === 4403);
  await assert.rejects(client.sendMessage("1", "x"), ConnectionStopped);
  assert.equal(FakeWs.instances.length, 1);

  const again = makeClient({}, (ws) => setImmediate(() => ws.serverClose(4401, "unauthenticated")));
  await assert.rejects(again.client.connect(), (err) => err instanceof ConnectionStopped && err.code === 4401);
});

test("a refused subscription rejects and leaves the others alone", async () => {
  const { client } = makeClient({}, (ws) => {
    ws.onframe = (f) => {
      const reply = f.op === "subscribe" && f.topic === "chat:2"
        ? { type: "error", ref: f.ref, data: { code: "forbidden", detail: "not yours" } }
        : { type: "ack", ref: f.ref, data: { epoch: "E1", seq: 0 } };
      setImmediate(() => ws.receive(reply));
    };
  });
  await client.connect();
  await assert.rejects(client.subscribe("chat:2"), (err) => err.code === "forbidden");
  await client.subscribe("chat:1");
  assert.deepEqual([...client.socket.topics.keys()], ["chat:1"]);
  client.close();
});

test("a subscription the relay could not take yet (its bus was away) resolves once a retry is taken", async () => {
  let refusals = 1;
  const { client } = makeClient({}, (ws) => {
    ws.onframe = (f) => {
      const reply = f.op === "subscribe" && refusals-- > 0
        ? { type: "error", ref: f.ref, data: { code: "unavailable", detail: "event bus unavailable" } }
        : { type: "ack", ref: f.ref, data: { epoch: "E1", seq: 3 } };
      setImmediate(() => ws.receive(reply));
    };
  });
  await client.connect();
  const sub = await client.subscribe("chat:1");
  assert.deepEqual(FakeWs.last.sent.filter((f) => f.op === "subscribe").length, 2);
  FakeWs.last.receive(event(3)); // already covered by the ack's position
  FakeWs.last.receive(event(4));
  assert.equal((await sub.next()).value.seq, 4);
  client.close();
});
