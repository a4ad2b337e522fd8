// One open chat: its messages, the turn in progress, tool approvals and notices, kept in step
// with the relay. The REST snapshot is the truth; events after the snapshot's (epoch, seq) are
// applied on top, each in a way that tolerates seeing it twice (replays after a reconnect or a
// reload overlap what the snapshot already shows).

import { apiErrorText, finishReasonText, RECOVERY, turnFailureText } from "./errors.js";
import { SocketError } from "../sdk/socket.js";
import { EVENT, OP } from "../sdk/protocol.js";

export const PAGE_SIZE = 100;
const LOCAL_BASE = 1e15; // sort key of not-yet-stored messages: after every stored one

function approvalOf(data, existing) {
  return {
    approval_id: data.approval_id,
    turn_id: data.turn_id,
    tool: String(data.tool ?? ""),
    arguments: data.arguments ?? null,
    deadline: typeof data.deadline === "number" ? data.deadline : null,
    state: existing?.state ?? "pending",
  };
}

function serverMessage(m) {
  return {
    id: m.id,
    seq: m.seq,
    sortKey: m.seq,
    role: m.role,
    content: m.content ?? "",
    status: m.status,
    finish_reason: m.finish_reason ?? null,
    client_msg_id: m.client_msg_id ?? null,
    turn_id: m.turn_id ?? null,
    created_at: m.created_at,
    error: null,
    metrics: null,
  };
}

export class Conversation {
  constructor({ chatId, api, socket, queue, history, view, notify, announce }) {
    this.chatId = chatId;
    this.topic = `chat:${chatId}`;
    this.api = api;
    this.socket = socket;
    this.queue = queue;
    this.history = history;
    this.view = view;
    this.notify = notify; // (notice | null) => void
    this.announce = announce;
    this.messages = new Map();
    this.order = [];
    this.activeTurn = null;
    this.approvals = new Map();
    this.title = null;
    this.hasOlder = false;
    this.loadingOlder = false;
    this.reloading = false;
    this.closed = false;
    this.saveTimer = null;
    this.unsubscribeQueue = queue.onChange(() => this.syncLocal());
  }

  // State helpers

  get(id) {
    return this.messages.get(id) ?? null;
  }

  resort() {
    this.order = [...this.messages.values()].sort((a, b) => a.sortKey - b.sortKey).map((m) => m.id);
  }

  maxSeq() {
    let max = 0;
    for (const m of this.messages.values()) if (m.seq != null && m.seq > max) max = m.seq;
    return max;
  }

  upsert(message) {
    const fresh = !this.messages.has(message.id);
    const merged = fresh ? message : Object.assign(this.messages.get(message.id), message);
    this.messages.set(merged.id, merged);
    if (fresh || message.sortKey !== undefined) this.resort();
    this.view.changed(merged.id, { fresh });
    return merged;
  }

  remove(id) {
    if (this.messages.delete(id)) {
      this.order = this.order.filter((x) => x !== id);
      this.view.removed(id);
    }
  }

  setTurn(turn) {
    this.activeTurn = turn;
    this.view.turnChanged();
  }

  // Loading

  /** Paint the local copy (if any), then load the truth and subscribe from its position. */
  async open() {
    const cached = this.history.load(this.chatId);
    if (cached) {
      this.title = cached.title ?? null;
      for (const m of cached.messages) this.messages.set(m.id, { ...m });
      for (const a of cached.approvals ?? []) this.approvals.set(a.approval_id, { ...a });
      this.resort();
      this.syncLocal(false);
      this.view.reset();
    }
    await this.reload();
  }

