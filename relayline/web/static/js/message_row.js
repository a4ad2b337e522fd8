// One message on screen (author, body, status line, tool approval cards), re-rendered only
// when what it shows has changed.

import { button, el } from "./dom.js";
import { apiErrorText, finishReasonText, RECOVERY, turnFailureText } from "./errors.js";
import { icon, renderMarkdown } from "./render.js";

const USER_ICON = "M12 12a5 5 0 1 0 0-10 5 5 0 0 0 0 10zm0 2c-4.4 0-8 2.2-8 5v3h16v-3c0-2.8-3.6-5-8-5z";
const BOT_ICON =
  "M12 2a2 2 0 0 1 2 2c0 .7-.4 1.4-1 1.7V7h5a3 3 0 0 1 3 3v8a3 3 0 0 1-3 3H6a3 3 0 0 1-3-3v-8a3 3 0 0 1 3-3h5V5.7A2 2 0 0 1 12 2zM8.5 12a1.5 1.5 0 1 0 0 3 1.5 1.5 0 0 0 0-3zm7 0a1.5 1.5 0 1 0 0 3 1.5 1.5 0 0 0 0-3z";
const WARN_ICON = "M1 21h22L12 2 1 21zm12-3h-2v-2h2v2zm0-4h-2v-4h2v4z";
const TOOL_ICON =
  "M22.7 19l-9.1-9.1c.9-2.3.4-5-1.5-6.9-2-2-5-2.4-7.4-1.3L9 6 6 9 1.6 4.7C.4 7.1.9 10.1 2.9 12.1c1.9 1.9 4.6 2.4 6.9 1.5l9.1 9.1c.4.4 1 .4 1.4 0l2.3-2.3c.5-.4.5-1.1.1-1.4z";

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });

function formatSeconds(ms) {
  return ms >= 10_000 ? `${Math.round(ms / 1000)} s` : `${(ms / 1000).toFixed(1)} s`;
}

export class Row {
  constructor(message) {
    this.id = message.id;
    this.el = el("article", `msg msg--${message.role === "user" ? "user" : "assistant"}`);
    this.el.dataset.id = message.id;
    const avatar = el("div", "msg__avatar");
    avatar.setAttribute("aria-hidden", "true");
    avatar.append(icon(message.role === "user" ? USER_ICON : BOT_ICON, 18));
    const main = el("div", "msg__main");
    const meta = el("div", "msg__meta");
    this.author = el("span", "msg__author", message.role === "user" ? "You" : "Assistant");
    this.time = el("time", "msg__time");
    this.extra = el("span", "msg__extra");
    meta.append(this.author, this.time, this.extra);
    this.body = el("div", "msg__body markdown");
    this.cards = el("div", "msg__cards");
    this.status = el("div", "msg__status");
    main.append(meta, this.body, this.cards, this.status);
    this.el.append(avatar, main);
    this.shown = { content: null, status: null, error: null, finish: null, cards: null };
  }

  update(m, conversation) {
    const streaming = m.status === "streaming";
    if (this.shown.content !== m.content || (this.shown.status === "streaming") !== streaming) {
      if (!m.content && streaming) {
        const dots = el("span", "typing", "");
        dots.setAttribute("role", "img");
        dots.setAttribute("aria-label", "The assistant is thinking");
        for (let i = 0; i < 3; i += 1) dots.append(el("i"));
        this.body.replaceChildren(dots);
      } else {
        this.body.replaceChildren(renderMarkdown(m.content, { streaming }));
        if (streaming) caretTarget(this.body)?.classList.add("stream-caret");
      }
      this.shown.content = m.content;
    }
    this.el.classList.toggle("is-streaming", streaming);
    this.el.setAttribute("aria-busy", streaming ? "true" : "false");
    if (m.created_at) {
      const at = new Date(m.created_at);
      this.time.dateTime = at.toISOString();
      this.time.textContent = timeFormat.format(at);
    }
    if (m.metrics?.latency_ms != null) {
      const parts = [formatSeconds(m.metrics.latency_ms)];
      if (m.metrics.tokens_out) parts.push(`${m.metrics.tokens_out} tokens`);
      this.extra.textContent = parts.join(" · ");
    }
    const finish = m.finish_reason ?? null;
    if (this.shown.status !== m.status || this.shown.error !== m.error || this.shown.finish !== finish) {
      this.status.replaceChildren(...statusNodes(m));
      this.el.dataset.status = m.status;
      this.shown.status = m.status;
      this.shown.error = m.error;
      this.shown.finish = finish;
    }
    // The user's message carries the same turn id; the cards belong under the answer.
    const cards =
      m.role === "assistant" && m.turn_id
        ? [...conversation.approvals.values()].filter((a) => a.turn_id === m.turn_id)
        : [];
    const key = cards.map((a) => `${a.approval_id}:${a.state}`).join(",");
    if (key !== this.shown.cards) {
      this.cards.replaceChildren(...cards.map(approvalCard));
      this.shown.cards = key;
    }
  }
}

