// A terminal's input path without a screen: keys typed offline go out once, in order, after
// the link is back; what the link lost mid-send is not typed twice; snapshots gate output.
import assert from "node:assert/strict";
import { test } from "node:test";

import { SocketError } from "../../relayline/web/static/sdk/socket.js";
import { exitText } from "../../relayline/web/static/js/terminal_state.js";
import { TerminalView } from "../../relayline/web/static/js/terminal_view.js";

/** The RelaySocket surface a view uses; `fail` decides each request's fate. */
class FakeSocket {
  constructor() {
    this.online = true;
    this.sent = [];
    this.fail = () => null;
    this.pendingAcks = [];
  }
  request(op, fields) {
    if (!this.online) return Promise.reject(new SocketError("offline", "not connected"));
    const error = this.fail(op, fields);
    if (error === "offline") return Promise.reject(new SocketError("offline", "not connected"));
    this.sent.push({ op, ...fields });
    if (error) return Promise.reject(new SocketError(error, error));
    return Promise.resolve({});
  }
  subscribe(topic) {
    this.subscribes = (this.subscribes ?? 0) + 1;
    if (this.refuseSubscribe) return Promise.reject(new SocketError("forbidden", `${topic}: not allowed`));
    return Promise.resolve({});
  }
  unsubscribe() {}
}

function view(socket, changes = []) {
  const v = new TerminalView({
    id: "t1",
    program: "shell",
    api: /** @type {any} */ ({ get: () => Promise.resolve({ state: "running", program: "shell" }) }),
    socket: /** @type {any} */ (socket),
    container: /** @type {any} */ (null),
    onChange: (c) => changes.push(c),
    inputLimitBytes: 16,
  });
  v.state = "running";
  v.following = true; // the relay took the subscription
  v.awaitingSnapshot = false;
  return v;
}

const inputs = (socket) => socket.sent.filter((f) => f.op === "term.input").map((f) => f.data);

test("keys go straight out while online", () => {
  const socket = new FakeSocket();
  const v = view(socket);
  v.input("l");
  v.input("s");
  assert.deepEqual(inputs(socket), ["l", "s"]);
  assert.equal(socket.sent[0].topic, "term:t1");
});

test("keys typed offline wait, then go out once, in order, when the link is back", async () => {
  const socket = new FakeSocket();
  const changes = [];
  const v = view(socket, changes);
  socket.online = false;
  v.input("ec");
  v.input("ho\r");
  assert.deepEqual(inputs(socket), []);
  assert.equal(changes.at(-1).bytes, 5);
  socket.online = true;
  await v.online();
  assert.deepEqual(inputs(socket), ["echo\r"]);
  await v.online();
  assert.deepEqual(inputs(socket), ["echo\r"]);
});

test("past the bound the oldest offline input is dropped, and the page is told", async () => {
  const socket = new FakeSocket();
  const changes = [];
  const v = view(socket, changes);
  socket.online = false;
  v.input("0123456789");
  v.input("abcdefghij");
  const drop = changes.find((c) => c.kind === "dropped");
  assert.deepEqual(drop && { bytes: drop.bytes, totalDropped: drop.totalDropped }, { bytes: 4, totalDropped: 4 });
  socket.online = true;
  await v.online();
  assert.deepEqual(inputs(socket), ["456789abcdefghij"]);
});

test("a link lost mid-flush: what was written is not sent again, the rest waits", async () => {
  const socket = new FakeSocket();
  const v = view(socket);
  socket.online = false;
  v.input("x".repeat(10));
  v.queue.limitBytes = 64 * 1024;
  v.input("y".repeat(9000)); // two frames once drained
  socket.online = true;
  let calls = 0;
  socket.fail = () => (++calls === 1 ? "disconnected" : null);
  await v.online();
  assert.equal(inputs(socket).length, 1);
  assert.ok(!v.queue.empty);
  socket.fail = () => null;
  await v.online();
  // Each byte went out once: the first frame (written when the link dropped) and the rest.
  assert.equal(inputs(socket).length, 2);
  assert.equal(inputs(socket).join(""), "x".repeat(10) + "y".repeat(9000));
});

