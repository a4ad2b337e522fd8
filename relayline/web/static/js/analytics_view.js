// One report of daily figures — totals, four uPlot charts (messages, failed turns by category
// stacked, time to first token and latency p50/p95), a table of the days and, for all tenants,
// the busiest tenants — drawn into a container from an answer of GET /v1/admin/analytics or
// GET /v1/analytics. The admin console's Analytics tab and the chat's Usage view both use it;
// the figures themselves come from analytics_report.js. Without the vendor bundle the totals
// and the tables still show.

import { el } from "./dom.js";
import { categoryColor, chartSeries, dayLabel, totals } from "./analytics_report.js";
import { CATEGORY_TEXT, formatDuration } from "./turn_report.js";

const number = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const compact = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 });
const percent = new Intl.NumberFormat(undefined, { style: "percent", maximumFractionDigits: 1 });
const CHART_HEIGHT = 190;
const DAY_S = 86_400;

/** Each chart: its name, title, what it shows when idle, and its accessible label. */
const CHARTS = [
  ["messages", "Messages per day", "User messages posted each UTC day. Point at a day for its figures.", "Messages per day", "Series"],
  ["failures", "Failed turns by category", "Turns that failed each day, stacked by why.", "Failed turns per day by category", "Failure categories"],
  ["first-token", "Time to first token", "From a turn's start to its answer's first text, over the day's completed answers.", "Time to first token per day, p50 and p95", "Percentiles"],
  ["latency", "Answer latency", "From a turn's start to its whole answer, over the day's completed answers.", "Answer latency per day, p50 and p95", "Percentiles"],
];
const PERCENTILE_CHARTS = ["first-token", "latency"];
const DAY_COLUMNS = ["Day (UTC)", "Messages", "Answered", "Cancelled", "Failed", "First token p50 / p95", "Latency p50 / p95", "Tokens in / out"];
const PERCENTILE_COLUMNS = [5, 6];
const TENANT_COLUMNS = ["Tenant", "Messages", "Answered", "Cancelled", "Failed", "Failed share", "Tokens in / out"];

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

function table(label, columns, bodyId) {
  const t = el("table", "table table--compact");
  t.setAttribute("aria-label", label);
  const head = el("tr");
  columns.forEach((c, i) => {
    const th = el("th", i ? "num" : "", c);
    th.scope = "col";
    head.append(th);
  });
  const thead = el("thead");
  thead.append(head);
  const tbody = el("tbody");
  tbody.id = bodyId;
  t.append(thead, tbody);
  return t;
}

const ms = (/** @type {number | null} */ v) => (v == null ? "—" : formatDuration(v));