  async reload({ missed = false } = {}) {
    this.reloading = true;
    try {
      const snap = await this.api.get(`/v1/chats/${encodeURIComponent(this.chatId)}`);
      const from = Math.max(0, snap.last_seq - PAGE_SIZE);
      const rows = await this.fetchMessages(from);
      if (this.closed) return;
      this.title = snap.title;
      this.messages.clear();
      for (const row of rows) this.messages.set(row.id, serverMessage(row));
      this.hasOlder = from > 0;
      if (snap.partial_message_id) {
        const partial = this.messages.get(snap.partial_message_id);
        const text = snap.partial_text ?? "";
        if (partial) {
          partial.content = text;
          partial.status = "streaming";
        } else {
          this.messages.set(snap.partial_message_id, {
            ...serverMessage({ id: snap.partial_message_id, seq: null, role: "assistant", content: text, status: "streaming", created_at: Date.now() }),
            sortKey: this.maxSeq() + 0.5,
            turn_id: snap.turn?.id ?? null,
          });
        }
      }
      const turn = snap.turn;
      this.activeTurn =
        turn && (turn.state === "queued" || turn.state === "running")
          ? { turn_id: turn.id, state: turn.state, message_id: snap.partial_message_id ?? null }
          : null;
      for (const [id, a] of this.approvals) {
        if (!this.activeTurn || a.turn_id !== this.activeTurn.turn_id) this.approvals.delete(id);
      }
      if (this.activeTurn && Array.isArray(snap.pending_approvals)) this.openApprovals(snap.pending_approvals);
      this.resort();
      this.syncLocal(false);
      this.reloading = false;
      this.view.reset();
      this.view.turnChanged();
      if (missed) this.notify({ kind: "info", text: RECOVERY.events_missed, ttlMs: 8000 });
      this.socket.subscribe(this.topic, { epoch: snap.epoch, after_seq: snap.seq }).catch(() => {
        // Offline: the socket subscribes from this position once it is back.
      });
      this.persist();
    } finally {
      this.reloading = false;
    }
  }

  async fetchMessages(after) {
    const rows = [];
    let cursor = after;
    for (let page = 0; page < 50; page += 1) {
      const q = `?after=${cursor}&limit=${PAGE_SIZE * 2}`;
      const body = await this.api.get(`/v1/chats/${encodeURIComponent(this.chatId)}/messages${q}`);
      rows.push(...body.items);
      if (body.next_after == null) break;
      cursor = body.next_after;
    }
    return rows;
  }

  /** The page of messages before the oldest one shown; false when there is none. */
  async loadOlder() {
    if (!this.hasOlder || this.loadingOlder) return false;
    const oldest = Math.min(...[...this.messages.values()].filter((m) => m.seq != null).map((m) => m.seq));
    if (!Number.isFinite(oldest) || oldest <= 1) {
      this.hasOlder = false;
      return false;
    }
    this.loadingOlder = true;
    try {
      const after = Math.max(0, oldest - 1 - PAGE_SIZE);
      const q = `?after=${after}&limit=${PAGE_SIZE}`;
      const body = await this.api.get(`/v1/chats/${encodeURIComponent(this.chatId)}/messages${q}`);
      const added = [];
      for (const row of body.items) {
        if (row.seq < oldest && !this.messages.has(row.id)) {
          this.messages.set(row.id, serverMessage(row));
          added.push(row.id);
        }
      }
      this.hasOlder = after > 0;
      this.resort();
      this.view.prepended(added);
      return added.length > 0;
    } finally {
      this.loadingOlder = false;
    }
  }

  // Events

  apply(event) {
    if (this.closed || event.topic !== this.topic) return;
    // During a reload the snapshot decides; the resubscription that follows replays the rest.
    if (this.reloading && event.type !== EVENT.EVENTS_MISSED) return;
    const data = event.data ?? {};
    switch (event.type) {
      case EVENT.MESSAGE_CREATED:
        return this.onCreated(data.message);
      case EVENT.TURN_QUEUED:
        if (!this.activeTurn) this.setTurn({ turn_id: data.turn_id, state: "queued", message_id: null });
        return;
      case EVENT.TURN_STARTED:
        return this.onStarted(data);
      case EVENT.MESSAGE_DELTA:
        return this.onDelta(data);
      case EVENT.MESSAGE_COMPLETED:
        return this.onCompleted(data);
      case EVENT.TURN_FAILED:
        return this.onFailed(data);
      case EVENT.TURN_CANCELLED:
        return this.onCancelled(data);
      case EVENT.TURN_RETRYING:
        this.notify({ kind: "warn", text: RECOVERY.retrying(data.attempt ?? 2), ttlMs: 10000 });
        return;
      case EVENT.WORKER_STATE:
        if (data.status === "no_worker") this.notify({ kind: "warn", text: turnFailureText("no_worker"), id: "no_worker" });
        return;
      case EVENT.TOOL_APPROVAL_REQUESTED:
        return this.onApprovalRequested(data);
      case EVENT.TOOL_APPROVAL_RESOLVED:
        return this.setApproval(data.approval_id, data.decision === "approve" ? "approved" : "denied");
      case EVENT.EVENTS_MISSED:
        this.reload({ missed: true }).catch((err) => this.notify({ kind: "error", text: apiErrorText(err) }));
        return;
      default:
    }
  }