test("input typed while a flush runs goes out after it, not before", async () => {
  const socket = new FakeSocket();
  const v = view(socket);
  socket.online = false;
  v.input("first ");
  socket.online = true;
  const done = v.online();
  v.input("second");
  await done;
  assert.deepEqual(inputs(socket), ["first ", "second"]);
});

test("a key the socket refused as offline waits for the link", async () => {
  const socket = new FakeSocket();
  const v = view(socket);
  socket.fail = () => "offline";
  v.input("q");
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(inputs(socket), []);
  assert.equal(v.queue.size, 1);
  socket.fail = () => null;
  await v.online();
  assert.deepEqual(inputs(socket), ["q"]);
});

test("an ended or read-only terminal takes no keys", () => {
  const socket = new FakeSocket();
  const v = view(socket);
  v.writable = false;
  v.input("a");
  v.writable = true;
  v.state = "exited";
  v.input("b");
  assert.deepEqual(inputs(socket), []);
});

test("output before the first snapshot is not drawn; a snapshot paints, then output follows", () => {
  const socket = new FakeSocket();
  const v = view(socket);
  const drawn = [];
  v.term = /** @type {any} */ ({ write: (t) => drawn.push(t), dispose: () => {} });
  v.paint = (text) => {
    drawn.length = 0;
    drawn.push(`[snapshot]${text}`);
    v.awaitingSnapshot = false;
  };
  v.apply({ topic: "term:t1", type: "term.output", data: { data: "early" } });
  v.apply({ topic: "term:t1", type: "term.output", data: { data: "screen", snapshot: true, cols: 80, rows: 24 } });
  v.apply({ topic: "term:t1", type: "term.output", data: { data: "live" } });
  v.apply({ topic: "term:other", type: "term.output", data: { data: "not mine" } });
  assert.deepEqual(drawn, ["[snapshot]screen", "live"]);
  v.apply({ topic: "term:t1", type: "events.missed", data: {} });
  v.apply({ topic: "term:t1", type: "term.output", data: { data: "gap" } });
  assert.deepEqual(drawn, ["[snapshot]screen", "live"]);
  v.dispose();
});

test("how a session ended, in words", () => {
  assert.equal(exitText({ reason: "exited", status: 3 }), "The program exited with status 3.");
  assert.equal(exitText({ reason: "exited", signal: 9 }), "The program was ended by signal 9.");
  assert.match(exitText({ reason: "idle" }), /without input or output/);
  assert.equal(
    exitText({ reason: "failed", error: { code: "unknown_program", detail: "no such program" } }),
    "The program could not be started: no such program",
  );
  assert.equal(exitText(null), "The program ended.");
});

test("a relay that does not know the terminal yet: keys wait, it is asked again until it does", async () => {
  const socket = new FakeSocket();
  const changes = [];
  const v = view(socket, changes);
  // The relay restarted and its worker is not back: the renewed subscription was refused.
  socket.refuseSubscribe = true;
  await v.online([{ topic: "term:t1", ok: false }]);
  assert.equal(v.following, false);
  assert.equal(v.state, "detached");
  v.input("ls\r");
  assert.deepEqual(inputs(socket), []);
  // The worker is back: the next try is taken, and the keys go out once.
  socket.refuseSubscribe = false;
  await new Promise((resolve) => setTimeout(resolve, 600));
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(v.following, true);
  assert.equal(v.state, "running");
  assert.deepEqual(inputs(socket), ["ls\r"]);
  assert.ok(socket.subscribes >= 1);
  v.dispose();
});

test("a renewal that did not cover the terminal (never followed) sends nothing", async () => {
  const socket = new FakeSocket();
  const v = view(socket);
  v.following = false; // opened while the relay did not know it; a retry is pending
  socket.online = true;
  v.input("x");
  await v.online([{ topic: "chat:c1", ok: true }]);
  assert.deepEqual(inputs(socket), []);
  assert.equal(v.queue.size, 1);
  v.dispose();
});
