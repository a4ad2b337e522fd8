// The chat's "Usage" view: the tenant's own daily figures (GET /v1/analytics) in a sheet over
// the chat, drawn by the same report as the admin console's Analytics tab. Offered only to a
// session token minted with `analytics` (the relay refuses the others anyway).

import { el } from "./dom.js";
import { apiErrorText } from "./errors.js";
import { lastDays, RANGES, usagePath } from "./analytics_report.js";
import { AnalyticsView } from "./analytics_view.js";

/** An element of the page by id (inputs, buttons, sections: the caller knows which). */
const $ = (/** @type {string} */ id) => /** @type {any} */ (document.getElementById(id));
const DEFAULT_DAYS = 30;
const USAGE_RANGES = RANGES.filter((days) => days <= 90);

/**
 * Whether a session token says it may read its tenant's figures (its `an` claim). Reading the
 * claim only decides what to offer; the relay checks the signature.
 * @param {string | null} token
 */
export function mayReadUsage(token) {
  const payload = token?.split(".")[1];
  if (!payload) return false;
  try {
    const json = atob(payload.replace(/-/g, "+").replace(/_/g, "/"));
    return JSON.parse(json)?.an === true;
  } catch {
    return false;
  }
}

export class UsagePanel {
  /**
   * @param {{ api: import("../sdk/api.js").Api, token: () => string | null }} options
   */
  constructor({ api, token }) {
    this.api = api;
    this.token = token;
    this.days = DEFAULT_DAYS;
    this.loading = null;
    this.dialog = $("usage");
    this.view = new AnalyticsView({ root: $("usage-body"), prefix: "usage" });
    const range = $("usage-range");
    range.replaceChildren(
      ...USAGE_RANGES.map((days) => {
        const option = el("option", "", `Last ${days} days`);
        option.value = String(days);
        return option;
      }),
    );
    range.value = String(this.days);
    range.addEventListener("change", () => {
      this.days = Number(range.value);
      this.load();
    });
    $("usage-open").addEventListener("click", () => this.open());
    $("usage-close").addEventListener("click", () => this.dialog.close());
    this.dialog.addEventListener("close", () => this.view.hidden());
    // A click on the backdrop (the dialog element itself, outside its sheet) closes it.
    this.dialog.addEventListener("click", (/** @type {MouseEvent} */ ev) => {
      if (ev.target === this.dialog) this.dialog.close();
    });
    this.refreshAccess();
  }

  /** Show the Usage button only to a session that may use it (call again after a new token). */
  refreshAccess() {
    $("usage-open").hidden = !mayReadUsage(this.token());
  }

  open() {
    if (!this.dialog.open) this.dialog.showModal();
    this.view.shown();
    this.load();
  }

  async load() {
    const range = lastDays(this.days);
    const request = this.api.get(usagePath(range));
    this.loading = request;
    this.view.setBusy(true);
    let body;
    try {
      body = await request;
    } catch (err) {
      if (this.loading !== request) return;
      this.view.setBusy(false);
      this.view.clear(
        err?.status === 403
          ? "This session does not include usage figures. Ask for a link that does."
          : `The figures could not be loaded: ${apiErrorText(err)}`,
      );
      return;
    }
    if (this.loading !== request) return; // a newer range won
    this.view.setBusy(false);
    this.view.show(body, range);
  }
}
