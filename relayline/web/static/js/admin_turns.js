// Admin console, turns: the overview's figures (who waits and since when, what runs, how the
// last hour's turns ended) and the "Failed turns" tab (the latest failures with their reason,
// correlation id and timings, by tenant, a page at a time). Both read the store through the
// admin API, so they count every relay instance's turns.

import { badge, button, el } from "./dom.js";
import { COPY_ICON, icon } from "./render.js";
import {
  ago,
  CATEGORY_TEXT,
  CursorPager,
  failureEntries,
  failureRate,
  formatDuration,
  rangeText,
  turnsPath,
  waitTone,
} from "./turn_report.js";

/** An element of the page by id (inputs, buttons, sections: the caller knows which). */
const $ = (/** @type {string} */ id) => /** @type {any} */ (document.getElementById(id));
const PAGE_SIZE = 20;
const timeFormat = new Intl.DateTimeFormat(undefined, { timeStyle: "medium" });
const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
const percent = new Intl.NumberFormat(undefined, { style: "percent", maximumFractionDigits: 1 });

function stat(label, value, sub, tone = null) {
  const card = el("div", tone && tone !== "ok" ? `stat stat--${tone}` : "stat");
  card.append(el("span", "stat__label", label), el("strong", "stat__value", value), el("span", "stat__sub", sub));
  return card;
}

/**
 * The overview's turn cards: waiting, the longest wait, running, and the last hour's endings.
 * @param {any} summary the body of GET /v1/admin/turns/summary
 * @param {{ workersOnline: number, capacity: number, now: number }} context
 */
export function turnStats(summary, { workersOnline, capacity, now }) {
  const tone = waitTone(summary, { workersOnline });
  const waitingSub = !summary.queued
    ? "nobody is waiting for an answer"
    : workersOnline
      ? "for a free worker"
      : "no worker is online to take them";
  const oldest = summary.oldest_queued_s;
  return [
    stat("Waiting", String(summary.queued), waitingSub, tone),
    stat(
      "Longest wait",
      oldest == null ? "—" : formatDuration(oldest * 1000),
      oldest == null ? "no turn in the queue" : `waiting since ${timeFormat.format(new Date(now - oldest * 1000))}`,
      tone,
    ),
    stat("Running", String(summary.running), capacity ? `${summary.running} of ${capacity} worker slots` : "no worker slots online"),
    stat("Completed · last hour", String(summary.completed_last_hour), `${summary.cancelled_last_hour} cancelled`),
  ];
}

/**
 * The overview's card of the last hour's failures, by category, most first.
 * @param {any} summary
 */
export function failuresCard(summary) {
  const entries = failureEntries(summary.failed_last_hour);
  const total = entries.reduce((t, e) => t + e.count, 0);
  const card = el("section", "card panel-card");
  card.id = "failures-card";
  card.setAttribute("aria-labelledby", "failures-title");
  const head = el("div", "panel-card__head");
  const title = el("h2", "panel-card__title", "Failures · last hour");
  title.id = "failures-title";
  const link = el("a", "panel-card__link", "Failed turns →");
  link.href = "#failed";
  head.append(title, link);
  card.append(head);
  if (!total) {
    const calm = el("p", "panel-card__calm");
    calm.append(el("span", "calm-dot"), document.createTextNode("No turn failed in the last hour."));
    card.append(calm);
    return card;
  }
  const rate = failureRate(summary);
  const share = rate == null ? "" : ` · ${percent.format(rate)} of the turns that ended`;
  card.append(el("p", "panel-card__lead", `${total} failed turn${total === 1 ? "" : "s"}${share}`));
  const list = el("ul", "failures");
  list.setAttribute("aria-label", "Failures by category");
  for (const { category, count, share } of entries) {
    const item = el("li", "failures__item");
    item.dataset.category = category;
    item.title = CATEGORY_TEXT[category] ?? category;
    const name = el("span", "failures__name mono", category);
    const bar = el("span", "bar");
    const fill = el("span", "bar__fill");
    fill.style.width = `${Math.max(4, Math.round(share * 100))}%`;
    bar.append(fill);
    item.append(name, bar, el("span", "failures__count", String(count)));
    list.append(item);
  }
  card.append(list);
  return card;
}

/** A copy button for `text`, with its feedback on itself. */
export function copyButton(text, what) {
  const copy = button("", null, "copy-btn");
  copy.setAttribute("aria-label", `Copy ${what} ${text}`);
  copy.title = `Copy ${what}`;
  const label = el("span", "copy-btn__label", "Copy");
  copy.append(icon(COPY_ICON, 13), label);
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(text);
      label.textContent = "Copied";
    } catch {
      // Clipboard access needs a secure context: select the id so Ctrl+C works.
      const value = copy.parentElement?.querySelector(".copy-value");
      if (value) {
        const range = document.createRange();
        range.selectNodeContents(value);
        getSelection().removeAllRanges();
        getSelection().addRange(range);
      }
      label.textContent = "Ctrl+C";
    }
    setTimeout(() => {
      label.textContent = "Copy";
    }, 1600);
  });
  return copy;
}

/** "chat 01J…" on one line: the id cut to the column (whole in its tooltip and a copy). */
function idLine(kind, id) {
  const line = el("div", "id-line");
  const value = el("span", "id-line__value mono", id);
  value.title = id;
  line.append(el("span", "id-line__kind", kind), value);
  return line;
}

function timing(label, ms) {
  const row = el("div", "timing");
  row.append(el("span", "timing__label", label), el("span", "timing__value", formatDuration(ms)));
  return row;
}

