// Admin console, the "Analytics" tab: one tenant's UTC days as the relay computed them (GET
// /v1/admin/analytics) — messages, failed turns by category (stacked), time to first token
// and answer latency (p50 and p95) — with the range's totals and a table of the days. The
// charts are uPlot's, from the vendor bundle; without the bundle the totals and the table
// still show.

import { el } from "./dom.js";
import { analyticsPath, categoryColor, chartSeries, dayLabel, lastDays, RANGES, totals } from "./analytics_report.js";
import { CATEGORY_TEXT, formatDuration } from "./turn_report.js";

/** An element of the page by id (inputs, buttons, sections: the caller knows which). */
const $ = (/** @type {string} */ id) => /** @type {any} */ (document.getElementById(id));
const number = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const compact = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 });
const percent = new Intl.NumberFormat(undefined, { style: "percent", maximumFractionDigits: 1 });
const CHART_HEIGHT = 190;
const DAY_S = 86_400;
const DEFAULT_DAYS = 30;

let charting = null;

/** uPlot from the vendor bundle (null when the bundle is missing). */
async function loadCharting(url = new URL("../vendor/vendor.js", import.meta.url).href) {
  if (charting) return charting;
  try {
    charting = (await import(url)).uPlot ?? null;
  } catch (err) {
    console.warn("relayline: charts disabled, vendor bundle not loaded", err);
  }
  return charting;
}

function themeColor(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";
}

function stat(label, value, sub, tone = null) {
  const card = el("div", tone ? `stat stat--${tone}` : "stat");
  card.append(el("span", "stat__label", label), el("strong", "stat__value", value), el("span", "stat__sub", sub));
  return card;
}

const ms = (/** @type {number | null} */ v) => (v == null ? "—" : formatDuration(v));

