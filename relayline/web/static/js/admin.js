// The admin console: sign-in with the admin key (kept in sessionStorage, so it leaves with
// the tab), health and key figures, who waits for an answer and why (turns, failures, workers'
// breakers and last errors), workers live over the `admin` topic, a tenant's daily analytics,
// tenants and keys.

import { Api } from "../sdk/api.js";
import { AnalyticsPanel } from "./admin_analytics.js";
import { TenantsPanel } from "./admin_tenants.js";
import { failuresCard, FailedTurnsPanel, turnStats } from "./admin_turns.js";
import { badge, el } from "./dom.js";
import { apiErrorText, connectionText } from "./errors.js";
import { keyFigures, parseMetrics } from "./metrics.js";
import { RelaySocket } from "../sdk/socket.js";
import { EVENT } from "../sdk/protocol.js";
import { BREAKER_TEXT, BREAKER_TONE, CATEGORY_TEXT } from "./turn_report.js";

const KEY = "relayline.admin";
const REFRESH_MS = 5_000;
// A burst of worker.state events (a worker reporting after each failure) refreshes once.
const EVENT_REFRESH_MS = 400;
const SECTIONS = ["overview", "failed", "analytics", "tenants", "workers"];
/** An element of the page by id (inputs, buttons, sections: the caller knows which). */
const $ = (/** @type {string} */ id) => /** @type {any} */ (document.getElementById(id));
const number = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 });

const STATUS_TONE = { ready: "ok", busy: "info", draining: "warn", degraded: "warn", error: "bad" };

class AdminApp {
  constructor() {
    this.key = sessionStorage.getItem(KEY);
    this.api = new Api({ token: () => this.key });
    this.workers = new Map();
    this.liveEvents = 0;
    this.queued = 0;
    this.section = "overview";
    this.socket = null;
    this.timer = null;
    this.turnsTimer = null;
    this.summary = null;
    this.shownOnce = false;
    this.health = null;
    this.failedTurns = new FailedTurnsPanel({ api: this.api, onError: (err) => this.failed(err) });
    this.analytics = new AnalyticsPanel({ api: this.api, onError: (err) => this.failed(err) });
    this.tenants = new TenantsPanel({
      api: this.api,
      toast: (t, k) => this.toast(t, k),
      onChange: (list) => {
        this.failedTurns.setTenants(list);
        this.analytics.setTenants(list);
      },
    });
  }

