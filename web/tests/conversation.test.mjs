// A reload takes the open tool approvals of the running turn from the relay's snapshot; the
// local copy only fills in what an older relay does not say. How an answer ended comes with
// message.completed and with the stored message. Fakes for the API, socket, view.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Conversation } from "../../relayline/web/static/js/conversation.js";
import { EVENT, FINISH_REASON } from "../../relayline/web/static/sdk/protocol.js";

const TURN = "turn-1";

function snapshot(extra = {}) {
  return {
    id: "chat-1",
    title: null,
    last_seq: 1,
    turn: { id: TURN, state: "running", attempt: 1 },
    partial_message_id: "answer-1",
    partial_text: "Let me",
    topic: "chat:chat-1",
    epoch: "e1",
    seq: 7,
    ...extra,
  };
}

function conversation(snap, cached = null, rows = []) {
  const nothing = () => {};
  const api = {
    async get(path) {
      return path.includes("/messages") ? { items: rows, next_after: null } : snap;
    },
  };
  return new Conversation({
    chatId: "chat-1",
    api,
    socket: { subscribe: async () => {}, unsubscribe: nothing },
    queue: { onChange: () => nothing, forChat: () => [] },
    history: { load: () => cached, save: nothing },
    view: { reset: nothing, turnChanged: nothing, changed: nothing, removed: nothing, approvalsChanged: nothing },
    notify: nothing,
    announce: nothing,
  });
}

function request(id, extra = {}) {
  return { approval_id: id, turn_id: TURN, tool: "edit_file", arguments: { path: `${id}.md` }, deadline: Date.now() + 60_000, ...extra };
}

const states = (conv) => Object.fromEntries([...conv.approvals.values()].map((a) => [a.approval_id, a.state]));

test("a page without a local copy shows the open requests the snapshot lists", async () => {
  const open = request("open");
  const conv = conversation(snapshot({ pending_approvals: [open, request("stale", { turn_id: "turn-0" })] }));
  await conv.open();
  assert.deepEqual([...conv.approvals.keys()], ["open"]);
  assert.deepEqual(conv.approvals.get("open"), { ...open, state: "pending" });
});

test("the snapshot wins over the local copy; decided and expired ones keep their state", async () => {
  const conv = conversation(snapshot({ pending_approvals: [request("listed", { arguments: "{\"path\": …" })] }));
  const local = [
    request("listed"),
    request("decided_elsewhere"),
    request("timed_out", { deadline: Date.now() - 1000 }),
    { ...request("approved"), state: "approved" },
    { ...request("sending"), state: "sending" },
    { ...request("expired"), state: "expired" },
    { ...request("old_turn"), turn_id: "turn-0" },
  ];
  for (const a of local) conv.approvals.set(a.approval_id, { state: "pending", ...a });
  await conv.reload();
  assert.deepEqual(states(conv), {
    listed: "pending",
    decided_elsewhere: "gone",
    timed_out: "expired",
    approved: "approved",
    sending: "sending",
    expired: "expired",
  });
  assert.equal(conv.approvals.get("listed").arguments, "{\"path\": …");
});

test("without the field (an older relay) the local copy of the running turn stays", async () => {
  const cached = { title: null, messages: [], approvals: [{ ...request("kept"), state: "pending" }, { ...request("old"), turn_id: "turn-0", state: "pending" }] };
  const conv = conversation(snapshot(), cached);
  await conv.open();
  assert.deepEqual(states(conv), { kept: "pending" });
});

test("no running turn: nothing is left waiting", async () => {
  const conv = conversation(snapshot({ turn: { id: TURN, state: "completed", attempt: 1 }, partial_message_id: null, pending_approvals: [] }));
  conv.approvals.set("done", { ...request("done"), state: "pending" });
  await conv.reload();
  assert.equal(conv.approvals.size, 0);
});

const idle = () => snapshot({ last_seq: 2, turn: { id: TURN, state: "completed", attempt: 1 }, partial_message_id: null, pending_approvals: [] });
const row = (id, seq, role, extra = {}) => ({ id, seq, role, content: `${role} ${seq}`, status: "complete", client_msg_id: null, turn_id: TURN, created_at: 1, ...extra });

test("message.completed says how the answer ended; a new attempt starts without it", async () => {
  const conv = conversation(idle());
  await conv.open();
  const event = (type, data) => conv.apply({ topic: "chat:chat-1", type, data });
  event(EVENT.TURN_STARTED, { turn_id: TURN, message_id: "answer-1" });
  event(EVENT.MESSAGE_DELTA, { turn_id: TURN, message_id: "answer-1", offset: 0, text: "One two three" });
  assert.equal(conv.get("answer-1").finish_reason, null);
  event(EVENT.MESSAGE_COMPLETED, { turn_id: TURN, message_id: "answer-1", seq: 3, content: "One two three", finish_reason: FINISH_REASON.LENGTH, metrics: {} });
  assert.equal(conv.get("answer-1").status, "complete");
  assert.equal(conv.get("answer-1").finish_reason, "length");
  event(EVENT.TURN_STARTED, { turn_id: TURN, message_id: "answer-1" });
  assert.equal(conv.get("answer-1").finish_reason, null);
  // An older relay's event has no finish_reason: nothing to say.
  event(EVENT.MESSAGE_COMPLETED, { turn_id: TURN, message_id: "answer-1", seq: 3, content: "Done.", metrics: {} });
  assert.equal(conv.get("answer-1").finish_reason, null);
});

test("a reload takes how each answer ended from the stored messages", async () => {
  const rows = [row("q-1", 1, "user"), row("a-1", 2, "assistant", { finish_reason: FINISH_REASON.LENGTH })];
  const conv = conversation(idle(), null, rows);
  await conv.open();
  assert.equal(conv.get("q-1").finish_reason, null);
  assert.equal(conv.get("a-1").finish_reason, "length");
});
