// A chat as a client sees it: send a message and stream its answer, cancel, answer tool
// approvals, follow its events.

import { newClientMsgId } from "./offline_queue.js";
import { EVENT, OP } from "./protocol.js";
import { Reset } from "./subscription.js";

export class TurnFailed extends Error {
  constructor(turnId, category, detail) {
    super(`the answer failed (${category})${detail ? `: ${detail}` : ""}`);
    this.name = "TurnFailed";
    this.turnId = turnId;
    this.category = category;
    this.detail = detail;
  }
}

export class TurnCancelled extends Error {
  constructor(turnId) {
    super("the answer was cancelled");
    this.name = "TurnCancelled";
    this.turnId = turnId;
  }
}

// The relay counts offsets in characters (code points), not UTF-16 units.
const chars = (text) => Array.from(text);

/**
 * The answer to one sent message: an async iterator of its {messageId, turnId, text} pieces, in
 * order and never repeated (across reconnects and events.missed alike), that ends when the
 * answer completes and throws TurnFailed or TurnCancelled otherwise. `message` is the stored
 * user message; `duplicate` says the relay had it already (a resend of the same client_msg_id).
 */
export class Answer {
  constructor(chat, events, ack) {
    this.chat = chat;
    this.events = events;
    this.message = ack?.message ?? {};
    this.turnId = ack?.turn_id ?? null;
    this.duplicate = Boolean(ack?.duplicate);
    this.content = ""; // the answer so far
    this.length = 0; // ... in characters
    this.messageId = null;
    this.done = this.turnId === null;
    this.pending = [];
    if (this.done) events.close();
  }

  /** The part of `text` (at character `offset` of the answer) not delivered yet, or null. */
  piece(messageId, offset, text) {
    this.messageId = messageId;
    const cs = chars(text);
    if (offset + cs.length <= this.length || offset > this.length) return null;
    const fresh = cs.slice(this.length - offset).join("");
    this.content += fresh;
    this.length = offset + cs.length;
    return { messageId, turnId: this.turnId, text: fresh };
  }

  onEvent(event) {
    const data = event.data ?? {};
    if (data.turn_id !== this.turnId) return null;
    switch (event.type) {
      case EVENT.MESSAGE_DELTA:
        return this.piece(String(data.message_id), Number(data.offset ?? 0), String(data.text ?? ""));
      case EVENT.MESSAGE_COMPLETED:
        this.done = true;
        return this.piece(String(data.message_id), 0, String(data.content ?? ""));
      case EVENT.TURN_FAILED:
        this.done = true;
        throw new TurnFailed(this.turnId, String(data.category), String(data.detail ?? ""));
      case EVENT.TURN_CANCELLED:
        this.done = true;
        throw new TurnCancelled(this.turnId);
      default:
        return null;
    }
  }

  /** After events.missed: what the stored chat says of this answer. */
  async catchUp(snapshot) {
    const turn = snapshot?.turn ?? null;
    if (turn && turn.id === this.turnId) {
      if (snapshot.partial_message_id && snapshot.partial_text) {
        return this.piece(snapshot.partial_message_id, 0, snapshot.partial_text);
      }
      return null;
    }
    // The turn is no longer in progress: its answer is stored (or it ended without one).
    for (const m of await this.chat.messages()) {
      if (m.role === "assistant" && m.turn_id === this.turnId) {
        this.done = true;
        if (m.status === "failed") throw new TurnFailed(this.turnId, "unknown", "the answer failed");
        return this.piece(String(m.id), 0, String(m.content ?? ""));
      }
    }
    if (!turn) {
      this.done = true;
      throw new TurnCancelled(this.turnId);
    }
    return null;
  }

  async next() {
    try {
      while (!this.done) {
        const { done, value } = await this.events.next();
        if (done) break;
        if (value instanceof Reset && value.error) throw value.error;
        const piece = value instanceof Reset ? await this.catchUp(value.snapshot) : this.onEvent(value);
        if (piece) return { done: false, value: piece };
      }
    } catch (err) {
      this.done = true;
      this.events.close();
      throw err;
    }
    this.events.close();
    return { done: true, value: undefined };
  }

  async return() {
    this.done = true;
    this.events.close();
    return { done: true, value: undefined };
  }

  [Symbol.asyncIterator]() {
    return this;
  }

  /** Wait for the whole answer; resolves with its text. */
  async text() {
    // The pieces add up in `content`.
    while (!(await this.next()).done);
    return this.content;
  }
}

/** One chat of the client's tenant: client.chat(id) or client.createChat(). */
export class Chat {
  constructor(client, chatId) {
    this.client = client;
    this.id = chatId;
    this.topic = `chat:${chatId}`;
  }

  /**
   * Post a user message and return its Answer once the relay stored it. Offline, the message
   * waits in the client's queue and goes out (once) after the next connect; it carries
   * `clientMsgId` (a fresh one by default) however often it is sent.
   */
  async send(text, { clientMsgId = newClientMsgId() } = {}) {
    const events = this.client.listen(this.topic);
    try {
      const ack = await this.client.sendMessage(this.id, text, clientMsgId);
      return new Answer(this, events, ack);
    } catch (err) {
      events.close();
      throw err;
    }
  }

  /** Stop the turn in progress; resolves with its id (null: nothing was running). */
  async cancel() {
    const ack = await this.client.call(OP.CANCEL, { topic: this.topic });
    return ack?.turn_id ?? null;
  }

  /** Answer a tool.approval_requested event (approve=false denies the call). */
  async approve(approvalId, approve = true) {
    await this.client.call(OP.APPROVE, {
      topic: this.topic,
      approval_id: approvalId,
      decision: approve ? "approve" : "deny",
    });
  }

  /** This chat's events from now on (see RelayClient.subscribe). */
  events() {
    return this.client.subscribe(this.topic);
  }

  /** The chat as stored now (GET /v1/chats/{id}). */
  snapshot() {
    return this.client.snapshot(this.id);
  }

  /** The chat's messages in order (one page). */
  async messages({ after = null, limit = 200 } = {}) {
    const query = new URLSearchParams({ limit: String(limit) });
    if (after !== null) query.set("after", String(after));
    const body = await this.client.get(`/v1/chats/${encodeURIComponent(this.id)}/messages?${query}`);
    return body.items;
  }
}
