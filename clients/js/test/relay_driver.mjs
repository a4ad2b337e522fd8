// Drives RelayClient against a running relay for tests/client/test_js_sdk.py: one JSON command
// per line on stdin, one JSON answer per line on stdout ({ok, ...} or {ok: false, error}).
// Node 20 has WebSocket only behind --experimental-websocket; the constructor is passed in as
// any program without a global one would pass the `ws` package's.

import { createInterface } from "node:readline";

import { RelayClient, Reset } from "../index.js";

let client = null;
const items = []; // what the subscriptions delivered, in order
const subscriptions = [];
const sends = new Map(); // client_msg_id -> the answer's promise
let asked = 0; // calls of onNewToken

async function collect(sub) {
  for await (const item of sub) {
    items.push(
      item instanceof Reset
        ? { reset: true, topic: item.topic, epoch: item.snapshot?.epoch ?? null }
        : { id: item.id, topic: item.topic, type: item.type, seq: item.seq, data: item.data },
    );
  }
}

async function answerOf(chat, text, clientMsgId) {
  const answer = await chat.send(text, { clientMsgId });
  const pieces = [];
  for await (const piece of answer) pieces.push(piece.text);
  return { text: answer.content, pieces, duplicate: answer.duplicate, turn_id: answer.turnId };
}

const commands = {
  async connect({ url, token, next_token = null }) {
    client = new RelayClient({
      url,
      token,
      // After a 4401: the next token once, then nothing (the client must stop).
      onNewToken: async () => {
        asked += 1;
        const fresh = next_token;
        next_token = null;
        return fresh;
      },
      WebSocket: globalThis.WebSocket,
      policy: { baseMs: 20, maxMs: 300, restartSpreadMs: 200 },
    });
    if (process.env.RELAY_DRIVER_DEBUG) client.on("packet", (p) => process.stderr.write(`${JSON.stringify(p)}\n`));
    if (process.env.RELAY_DRIVER_DEBUG) client.on("state", (p) => process.stderr.write(`${JSON.stringify(p)}\n`));
    await client.connect();
    return {};
  },
  async subscribe({ chat_id }) {
    const sub = await client.chat(chat_id).events();
    subscriptions.push(sub);
    collect(sub).catch((err) => items.push({ error: String(err) }));
    return {};
  },
  async send({ chat_id, text, client_msg_id }) {
    return answerOf(client.chat(chat_id), text, client_msg_id);
  },
  async send_later({ chat_id, text, client_msg_id }) {
    const done = answerOf(client.chat(chat_id), text, client_msg_id);
    done.catch(() => {});
    sends.set(client_msg_id, done);
    return { queued: client.queue.size, state: client.socket.state };
  },
  async wait_send({ client_msg_id }) {
    return sends.get(client_msg_id);
  },
  async wait_offline() {
    while (client.socket.online) await new Promise((resolve) => setTimeout(resolve, 10));
    return { state: client.socket.state };
  },
  async items() {
    return { items };
  },
  async status() {
    return { asked, state: client.socket.state, stopped: client.stopped?.code ?? null, token: client.token };
  },
  async close() {
    for (const sub of subscriptions) sub.close();
    client?.close();
    return {};
  },
};

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  const { cmd, ...args } = JSON.parse(line);
  let reply;
  try {
    reply = { ok: true, ...(await commands[cmd](args)) };
  } catch (err) {
    reply = { ok: false, error: `${err?.name}: ${err?.message}`, code: err?.code ?? null };
  }
  process.stdout.write(`${JSON.stringify(reply)}\n`);
  if (cmd === "close") break;
}