  start() {
    $("login-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.signIn($("admin-key").value.trim());
    });
    $("logout").addEventListener("click", () => this.signOut());
    $("refresh-overview").addEventListener("click", () => this.refreshWorkers().then(() => this.refreshOverview()));
    addEventListener("hashchange", () => this.show(location.hash.slice(1)));
    if (this.key) this.enter();
    else this.showLogin();
  }

  showLogin(error) {
    $("console").hidden = true;
    $("login").hidden = false;
    $("login-error").hidden = !error;
    $("login-error").textContent = error ?? "";
    $("admin-key").focus();
  }

  async signIn(key) {
    if (!key) return;
    this.key = key;
    try {
      await this.api.get("/v1/admin/tenants?limit=1", { retries: 0 });
    } catch (err) {
      this.key = null;
      this.showLogin(err.status === 401 || err.status === 403 ? "That key was not accepted." : apiErrorText(err));
      return;
    }
    sessionStorage.setItem(KEY, key);
    $("admin-key").value = "";
    this.enter();
  }

  signOut() {
    sessionStorage.removeItem(KEY);
    this.key = null;
    this.socket?.close();
    this.socket = null;
    clearInterval(this.timer);
    clearTimeout(this.turnsTimer);
    this.turnsTimer = null;
    this.shownOnce = false;
    this.showLogin();
  }

  enter() {
    $("login").hidden = true;
    $("console").hidden = false;
    this.connect();
    this.show(location.hash.slice(1) || "overview");
    // The overview's worker card reads the worker list, so that comes first.
    this.refreshWorkers().then(() => this.refreshOverview());
    this.tenants.load().catch((err) => this.failed(err));
    clearInterval(this.timer);
    this.timer = setInterval(() => {
      if (document.hidden) return;
      this.refreshWorkers().then(() => {
        if (this.section === "overview") this.refreshOverview();
        // Only the newest page follows new failures; an older one stays as the operator left it.
        if (this.section === "failed" && !this.failedTurns.pager.hasNewer) this.failedTurns.load({ quiet: true });
      });
    }, REFRESH_MS);
  }

  show(section) {
    if (!SECTIONS.includes(section)) section = "overview";
    const entering = section !== this.section || !this.shownOnce;
    this.shownOnce = true;
    this.section = section;
    if (entering && section === "failed") this.failedTurns.load();
    if (entering && section === "overview" && this.summary) this.refreshTurns();
    if (section !== "analytics") this.analytics.hidden();
    for (const node of /** @type {NodeListOf<HTMLElement>} */ (document.querySelectorAll("[data-section]"))) node.hidden = node.dataset.section !== section;
    for (const tab of /** @type {NodeListOf<HTMLElement>} */ (document.querySelectorAll("[data-tab]"))) {
      const on = tab.dataset.tab === section;
      tab.classList.toggle("is-active", on);
      if (on) tab.setAttribute("aria-current", "page");
      else tab.removeAttribute("aria-current");
    }
    // After the section is visible: its charts take their width from it.
    if (entering && section === "analytics") this.analytics.shown();
  }

  failed(err) {
    if (err?.status === 401) {
      this.signOut();
      this.showLogin("The admin key is no longer accepted. Sign in again.");
      return;
    }
    this.toast(apiErrorText(err), "error");
  }

  toast(text, kind = "info") {
    const node = el("div", `toast toast--${kind}`, text);
    node.setAttribute("role", kind === "error" ? "alert" : "status");
    $("toasts").append(node);
    setTimeout(() => node.remove(), 5000);
  }

  // Live workers over the admin topic

  connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    this.socket = new RelaySocket({ url: `${scheme}://${location.host}/v1/ws`, token: () => this.key });
    this.socket.on("state", (status) => {
      $("conn").dataset.state = status.state;
      $("conn").lastChild.textContent = status.state === "online" ? "Live" : connectionText(status);
    });
    this.socket.on("event", (event) => {
      if (event.type === EVENT.WORKER_STATE && event.data?.worker_id) {
        this.liveEvents += 1;
        // Keep what the list said and the event does not (the instance it is connected to).
        const known = this.workers.get(event.data.worker_id);
        this.workers.set(event.data.worker_id, { ...known, ...event.data, seen: Date.now() });
        this.renderWorkers();
        // A worker reports after each failure it sends: the turn figures have moved too.
        if (this.section === "overview") this.soonRefreshTurns();
      }
    });
    this.socket.on("ready", () => this.refreshWorkers());
    this.socket.on("auth", () => this.failed({ status: 401 }));
    this.socket.topics.set("admin", { epoch: null, seq: 0 });
    this.socket.connect();
  }

  async refreshWorkers() {
    try {
      const body = await this.api.get("/v1/admin/workers");
      this.workers = new Map(body.items.map((w) => [w.worker_id, w]));
      this.queued = body.queued_turns;
      this.renderWorkers();
    } catch (err) {
      this.failed(err);
    }
  }

  renderWorkers() {
    // With several relay instances, say which one each worker is connected to.
    const instances = new Set([...this.workers.values()].map((w) => w.instance).filter(Boolean));
    const sorted = [...this.workers.values()].sort((a, b) => a.worker_id.localeCompare(b.worker_id));
    const rows = sorted.map((w) => {
      const tr = el("tr");
      const name = el("td");
      const where = instances.size > 1 && w.instance ? ` · relay …${w.instance.slice(-6).toLowerCase()}` : "";
      name.append(el("strong", "mono", w.worker_id), el("div", "sub", `key ${w.key_id}${where}`));
      const state = el("td");
      const status = w.draining ? "draining" : w.status ?? "unknown";
      state.append(badge(status, STATUS_TONE[status] ?? "muted"));
      if (w.detail) state.append(el("div", "sub", w.detail));
      const load = el("td");
      const meter = el("div", "meter");
      const fill = el("span", "meter__fill");
      const ratio = w.capacity ? Math.min(1, w.inflight / w.capacity) : 0;
      fill.style.width = `${Math.round(ratio * 100)}%`;
      meter.append(fill);
      load.append(el("span", "mono", `${w.inflight} / ${w.capacity}`), meter);
      const breaker = el("td");
      breaker.append(breakerBadge(w.breaker));
      if (w.breaker && w.breaker !== "closed") breaker.append(el("div", "sub", BREAKER_TEXT[w.breaker] ?? ""));
      tr.append(name, state, load, breaker, lastErrorCell(w.last_error));
      return tr;
    });
    $("worker-rows").replaceChildren(...rows);
    $("workers-empty").hidden = rows.length > 0;
    $("workers-note").textContent = `${rows.length} connected · ${this.queued} turns waiting`;
    this.renderOverviewWorkers(sorted);
    this.renderHealth();
  }

  /** The overview's workers: status, breaker and last error of each, open breakers first. */
  renderOverviewWorkers(sorted) {
    const rank = { open: 0, half_open: 1 };
    const items = [...sorted].sort((a, b) => (rank[a.breaker] ?? 2) - (rank[b.breaker] ?? 2)).map((w) => {
      const li = el("li", "worker-item");
      li.dataset.worker = w.worker_id;
      const head = el("div", "worker-item__head");
      const status = w.draining ? "draining" : w.status ?? "unknown";
      head.append(el("strong", "mono worker-item__name", w.worker_id), badge(status, STATUS_TONE[status] ?? "muted"));
      const facts = el("dl", "worker-item__facts");
      const breaker = el("dd");
      breaker.append(breakerBadge(w.breaker));
      const error = el("dd");
      if (w.last_error) {
        const code = el("span", "mono worker-item__error", w.last_error);
        code.title = CATEGORY_TEXT[w.last_error] ?? "";
        error.append(code);
      } else error.append(el("span", "muted", "none"));
      facts.append(el("dt", "", "Breaker"), breaker, el("dt", "", "Last error"), error, el("dt", "", "Load"), el("dd", "mono", `${w.inflight} / ${w.capacity}`));
      li.append(head, facts);
      return li;
    });
    $("overview-worker-list").replaceChildren(...items);
    $("overview-workers-empty").hidden = items.length > 0;
  }

  // Turns (from the store: every instance's)

  async refreshTurns() {
    try {
      this.summary = await this.api.get("/v1/admin/turns/summary", { retries: 0 });
    } catch (err) {
      if (err?.status === 401) this.failed(err);
      $("turns-note").textContent = `Turn figures unavailable: ${apiErrorText(err)}`;
      return;
    }
    this.renderTurns();
  }

  soonRefreshTurns() {
    if (this.turnsTimer) return;
    this.turnsTimer = setTimeout(() => {
      this.turnsTimer = null;
      this.refreshTurns();
    }, EVENT_REFRESH_MS);
  }

  renderTurns() {
    const summary = this.summary;
    if (!summary) return;
    // The summary is the newest count of the queue: the workers' figures say the same.
    this.queued = summary.queued;
    this.renderWorkers();
    const workers = [...this.workers.values()];
    const now = Date.now();
    $("turn-stats").replaceChildren(
      ...turnStats(summary, {
        workersOnline: workers.length,
        capacity: workers.reduce((t, w) => t + w.capacity, 0),
        now,
      }),
    );
    const card = failuresCard(summary);
    $("failures-slot").replaceChildren(card);
    $("turns-note").textContent = `Every relay instance · updated ${new Date(now).toLocaleTimeString()}`;
  }

  // Overview

  async refreshOverview() {
    const [health, ready, metrics] = await Promise.allSettled([
      fetch("/health", { cache: "no-store" }).then((r) => r.json()),
      fetch("/health/ready", { cache: "no-store" }).then((r) => r.json()),
      this.api.get("/metrics"),
      this.refreshTurns(),
    ]);
    this.health = { health, ready };
    this.renderHealth();
    if (metrics.status !== "fulfilled") {
      $("stats").replaceChildren();
      $("metrics-note").textContent = `Metrics unavailable: ${apiErrorText(metrics.reason)}`;
      return;
    }
    const f = keyFigures(parseMetrics(String(metrics.value)));
    const stats = [
      ["Live connections", f.connections, `${f.wsConnections} WebSocket · ${f.sseConnections} SSE`],
      ["Published via API", f.published, "events pushed with /v1/publish"],
      ["Events delivered", f.delivered, "to subscribers"],
      ["HTTP requests", f.httpRequests, `${number.format(f.http5xx)} server errors`],
      ["Rate-limited", f.rateLimited, "requests refused"],
      ["Slow clients", f.slowClients, "disconnected for falling behind"],
      ["Resumes", f.replays, `${number.format(f.missed)} could not replay (events.missed)`],
      ["Queued frames", f.queuedFrames, "waiting for slow sockets now"],
    ].map(([label, value, sub]) => {
      const card = el("div", "stat");
      card.append(el("span", "stat__label", String(label)), el("strong", "stat__value", number.format(Number(value))), el("span", "stat__sub", String(sub)));
      return card;
    });
    $("stats").replaceChildren(...stats);
    $("metrics-note").textContent = `From this instance's /metrics · updated ${new Date().toLocaleTimeString()}`;
  }

  /** Liveness and readiness as last fetched; the workers as they are now (live events). */
  renderHealth() {
    if (!this.health) return;
    const { health, ready } = this.health;
    const row = [];
    const live = health.status === "fulfilled" && health.value.status === "ok";
    row.push(this.healthCard("Liveness", live ? "ok" : "down", live ? "The relay answers." : "No answer from /health."));
    if (ready.status === "fulfilled") {
      const checks = ready.value.checks ?? {};
      const ok = ready.value.status === "ready";
      const detail = Object.entries(checks).map(([k, v]) => `${k}: ${v}`).join(" · ");
      row.push(this.healthCard("Readiness", ok ? "ready" : "not ready", detail));
    } else {
      row.push(this.healthCard("Readiness", "unknown", "No answer from /health/ready."));
    }
    const workers = [...this.workers.values()];
    const used = workers.reduce((t, w) => t + w.inflight, 0);
    const capacity = workers.reduce((t, w) => t + w.capacity, 0);
    row.push(this.healthCard("Workers", workers.length ? `${workers.length} online` : "none", `${used} of ${capacity} slots busy · ${this.queued} queued`));
    $("health-row").replaceChildren(...row);
  }

  healthCard(title, value, detail) {
    const tone = ["ok", "ready"].includes(value) || value.endsWith("online") ? "ok" : value === "unknown" || value === "none" ? "warn" : "bad";
    const card = el("div", `health health--${tone}`);
    const head = el("div", "health__head");
    head.append(el("span", "health__dot"), el("span", "health__title", title));
    card.append(head, el("strong", "health__value", value), el("span", "health__detail", detail));
    return card;
  }
}

function breakerBadge(state) {
  const node = badge(state ? state.replace("_", " ") : "—", BREAKER_TONE[state] ?? "muted");
  node.title = BREAKER_TEXT[state] ?? "The worker did not report a breaker.";
  return node;
}

function lastErrorCell(category) {
  const cell = el("td");
  if (!category) {
    cell.append(el("span", "muted", "none"));
    return cell;
  }
  const code = badge(category, "bad");
  code.classList.add("mono");
  cell.append(code);
  if (CATEGORY_TEXT[category]) cell.append(el("div", "sub", CATEGORY_TEXT[category]));
  return cell;
}

const app = new AdminApp();
globalThis.relaylineAdmin = app; // for the console and the browser tests
app.start();