export class AnalyticsView {
  /**
   * @param {{ root: HTMLElement, prefix: string, notComputedHint?: string }} options the
   *   container (emptied), and the prefix of the ids of its parts (`${prefix}-totals`,
   *   `${prefix}-chart-messages`, `${prefix}-rows`…)
   */
  constructor({ root, prefix, notComputedHint = "" }) {
    this.root = root;
    this.prefix = prefix;
    this.notComputedHint = notComputedHint;
    this.body = null;
    this.range = null;
    this.visible = false;
    /** @type {{ plot: any, node: HTMLElement }[]} */
    this.charts = [];
    /** Counts the calls of drawCharts: only the newest one draws. */
    this.draws = 0;
    this.build();
    new ResizeObserver(() => this.fit()).observe(this.part("charts"));
    matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => this.drawCharts());
  }

  /** A part of the report by name (`totals`, `charts`, `rows`, `chart-latency`…). */
  part(name) {
    return /** @type {any} */ (this.root.querySelector(`#${this.prefix}-${name}`));
  }

  build() {
    const p = this.prefix;
    const id = (/** @type {HTMLElement} */ node, /** @type {string} */ name) => ((node.id = `${p}-${name}`), node);
    const head = el("div", "block-head block-head--first");
    const title = id(el("h2", "block-head__title", "Totals"), "totals-title");
    head.append(title, id(el("span", "hint"), "through"));
    const stats = id(el("div", "stats"), "totals");
    stats.setAttribute("role", "group");
    stats.setAttribute("aria-labelledby", title.id);
    const empty = id(el("p", "empty-note card analytics-empty"), "empty");
    empty.hidden = true;
    const grid = id(el("div", "chart-grid"), "charts");
    grid.hidden = true;
    for (const [name, heading, idle, label, legend] of CHARTS) {
      const card = id(el("section", "card panel-card chart"), `chart-${name}`);
      const cardHead = el("div", "panel-card__head");
      const h = id(el("h2", "panel-card__title", heading), `chart-${name}-title`);
      cardHead.append(h);
      card.setAttribute("aria-labelledby", h.id);
      const readout = el("p", "chart__readout");
      readout.dataset.idle = idle;
      readout.setAttribute("aria-live", "polite");
      const plot = el("div", "chart__plot");
      plot.setAttribute("role", "img");
      plot.setAttribute("aria-label", `${label} (the table below has the figures)`);
      const keys = el("ul", "chart__legend");
      keys.setAttribute("aria-label", legend);
      card.append(cardHead, readout, plot, keys);
      grid.append(card);
    }
    const tenantsCard = id(el("div", "card card--list analytics-table analytics-table--tenants"), "tenants-card");
    tenantsCard.hidden = true;
    const tenantsHead = el("div", "analytics-table__head");
    tenantsHead.append(el("h2", "panel-card__title", "Busiest tenants"), id(el("span", "hint"), "tenants-note"));
    tenantsCard.append(tenantsHead, table("Tenants of the range", TENANT_COLUMNS, `${p}-tenant-rows`));
    const daysCard = id(el("div", "card card--list analytics-table"), "table-card");
    daysCard.hidden = true;
    daysCard.append(table("Daily figures", DAY_COLUMNS, `${p}-rows`));
    this.root.replaceChildren(head, stats, empty, grid, tenantsCard, daysCard);
  }

  /** Draw an answer of the analytics API for the days `range.from`..`range.to`. */
  show(body, range) {
    this.body = body;
    this.range = range;
    this.render();
  }

  /** Nothing to show, with a note saying why. */
  clear(text) {
    this.body = null;
    this.destroyCharts();
    this.part("totals").replaceChildren();
    this.part("table-card").hidden = true;
    this.part("tenants-card").hidden = true;
    this.part("charts").hidden = true;
    this.part("through").textContent = "";
    this.note(text);
  }

  setBusy(busy) {
    if (busy) this.root.setAttribute("aria-busy", "true");
    else this.root.removeAttribute("aria-busy");
  }

  /** The report became visible (charts drawn while hidden would have no width). */
  shown() {
    this.visible = true;
    this.drawCharts();
  }

  hidden() {
    this.visible = false;
  }

  note(text) {
    this.part("empty").hidden = !text;
    this.part("empty").textContent = text ?? "";
  }

  render() {
    const { days: rows, aggregated_through: through } = this.body;
    const sum = totals(rows);
    this.part("through").textContent = through
      ? `UTC days · computed through ${dayLabel(through)} ${through.slice(0, 4)}`
      : "UTC days · none computed yet";
    const failTone = sum.failureRate == null ? null : sum.failureRate > 0.1 ? "bad" : sum.failureRate > 0.02 ? "warn" : null;
    this.part("totals").replaceChildren(
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
    this.note(empty ? `No day of this range has been computed yet.${this.notComputedHint ? ` ${this.notComputedHint}` : ""}` : null);
    this.part("charts").hidden = empty;
    this.part("table-card").hidden = empty;
    // Percentiles do not add up across tenants: for all of them, the busiest tenants instead.
    const allTenants = this.body.tenant_id == null;
    for (const name of PERCENTILE_CHARTS) this.part(`chart-${name}`).hidden = allTenants;
    this.part("tenants-card").hidden = !allTenants || empty;
    this.renderTable(rows, !allTenants);
    if (allTenants) this.renderTenants(this.body.tenants ?? [], this.body.tenants_active ?? 0);
    this.drawCharts();
  }

  /** The days, newest first; the percentile columns only for one tenant's figures. */
  renderTable(rows, percentiles) {
    const headers = this.part("table-card").querySelectorAll("th");
    for (const index of PERCENTILE_COLUMNS) headers[index].hidden = !percentiles;
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
        ...(percentiles
          ? [el("td", "num", `${ms(r.first_token_p50_ms)} / ${ms(r.first_token_p95_ms)}`), el("td", "num", `${ms(r.latency_p50_ms)} / ${ms(r.latency_p95_ms)}`)]
          : []),
        el("td", "num", `${compact.format(r.tokens_in)} / ${compact.format(r.tokens_out)}`),
      );
      return tr;
    });
    this.part("rows").replaceChildren(...body);
  }

  renderTenants(tenants, active) {
    this.part("tenants-note").textContent =
      active > tenants.length ? `the ${tenants.length} busiest of ${number.format(active)} active` : `${number.format(active)} active in this range`;
    const rows = tenants.map((t) => {
      const tr = el("tr");
      tr.dataset.tenant = t.tenant_id;
      const failed = el("td", "num");
      failed.append(el("span", t.failed ? "analytics-failed" : "", number.format(t.failed)));
      tr.append(
        el("td", "", t.name),
        el("td", "num", number.format(t.messages)),
        el("td", "num", number.format(t.answered)),
        el("td", "num", number.format(t.cancelled)),
        failed,
        el("td", "num", t.turns ? percent.format(t.failed / t.turns) : "—"),
        el("td", "num", `${compact.format(t.tokens_in)} / ${compact.format(t.tokens_out)}`),
      );
      return tr;
    });
    this.part("tenant-rows").replaceChildren(...rows);
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

  /** Charts can be drawn: the report is visible and has days. */
  drawable() {
    return this.visible && this.body != null && this.body.days.length > 0;
  }

  async drawCharts() {
    const draw = ++this.draws;
    if (!this.drawable()) return;
    const uPlot = await loadCharting();
    // While the bundle loaded, another answer may have come (another tenant, another range),
    // the tab may have been shown again or the theme switched: each of those called this again,
    // and only that newest call draws, from the report as it is now. An older one would replace
    // its charts with those of the answer it was called for (two charts for all tenants over
    // a tenant's four).
    if (draw !== this.draws || !this.drawable()) return;
    const allTenants = this.body.tenant_id == null;
    this.destroyCharts();
    const cards = CHARTS.map(([name]) => name);
    if (!uPlot) {
      for (const name of cards) this.part(`chart-${name}`).querySelector(".chart__plot").replaceChildren(el("p", "empty-note", "Charts need the web vendor bundle (scripts/build_web.sh)."));
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
      const node = this.part(`chart-${name}`).querySelector(".chart__plot");
      const readoutNode = this.part(`chart-${name}`).querySelector(".chart__readout");
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
    if (allTenants) return;
    percentiles("first-token", s.firstTokenP50, s.firstTokenP95);
    percentiles("latency", s.latencyP50, s.latencyP95);
  }

  add(uPlot, { node, options }, data) {
    node.replaceChildren();
    this.charts.push({ plot: new uPlot(options, data, node), node });
  }

  legend(name, entries) {
    const list = this.part(`chart-${name}`).querySelector(".chart__legend");
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