const CONTAINERS = new Set(["BLOCKQUOTE", "UL", "OL", "LI", "TABLE", "THEAD", "TBODY", "TR", "DIV"]);
const BLOCKS = new Set([...CONTAINERS, "P", "PRE", "H1", "H2", "H3", "H4", "H5", "H6", "TD", "TH"]);

/** The innermost block that ends the text, where the typing caret belongs. */
function caretTarget(body) {
  let node = body.lastElementChild;
  while (node && CONTAINERS.has(node.tagName) && BLOCKS.has(node.lastElementChild?.tagName)) {
    node = node.lastElementChild;
  }
  return node;
}

function statusNodes(m) {
  switch (m.status) {
    case "queued":
      return [el("span", "chip chip--muted", "Waiting to send · goes out when you're back online")];
    case "sending":
      return [el("span", "chip chip--muted", "Sending…")];
    case "send_failed": {
      const box = el("div", "callout callout--error");
      box.append(icon(WARN_ICON, 16), el("span", "", `Not sent. ${apiErrorText(m.error ?? {})}`));
      const actions = el("span", "callout__actions");
      actions.append(
        button("Retry", "retry-send", "btn btn--small", { id: m.client_msg_id }),
        button("Discard", "discard-send", "btn btn--small btn--ghost", { id: m.client_msg_id }),
      );
      box.append(actions);
      box.setAttribute("role", "alert");
      return [box];
    }
    case "failed": {
      const box = el("div", "callout callout--error");
      box.setAttribute("role", "alert");
      const category = m.error?.category;
      box.append(icon(WARN_ICON, 16), el("span", "", category ? turnFailureText(category) : "This answer could not be completed."));
      return [box];
    }
    case "cancelled":
      return [el("span", "chip chip--muted", RECOVERY.cancelled)];
    case "complete": {
      // An answer the model ended early (length limit, content filter) says so.
      const note = m.role === "assistant" ? finishReasonText(m.finish_reason) : null;
      return note ? [el("span", "chip chip--muted", note)] : [];
    }
    default:
      return [];
  }
}

function prettyArguments(value) {
  if (typeof value === "string") {
    try {
      return JSON.stringify(JSON.parse(value), null, 2);
    } catch {
      return value;
    }
  }
  return JSON.stringify(value ?? {}, null, 2);
}

const APPROVAL_STATES = {
  approved: "Approved",
  denied: "Denied",
  expired: RECOVERY.expired,
  gone: "No longer waiting for an answer.",
  sending: "Sending your answer…",
};

function approvalCard(a) {
  const card = el("section", `approval approval--${a.state}`);
  card.dataset.approvalId = a.approval_id;
  card.setAttribute("aria-label", `Tool request: ${a.tool}`);
  const head = el("header", "approval__head");
  const title = el("span", "approval__title");
  title.append(icon(TOOL_ICON, 15), el("span", "", "Wants to run "), el("code", "approval__tool", a.tool));
  head.append(title);
  if (a.state === "pending" && a.deadline) {
    const countdown = el("span", "approval__countdown");
    countdown.dataset.deadline = String(a.deadline);
    head.append(countdown);
    updateCountdown(countdown);
  }
  const args = el("pre", "approval__args");
  args.textContent = prettyArguments(a.arguments);
  card.append(head, args);
  if (a.state === "pending") {
    const actions = el("div", "approval__actions");
    actions.append(
      button("Approve", "approve", "btn btn--primary btn--small", { approval: a.approval_id }),
      button("Deny", "deny", "btn btn--small", { approval: a.approval_id }),
    );
    card.append(actions);
  } else {
    card.append(el("p", "approval__state", APPROVAL_STATES[a.state] ?? a.state));
  }
  return card;
}

export function updateCountdown(node) {
  const left = Number(node.dataset.deadline) - Date.now();
  if (left <= 0) {
    node.textContent = "expired";
    return false;
  }
  const s = Math.ceil(left / 1000);
  node.textContent = s >= 60 ? `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")} left` : `${s} s left`;
  node.classList.toggle("is-urgent", s <= 15);
  return true;
}
