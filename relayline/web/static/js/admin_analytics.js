// Admin console, the "Analytics" tab: the UTC days as the relay computed them (GET
// /v1/admin/analytics), for all tenants added up (with the busiest of them) or for one tenant.
// This module holds the choices (tenant, range) and the fetching; analytics_view.js draws.

import { el } from "./dom.js";
import { analyticsPath, lastDays, RANGES } from "./analytics_report.js";
import { AnalyticsView } from "./analytics_view.js";

/** An element of the page by id (inputs, buttons, sections: the caller knows which). */
const $ = (/** @type {string} */ id) => /** @type {any} */ (document.getElementById(id));
const DEFAULT_DAYS = 30;
/** The tenant choice that means every tenant, added up. */
const ALL = "";

export class AnalyticsPanel {
  constructor({ api, onError }) {
    this.api = api;
    this.onError = onError;
    this.tenantId = ALL;
    this.tenants = [];
    this.days = DEFAULT_DAYS;
    this.loading = null;
    this.loaded = null; // the query the view shows
    this.view = new AnalyticsView({
      root: $("analytics-body"),
      prefix: "analytics",
      notComputedHint: "The relay computes each day at RELAYLINE_ANALYTICS_AT (UTC); relayline aggregate --from D --to D computes past days.",
    });
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
    this.renderTenantChoices();
  }

  /** The tenant choices (the tenants tab's list, whenever it changes): "All tenants" first,
   * then each by name. */
  setTenants(tenants) {
    this.tenants = [...tenants].sort((a, b) => a.name.localeCompare(b.name) || a.id.localeCompare(b.id));
    this.renderTenantChoices();
  }

  renderTenantChoices() {
    const all = el("option", "", "All tenants");
    all.value = ALL;
    const options = this.tenants.map((t) => {
      const option = el("option", "", t.disabled ? `${t.name} (disabled)` : t.name);
      option.value = t.id;
      return option;
    });
    if (this.tenantId !== ALL && !this.tenants.some((t) => t.id === this.tenantId)) {
      const kept = el("option", "", this.tenantId);
      kept.value = this.tenantId;
      options.push(kept);
    }
    const select = $("analytics-tenant");
    select.replaceChildren(all, ...options);
    select.value = this.tenantId;
  }

  /** The tab was opened. */
  shown() {
    this.view.shown();
    if (!this.loaded || this.loaded.tenantId !== this.tenantId || this.loaded.days !== this.days) this.load();
  }

  hidden() {
    this.view.hidden();
  }

  async load() {
    const query = { tenantId: this.tenantId, days: this.days };
    const range = lastDays(this.days);
    const request = this.api.get(analyticsPath({ tenantId: this.tenantId, ...range }));
    this.loading = request;
    this.view.setBusy(true);
    let body;
    try {
      body = await request;
    } catch (err) {
      if (this.loading === request) {
        this.view.setBusy(false);
        this.onError(err);
      }
      return;
    }
    if (this.loading !== request) return; // a newer choice won
    this.view.setBusy(false);
    this.loaded = query;
    this.view.show(body, range);
  }
}