  onCreated(message) {
    if (!message?.id) return;
    if (message.client_msg_id) {
      this.remove(`local:${message.client_msg_id}`);
      this.queue.delivered(message.client_msg_id);
    }
    this.upsert(serverMessage(message));
    this.persistSoon();
  }

  ensureAnswer(messageId, turnId) {
    let m = this.get(messageId);
    if (!m) {
      m = this.upsert({
        ...serverMessage({ id: messageId, seq: null, role: "assistant", content: "", status: "streaming", created_at: Date.now() }),
        turn_id: turnId ?? null,
        sortKey: this.maxSeq() + 0.5,
      });
    }
    return m;
  }

  onStarted({ turn_id, message_id }) {
    this.notify(null, "no_worker");
    const m = this.ensureAnswer(message_id, turn_id);
    // A new attempt starts its answer from scratch; its deltas restart at offset 0.
    this.upsert({ id: m.id, content: "", status: "streaming", error: null, finish_reason: null, turn_id });
    this.setTurn({ turn_id, state: "running", message_id });
    this.announce("The assistant is answering…");
  }

  onDelta({ message_id, turn_id, offset, text }) {
    if (typeof text !== "string" || typeof offset !== "number") return;
    const m = this.ensureAnswer(message_id, turn_id);
    const have = m.content.length;
    if (offset > have) {
      // A gap: something between is missing. The snapshot has all of it.
      this.reload().catch(() => {});
      return;
    }
    if (offset + text.length <= have) return; // already shown (replay overlap)
    m.content += text.slice(have - offset);
    if (m.status !== "streaming") m.status = "streaming";
    this.view.changed(m.id, { streaming: true });
  }

  onCompleted({ message_id, turn_id, seq, content, finish_reason, metrics }) {
    const m = this.ensureAnswer(message_id, turn_id);
    this.upsert({
      id: m.id,
      content: content ?? m.content,
      status: "complete",
      finish_reason: finish_reason ?? null,
      seq,
      sortKey: seq ?? m.sortKey,
      metrics: metrics ?? null,
    });
    if (!this.activeTurn || this.activeTurn.turn_id === turn_id) this.setTurn(null);
    for (const a of this.approvals.values()) if (a.turn_id === turn_id && a.state === "pending") a.state = "gone";
    const note = finishReasonText(finish_reason);
    this.announce(`Assistant: ${(content ?? "").slice(0, 400)}${note ? ` (${note})` : ""}`);
    this.persistSoon();
  }

  onFailed({ turn_id, message_id, category, detail }) {
    const m = this.ensureAnswer(message_id, turn_id);
    this.upsert({ id: m.id, status: "failed", error: { category, detail } });
    if (!this.activeTurn || this.activeTurn.turn_id === turn_id) this.setTurn(null);
    this.announce(turnFailureText(category));
    this.persistSoon();
  }

  onCancelled({ turn_id }) {
    for (const m of this.messages.values()) {
      if (m.turn_id === turn_id && m.role === "assistant" && m.status === "streaming") {
        this.upsert({ id: m.id, status: "cancelled" });
      }
    }
    for (const a of this.approvals.values()) if (a.turn_id === turn_id && a.state === "pending") a.state = "gone";
    if (!this.activeTurn || this.activeTurn.turn_id === turn_id) this.setTurn(null);
    this.persistSoon();
  }

  onApprovalRequested(data) {
    if (!data.approval_id) return;
    this.approvals.set(data.approval_id, approvalOf(data, this.approvals.get(data.approval_id)));
    this.view.approvalsChanged(data.turn_id);
    this.announce(`The assistant asks to use ${data.tool}. Approve or deny below.`);
    this.persistSoon();
  }

