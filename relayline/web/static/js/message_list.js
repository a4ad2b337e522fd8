// The conversation on screen. Changes are collected and painted once per animation frame,
// and only rows that changed are re-rendered (during a stream that is the one answer being
// written). Only the most recent messages get DOM rows at first; older ones are added as the
// reader scrolls up, and rows off screen skip layout (content-visibility), so a chat with
// thousands of messages stays quick. Auto-scroll follows the answer until the reader scrolls
// up; then a "new messages" badge appears until they are back at the bottom.

import { Row, updateCountdown } from "./message_row.js";
import { copyCode } from "./render.js";
import { closestTo } from "./dom.js";

const INITIAL_ROWS = 60;
const MORE_ROWS = 50;
const BOTTOM_SLACK_PX = 48;
const LOAD_MORE_PX = 400;
const INTENT_MS = 800; // how long after a wheel, touch or key a scroll counts as the reader's

export class MessageListView {
  constructor({ scroller, list, typing, badge, empty, onAction, onTurnChange }) {
    this.onTurnChange = onTurnChange;
    this.scroller = scroller;
    this.list = list;
    this.typing = typing;
    this.badge = badge;
    this.empty = empty;
    this.onAction = onAction;
    this.conv = null;
    this.rows = new Map();
    this.dirty = new Set();
    this.frame = 0;
    this.pinned = true;
    this.grewUnseen = false;
    this.firstId = null;
    this.paintCost = 0;
    this.intentAt = -Infinity;
    const intent = () => {
      this.intentAt = performance.now();
    };
    scroller.addEventListener("wheel", (ev) => ev.deltaY < 0 && intent(), { passive: true });
    scroller.addEventListener("touchmove", intent, { passive: true });
    scroller.addEventListener("pointerdown", (ev) => ev.target === scroller && intent()); // scrollbar
    document.addEventListener("keydown", (ev) => {
      const typing = ev.target instanceof HTMLElement && ev.target.matches("input, textarea");
      if (!typing && ["ArrowUp", "PageUp", "Home"].includes(ev.key)) intent();
    });
    scroller.addEventListener("scroll", () => this.onScroll(), { passive: true });
    // The composer growing or the window resizing moves the bottom too.
    new ResizeObserver(() => {
      if (this.pinned) this.stick();
    }).observe(scroller);
    badge.addEventListener("click", () => this.scrollToBottom());
    list.addEventListener("click", (ev) => this.onClick(ev));
    setInterval(() => this.tickCountdowns(), 1000);
  }

  attach(conversation) {
    this.conv = conversation;
    this.reset();
  }

  detach() {
    this.conv = null;
    this.reset();
  }

  atBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight <= BOTTOM_SLACK_PX;
  }

  onScroll() {
    if (this.atBottom()) {
      this.pinned = true;
      this.setBadge(false);
    } else if (performance.now() - this.intentAt < INTENT_MS) {
      // Only the reader unpins: rows growing, settling their size or the composer resizing
      // also move the bottom away, and must not stop the auto-scroll.
      this.pinned = false;
    }
    if (this.scroller.scrollTop < LOAD_MORE_PX) this.showOlder();
  }

  stick() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
  }

  setBadge(show) {
    this.grewUnseen = show;
    this.badge.hidden = !show;
  }

  scrollToBottom() {
    this.stick();
    this.pinned = true;
    this.setBadge(false);
  }

  reset() {
    this.rows.clear();
    this.dirty.clear();
    this.list.replaceChildren();
    const order = this.conv?.order ?? [];
    const from = Math.max(0, order.length - INITIAL_ROWS);
    this.firstId = order[from] ?? null;
    const fragment = document.createDocumentFragment();
    for (const id of order.slice(from)) fragment.append(this.makeRow(id).el);
    this.list.append(fragment);
    this.updateChrome();
    this.pinned = true;
    this.setBadge(false);
    this.stick();
  }

  makeRow(id) {
    const m = this.conv.get(id);
    const row = new Row(m);
    row.update(m, this.conv);
    this.rows.set(id, row);
    return row;
  }

  changed(id, { fresh = false } = {}) {
    if (!this.conv) return;
    if (!this.rows.has(id)) {
      const order = this.conv.order;
      const index = order.indexOf(id);
      const first = this.firstId ? order.indexOf(this.firstId) : -1;
      if (index < 0 || (first >= 0 && index < first)) return;
      const row = this.makeRow(id);
      let next = null;
      for (let i = index + 1; i < order.length && !next; i += 1) next = this.rows.get(order[i])?.el ?? null;
      this.list.insertBefore(row.el, next);
      if (this.firstId === null || first < 0) this.firstId = id;
      this.grew = true;
    } else {
      this.dirty.add(id);
      if (fresh) this.grew = true;
    }
    this.schedule();
  }

  removed(id) {
    const row = this.rows.get(id);
    if (row) {
      row.el.remove();
      this.rows.delete(id);
      if (this.firstId === id) this.firstId = this.conv?.order.find((x) => this.rows.has(x)) ?? null;
    }
    this.schedule();
  }

  turnChanged() {
    this.schedule();
    this.onTurnChange?.();
  }

  approvalsChanged(turnId) {
    if (!this.conv) return;
    for (const m of this.conv.messages.values()) if (m.turn_id === turnId && m.role === "assistant") this.dirty.add(m.id);
    this.grew = true;
    this.schedule();
  }

  prepended() {
    this.showOlder(true);
  }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      // A very long answer can cost more than a frame to render; then paint less often
      // rather than freeze scrolling and typing.
      const wait = this.paintCost > 12 ? this.paintCost * 2 : 0;
      if (wait && performance.now() - this.lastPaint < wait) {
        this.frame = requestAnimationFrame(() => {
          this.frame = 0;
          this.paint();
        });
        return;
      }
      this.paint();
    });
  }

  paint() {
    const started = performance.now();
    const pinned = this.pinned;
    const before = this.scroller.scrollHeight;
    for (const id of this.dirty) {
      const m = this.conv?.get(id);
      const row = this.rows.get(id);
      if (m && row) row.update(m, this.conv);
    }
    const streamed = this.dirty.size > 0;
    this.dirty.clear();
    this.updateChrome();
    const grew = this.grew || (streamed && this.scroller.scrollHeight > before);
    this.grew = false;
    if (pinned) {
      this.stick();
    } else if (grew) {
      this.setBadge(true);
    }
    this.lastPaint = performance.now();
    this.paintCost = this.lastPaint - started;
  }

  updateChrome() {
    const conv = this.conv;
    const turn = conv?.activeTurn;
    const waiting = Boolean(turn && (!turn.message_id || !conv.get(turn.message_id)));
    this.typing.hidden = !waiting;
    this.empty.hidden = Boolean(conv && conv.order.length > 0);
  }

  /** Give more of the older messages rows, keeping what the reader looks at in place. */
  showOlder(afterLoad = false) {
    if (!this.conv) return;
    const order = this.conv.order;
    const first = this.firstId ? order.indexOf(this.firstId) : order.length;
    if (first > 0) {
      const from = Math.max(0, first - MORE_ROWS);
      const keep = this.scroller.scrollHeight - this.scroller.scrollTop;
      const fragment = document.createDocumentFragment();
      for (const id of order.slice(from, first)) if (!this.rows.has(id)) fragment.append(this.makeRow(id).el);
      this.list.prepend(fragment);
      this.firstId = order[from];
      this.scroller.scrollTop = this.scroller.scrollHeight - keep;
    } else if (!afterLoad && this.conv.hasOlder) {
      this.conv.loadOlder().catch(() => {});
    }
  }

  tickCountdowns() {
    for (const node of this.list.querySelectorAll(".approval__countdown")) {
      if (!updateCountdown(node)) {
        const card = node.closest(".approval");
        const id = card?.dataset.approvalId;
        if (id && this.conv?.approvals.get(id)?.state === "pending") this.conv.setApproval(id, "expired");
      }
    }
  }

  onClick(ev) {
    const target = closestTo(ev, "[data-action]");
    if (!target || !this.list.contains(target)) return;
    const action = target.dataset.action;
    if (action === "copy-code") {
      copyCode(target);
      return;
    }
    this.onAction?.(action, target.dataset);
  }
}