export class AnalyticsPanel {
  constructor({ api, onError }) {
    this.api = api;
    this.onError = onError;
    this.tenantId = "";
    this.days = DEFAULT_DAYS;
    this.body = null;
    this.range = null;
    this.loading = null;
    this.visible = false;
    /** @type {{ plot: any, node: HTMLElement }[]} */
    this.charts = [];
    const range = $("analytics-range");
    range.replaceChildren(
      ...RANGES.map((days) => {
        const option = el("option", "", `Last ${days} days`);
        option.value = String(days);
        return option;
      }),
    );
    range.value = String(this.days);
    $("analytics-tenant").addEventListener("change", () => {
      this.tenantId = $("analytics-tenant").value;
      this.load();
    });
    range.addEventListener("change", () => {
      this.days = Number(range.value);
      this.load();
    });
    $("analytics-refresh").addEventListener("click", () => this.load());
    new ResizeObserver(() => this.fit()).observe($("analytics-charts"));
    matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => this.drawCharts());
  }

  /** The tenant choices (the tenants tab's list, whenever it changes); the first by name is
   * shown until another is chosen. */
  setTenants(tenants) {
    const sorted = [...tenants].sort((a, b) => a.name.localeCompare(b.name) || a.id.localeCompare(b.id));
    const options = sorted.map((t) => {
      const option = el("option", "", t.disabled ? `${t.name} (disabled)` : t.name);
      option.value = t.id;
      return option;
    });
    const select = $("analytics-tenant");
    select.replaceChildren(...options);
    const known = sorted.some((t) => t.id === this.tenantId);
    if (!known && this.tenantId) {
      const kept = el("option", "", this.tenantId);
      kept.value = this.tenantId;
      select.append(kept);
    }
    const first = !this.tenantId && sorted.length > 0;
    if (first) this.tenantId = sorted[0].id;
    select.value = this.tenantId;
    select.disabled = sorted.length === 0 && !this.tenantId;
    if (this.visible && (first || !this.body)) this.load();
    else if (this.visible && !this.tenantId) this.renderNoTenant();
  }

  /** The tab was opened. */
  shown() {
    this.visible = true;
    if (!this.tenantId) this.renderNoTenant();
    else if (!this.body || this.body.tenant_id !== this.tenantId) this.load();
    else this.drawCharts(); // drawn while hidden they would have no width
  }

  hidden() {
    this.visible = false;
  }

  async load() {
    if (!this.tenantId) return this.renderNoTenant();
    const range = lastDays(this.days);
    const request = this.api.get(analyticsPath({ tenantId: this.tenantId, ...range }));
    this.loading = request;
    $("analytics-body").setAttribute("aria-busy", "true");
    let body;
    try {
      body = await request;
    } catch (err) {
      if (this.loading === request) {
        $("analytics-body").removeAttribute("aria-busy");
        this.onError(err);
      }
      return;
    }
    if (this.loading !== request) return; // a newer choice won
    $("analytics-body").removeAttribute("aria-busy");
    this.body = body;
    this.range = range;
    this.render();
  }

  renderNoTenant() {
    this.body = null;
    this.destroyCharts();
    $("analytics-totals").replaceChildren();
    $("analytics-table-card").hidden = true;
    $("analytics-charts").hidden = true;
    this.note("No tenant yet: create one in the Tenants tab.");
  }

  note(text) {
    $("analytics-empty").hidden = !text;
    $("analytics-empty").textContent = text ?? "";
  }

  render() {
    const { days: rows, aggregated_through: through } = this.body;
    const sum = totals(rows);
    $("analytics-through").textContent = through
      ? `UTC days · computed through ${dayLabel(through)} ${through.slice(0, 4)}`
      : "UTC days · none computed yet";
    const failTone = sum.failureRate == null ? null : sum.failureRate > 0.1 ? "bad" : sum.failureRate > 0.02 ? "warn" : null;
    $("analytics-totals").replaceChildren(
      stat("Messages", number.format(sum.messages), `in ${sum.days} computed day${sum.days === 1 ? "" : "s"}`),
      stat("Answered", number.format(sum.answered), `${number.format(sum.cancelled)} cancelled`),
      stat("Failed", number.format(sum.failed), sum.failureRate == null ? "no turn ended" : `${percent.format(sum.failureRate)} of the turns that ended`, failTone),
      stat(
        "Tokens in / out",
        `${compact.format(sum.tokensIn)} / ${compact.format(sum.tokensOut)}`,
        sum.estimatedShare == null ? "no counts" : `${percent.format(sum.estimatedShare)} of the answers estimated`,
      ),
    );
    const empty = rows.length === 0;
    this.note(
      empty
        ? "No day of this range has been computed yet. The relay computes each day at RELAYLINE_ANALYTICS_AT (UTC); relayline aggregate --from D --to D computes past days."
        : null,
    );
    $("analytics-charts").hidden = empty;
    $("analytics-table-card").hidden = empty;
    this.renderTable(rows);
    this.drawCharts();
  }

  renderTable(rows) {
    const body = [...rows].reverse().map((r) => {
      const tr = el("tr");
      tr.dataset.day = r.day;
      const failed = el("td", "num");
      failed.append(el("span", r.failed ? "analytics-failed" : "", number.format(r.failed)));
      const categories = Object.entries(r.failed_by_category ?? {});
      if (categories.length) failed.title = categories.map(([c, n]) => `${c}: ${n}`).join("\n");
      tr.append(
        el("td", "mono", r.day),
        el("td", "num", number.format(r.messages)),
        el("td", "num", number.format(r.answered)),
        el("td", "num", number.format(r.cancelled)),
        failed,
        el("td", "num", `${ms(r.first_token_p50_ms)} / ${ms(r.first_token_p95_ms)}`),
        el("td", "num", `${ms(r.latency_p50_ms)} / ${ms(r.latency_p95_ms)}`),
        el("td", "num", `${compact.format(r.tokens_in)} / ${compact.format(r.tokens_out)}`),
      );
      return tr;
    });
    $("analytics-rows").replaceChildren(...body);
  }

  destroyCharts() {
    for (const chart of this.charts) chart.plot.destroy();
    this.charts = [];
  }

  fit() {
    for (const chart of this.charts) {
      const width = chart.node.clientWidth;
      if (width > 0 && width !== chart.plot.width) chart.plot.setSize({ width, height: CHART_HEIGHT });
    }
  }

  async drawCharts() {
    if (!this.visible || !this.body || this.body.days.length === 0) return;
    const uPlot = await loadCharting();
    this.destroyCharts();
    const cards = ["messages", "failures", "first-token", "latency"];
    if (!uPlot) {
      for (const name of cards) $(`chart-${name}`).querySelector(".chart__plot").replaceChildren(el("p", "empty-note", "Charts need the web vendor bundle (scripts/build_web.sh)."));
      return;
    }
    const s = chartSeries(this.body.days, this.range.from, this.range.to);
    const theme = {
      text: themeColor("--muted"),
      grid: themeColor("--border"),
      accent: themeColor("--accent"),
      accentSoft: themeColor("--accent-soft"),
      warn: themeColor("--warn"),
    };
    const bars = uPlot.paths.bars({ size: [0.72, 26], gap: 1 });
    const base = (/** @type {string} */ name, /** @type {(ms: number) => string} */ yValue, /** @type {(i: number) => string} */ readout) => {
      const node = $(`chart-${name}`).querySelector(".chart__plot");
      const readoutNode = $(`chart-${name}`).querySelector(".chart__readout");
      const idle = readoutNode.dataset.idle;
      readoutNode.textContent = idle;
      return {
        node,
        options: {
          width: Math.max(240, node.clientWidth),
          height: CHART_HEIGHT,
          tzDate: (/** @type {number} */ ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
          legend: { show: false },
          padding: [10, 10, 0, 0],
          cursor: { drag: { x: false, y: false }, points: { size: 7 } },
          scales: {
            x: { time: true, range: () => [s.x[0] - DAY_S / 2, s.x[s.x.length - 1] + DAY_S / 2] },
            y: { range: (_u, _min, max) => [0, Math.max(1, max) * 1.08] },
          },
          axes: [
            {
              stroke: theme.text,
              grid: { show: false },
              ticks: { stroke: theme.grid, size: 4 },
              size: 30,
              space: 46,
              incrs: [DAY_S, 2 * DAY_S, 7 * DAY_S, 14 * DAY_S, 28 * DAY_S, 56 * DAY_S, 91 * DAY_S],
              values: (_u, splits) => splits.map((t) => dayLabel(new Date(t * 1000).toISOString().slice(0, 10))),
            },
            {
              stroke: theme.text,
              grid: { stroke: theme.grid, width: 1 },
              ticks: { show: false },
              size: 58,
              values: (_u, splits) => splits.map(yValue),
            },
          ],
          hooks: {
            setCursor: [
              (/** @type {any} */ u) => {
                const i = u.cursor.idx;
                readoutNode.textContent = i == null ? idle : `${dayLabel(s.days[i])} · ${readout(i)}`;
              },
            ],
          },
        },
      };
    };
    const count = (/** @type {number} */ v) => (Number.isInteger(v) ? compact.format(v) : "");
    const notComputed = "not computed";

    const messages = base("messages", count, (i) => (s.messages[i] == null ? notComputed : `${number.format(s.messages[i])} messages · ${number.format(s.answered[i])} answered`));
    messages.options.series = [{}, { label: "Messages", stroke: theme.accent, fill: theme.accent, paths: bars, points: { show: false } }];
    this.add(uPlot, messages, [s.x, s.messages]);
    this.legend("messages", [["messages", theme.accent, "User messages posted (each asks for one answer)."]]);

    const failures = base("failures", count, (i) => {
      if (s.failed[i] == null) return notComputed;
      if (!s.failed[i]) return "no failed turn";
      const parts = s.categories.map((c, k) => [c, s.counts[k][i]]).filter(([, n]) => n > 0).map(([c, n]) => `${c} ${n}`);
      return `${s.failed[i]} failed: ${parts.join(" · ")}`;
    });
    // Drawn from the tallest stack down, so each category shows as its own band.
    const order = s.categories.map((_, k) => k).reverse();
    failures.options.series = [
      {},
      ...order.map((k) => {
        const color = categoryColor(s.categories[k], k);
        return { label: s.categories[k], stroke: color, fill: color, paths: bars, points: { show: false } };
      }),
    ];
    this.add(uPlot, failures, [s.x, ...order.map((k) => s.stacks[k])]);
    this.legend("failures", s.categories.length ? s.categories.map((c, k) => [c, categoryColor(c, k), CATEGORY_TEXT[c] ?? ""]) : [["no failed turn in this range", theme.grid, ""]]);

    const percentiles = (/** @type {string} */ name, p50, p95) => {
      const chart = base(name, (v) => (v === 0 ? "0" : formatDuration(v)), (i) => (p50[i] == null ? (s.messages[i] == null ? notComputed : "no completed answer") : `p50 ${ms(p50[i])} · p95 ${ms(p95[i])}`));
      chart.options.series = [
        {},
        { label: "p50", stroke: theme.accent, width: 2, points: { show: true, size: 4, fill: theme.accent } },
        { label: "p95", stroke: theme.warn, width: 2, dash: [6, 4], points: { show: true, size: 4, fill: theme.warn } },
      ];
      this.add(uPlot, chart, [s.x, p50, p95]);
      this.legend(name, [
        ["p50 (median)", theme.accent, "Half of the completed answers were at least this fast."],
        ["p95", theme.warn, "95% of the completed answers were at least this fast."],
      ]);
    };
    percentiles("first-token", s.firstTokenP50, s.firstTokenP95);
    percentiles("latency", s.latencyP50, s.latencyP95);
  }

  add(uPlot, { node, options }, data) {
    node.replaceChildren();
    this.charts.push({ plot: new uPlot(options, data, node), node });
  }

  legend(name, entries) {
    const list = $(`chart-${name}`).querySelector(".chart__legend");
    list.replaceChildren(
      ...entries.map(([label, color, title]) => {
        const item = el("li", "chart__key");
        const swatch = el("span", "chart__swatch");
        swatch.style.background = color;
        item.append(swatch, el("span", "mono", label));
        if (title) item.title = title;
        item.dataset.key = label;
        return item;
      }),
    );
  }
}