  /** The snapshot's open requests of the active turn: the relay's list wins over the local copy. */
  openApprovals(open) {
    const turnId = this.activeTurn.turn_id;
    const listed = new Set();
    for (const data of open) {
      if (!data?.approval_id || data.turn_id !== turnId) continue;
      listed.add(data.approval_id);
      this.approvals.set(data.approval_id, approvalOf(data, this.approvals.get(data.approval_id)));
    }
    // A request the relay no longer waits on was decided elsewhere, expired or dropped.
    for (const a of this.approvals.values()) {
      if (a.state === "pending" && !listed.has(a.approval_id)) {
        a.state = a.deadline != null && a.deadline <= Date.now() ? "expired" : "gone";
      }
    }
  }

  setApproval(approvalId, state) {
    const a = this.approvals.get(approvalId);
    if (!a) return;
    a.state = state;
    this.view.approvalsChanged(a.turn_id);
    this.persistSoon();
  }

  // Actions

  /** Queue a message for sending (now or after a reconnect); the caller flushes the queue. */
  send(content) {
    const item = this.queue.add(this.chatId, content);
    this.syncLocal();
    return item;
  }

  /** Local (not yet stored) messages mirror the queue's items for this chat. */
  syncLocal(notifyView = true) {
    const items = this.queue.forChat(this.chatId);
    const live = new Set();
    for (const item of items) {
      const id = `local:${item.client_msg_id}`;
      live.add(id);
      const stored = [...this.messages.values()].some((m) => m.client_msg_id === item.client_msg_id && !m.id.startsWith("local:"));
      if (stored) continue;
      const current = this.messages.get(id);
      const status = item.state === "failed" ? "send_failed" : item.state;
      if (current && current.status === status) continue;
      const message = {
        id,
        seq: null,
        sortKey: LOCAL_BASE + item.created_at,
        role: "user",
        content: item.content,
        status,
        client_msg_id: item.client_msg_id,
        turn_id: null,
        created_at: item.created_at,
        error: item.error,
      };
      if (notifyView) this.upsert(message);
      else this.messages.set(id, message);
    }
    for (const m of [...this.messages.values()]) {
      if (m.id.startsWith("local:") && !live.has(m.id)) {
        if (notifyView) this.remove(m.id);
        else this.messages.delete(m.id);
      }
    }
    if (!notifyView) this.resort();
  }

  /** The relay acknowledged a send: show the stored message in place of the local one. */
  acked(item, ack) {
    if (this.closed) return;
    this.remove(`local:${item.client_msg_id}`);
    if (ack?.message) this.upsert(serverMessage(ack.message));
    if (ack?.turn_id && !this.activeTurn && !ack.duplicate) {
      this.setTurn({ turn_id: ack.turn_id, state: "queued", message_id: null });
    }
  }

  async stop() {
    try {
      await this.socket.request(OP.CANCEL, { topic: this.topic });
    } catch (err) {
      if (!(err instanceof SocketError) || !err.retryable) throw err;
      await this.api.post(`/v1/chats/${encodeURIComponent(this.chatId)}/cancel`, {}, { idempotent: true });
    }
  }

  async decide(approvalId, decision) {
    const a = this.approvals.get(approvalId);
    if (!a || a.state !== "pending") return;
    this.setApproval(approvalId, "sending");
    try {
      await this.socket.request(OP.APPROVE, { topic: this.topic, approval_id: approvalId, decision });
      this.setApproval(approvalId, decision === "approve" ? "approved" : "denied");
    } catch (err) {
      if (err.code === "not_found") this.setApproval(approvalId, "gone");
      else {
        this.setApproval(approvalId, "pending");
        throw err;
      }
    }
  }

  // Local copy

  persistSoon() {
    if (this.saveTimer) return;
    this.saveTimer = setTimeout(() => {
      this.saveTimer = null;
      this.persist();
    }, 400);
  }

  persist() {
    const stored = this.order
      .map((id) => this.messages.get(id))
      .filter((m) => m && !m.id.startsWith("local:"));
    const approvals = [...this.approvals.values()].filter((a) => a.state === "pending");
    this.history.save(this.chatId, { title: this.title, messages: stored, approvals });
  }

  close() {
    this.closed = true;
    if (this.saveTimer) {
      clearTimeout(this.saveTimer);
      this.saveTimer = null;
      this.persist();
    }
    this.unsubscribeQueue();
    this.socket.unsubscribe(this.topic);
  }
}