/** The "Failed turns" tab. */
export class FailedTurnsPanel {
  constructor({ api, onError }) {
    this.api = api;
    this.onError = onError;
    this.pager = new CursorPager();
    this.tenantId = "";
    this.items = [];
    this.loading = null;
    $("failed-tenant").addEventListener("change", () => {
      this.tenantId = $("failed-tenant").value;
      this.pager.reset();
      this.load();
    });
    $("failed-refresh").addEventListener("click", () => this.load());
    $("failed-older").addEventListener("click", () => this.pager.older() && this.load());
    $("failed-newer").addEventListener("click", () => this.pager.newer() && this.load());
  }

  /** The tenant filter's choices (the tenants tab's list, whenever it changes). */
  setTenants(tenants) {
    const select = $("failed-tenant");
    const all = el("option", "", "All tenants");
    all.value = "";
    const options = [...tenants]
      .sort((a, b) => a.name.localeCompare(b.name) || a.id.localeCompare(b.id))
      .map((t) => {
        const option = el("option", "", t.disabled ? `${t.name} (disabled)` : t.name);
        option.value = t.id;
        return option;
      });
    select.replaceChildren(all, ...options);
    select.value = this.tenantId;
    if (select.value !== this.tenantId) {
      // A tenant chosen before the list knew it: keep filtering by it.
      const kept = el("option", "", this.tenantId);
      kept.value = this.tenantId;
      select.append(kept);
      select.value = this.tenantId;
    }
  }

  /**
   * Load the page the pager points at. `quiet`: a periodic refresh, which leaves the table
   * alone when nothing changed (a copy in progress keeps its feedback).
   */
  async load({ quiet = false } = {}) {
    const path = turnsPath({ state: "failed", tenantId: this.tenantId || null, before: this.pager.current, limit: PAGE_SIZE });
    const request = this.api.get(path, { retries: quiet ? 0 : undefined });
    this.loading = request;
    $("failed-list").setAttribute("aria-busy", "true");
    let body;
    try {
      body = await request;
    } catch (err) {
      if (this.loading === request && !quiet) this.onError(err);
      if (this.loading === request) $("failed-list").removeAttribute("aria-busy");
      return;
    }
    if (this.loading !== request) return; // a newer request (another filter or page) won
    $("failed-list").removeAttribute("aria-busy");
    const same = body.items.length === this.items.length && body.items.every((t, i) => t.id === this.items[i]?.id);
    this.pager.shown(body.next_before);
    this.items = body.items;
    if (!(quiet && same)) this.render();
    else this.renderTimes();
    this.renderPager();
  }

  render() {
    const now = Date.now();
    const rows = this.items.map((t) => this.row(t, now));
    $("failed-rows").replaceChildren(...rows);
    const empty = $("failed-empty");
    empty.hidden = rows.length > 0;
    empty.textContent = this.tenantId
      ? "No failed turns for this tenant."
      : "No failed turns. When a turn fails, it shows here with its reason and correlation id.";
    $("failed-table").hidden = rows.length === 0;
  }

  /** Refresh only the "… ago" of each row. */
  renderTimes() {
    const now = Date.now();
    for (const node of /** @type {NodeListOf<HTMLElement>} */ (document.querySelectorAll("#failed-rows [data-at]"))) {
      node.textContent = ago(Number(node.dataset.at), now);
    }
  }

  renderPager() {
    $("failed-range").textContent = rangeText(this.pager.page, PAGE_SIZE, this.items.length, this.pager.hasOlder);
    $("failed-newer").disabled = !this.pager.hasNewer;
    $("failed-older").disabled = !this.pager.hasOlder;
    $("failed-pager").hidden = !this.pager.hasNewer && !this.pager.hasOlder;
  }

  row(t, now) {
    const tr = el("tr");
    tr.dataset.turn = t.id;
    const at = t.finished_at ?? t.created_at;

    const when = el("td", "turn-when");
    const rel = el("strong", "", ago(at, now));
    rel.dataset.at = String(at);
    const abs = el("div", "sub", dateTimeFormat.format(new Date(at)));
    when.append(rel, abs);

    const tenant = el("td", "turn-tenant");
    tenant.append(el("strong", "", t.tenant_name ?? "unknown tenant"), idLine("chat", t.chat_id));

    const why = el("td", "turn-why");
    const category = t.error_category ?? "unknown";
    const tag = badge(category, "bad");
    tag.classList.add("mono");
    tag.title = CATEGORY_TEXT[category] ?? "";
    why.append(tag);
    if (t.error_detail) {
      const detail = el("p", "turn-why__detail", t.error_detail);
      detail.title = t.error_detail;
      why.append(detail);
    }
    const where = [`attempt ${t.attempt}`];
    if (t.worker_id) where.push(`worker ${t.worker_id}`);
    why.append(el("div", "sub", where.join(" · ")));

    const corr = el("td", "turn-corr");
    if (t.correlation_id) {
      const wrap = el("div", "copyable");
      wrap.append(el("code", "copy-value", t.correlation_id), copyButton(t.correlation_id, "correlation id"));
      corr.append(wrap);
    } else corr.append(el("span", "muted", "—"));
    corr.append(idLine("turn", t.id));

    const times = el("td", "turn-times");
    times.append(
      timing("Waited", t.timings.queued_ms),
      timing("Ran", t.timings.run_ms),
      timing("First token", t.timings.first_token_ms),
    );

    tr.append(when, tenant, why, corr, times);
    return tr;
  }
}
