// Admin console, tenants tab: tenants, their API keys (a new key is shown once, with a copy
// button), revocation with a confirming second click, and the tenant's agent settings
// (model, system prompt, tools and sampling; the relay's refusal shows beside the form).

import { addStop, AGENT_LIMITS, agentBody, encodeStop, fieldsOfDetail, GENERATION_BOUNDS } from "./agent_settings.js";
import { badge, button, closestTo, el } from "./dom.js";
import { apiErrorText } from "./errors.js";

/** An element of the page by id (inputs, buttons, sections: the caller knows which). */
const $ = (/** @type {string} */ id) => /** @type {any} */ (document.getElementById(id));
const SCOPES = ["chats", "sessions", "publish", "terminals"];
const TOOLS = ["read_file", "list_dir", "edit_file", "run_command"];
const CONFIRM_MS = 4000;
const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

function when(ms) {
  return ms ? dateFormat.format(new Date(ms)) : "—";
}

function field(labelText, control, range = null) {
  const label = el("label", "field");
  const name = el("span", "field__label", labelText);
  if (range) name.append(el("span", "field__range", range));
  label.append(name, control);
  return label;
}

function checkbox(name, value, checked) {
  const label = el("label", "check");
  const input = el("input");
  input.type = "checkbox";
  input.name = name;
  input.value = value;
  input.checked = checked;
  label.append(input, el("span", "", value));
  return label;
}

export class TenantsPanel {
  constructor({ api, toast, onChange = (_tenants) => {} }) {
    this.api = api;
    this.toast = toast;
    this.onChange = onChange;
    this.tenants = [];
    this.selected = null;
    this.newKey = null;
    $("tenant-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.create($("tenant-name").value.trim());
    });
    $("tenant-rows").addEventListener("click", (ev) => {
      const id = closestTo(ev, "[data-tenant]")?.dataset.tenant;
      if (id) this.select(id);
    });
    $("tenant-rows").addEventListener("keydown", (ev) => {
      const id = closestTo(ev, "[data-tenant]")?.dataset.tenant;
      if (id && (ev.key === "Enter" || ev.key === " ")) {
        ev.preventDefault();
        this.select(id);
      }
    });
  }

  fail(err) {
    this.toast(apiErrorText(err), "error");
  }

  async load() {
    const all = [];
    let after = null;
    for (let page = 0; page < 20; page += 1) {
      const q = after ? `?limit=200&after=${encodeURIComponent(after)}` : "?limit=200";
      const body = await this.api.get(`/v1/admin/tenants${q}`);
      all.push(...body.items);
      after = body.next_after;
      if (!after) break;
    }
    this.tenants = all.sort((a, b) => b.created_at - a.created_at);
    this.renderList();
  }

  renderList() {
    const rows = this.tenants.map((t) => {
      const tr = el("tr", t.id === this.selected ? "is-selected" : "");
      tr.dataset.tenant = t.id;
      tr.tabIndex = 0;
      tr.setAttribute("aria-selected", String(t.id === this.selected));
      const name = el("td");
      name.append(el("strong", "", t.name), el("div", "sub mono", t.id));
      const status = el("td");
      status.append(t.disabled ? badge("disabled", "bad") : badge("active", "ok"));
      tr.append(name, status, el("td", "muted", when(t.created_at)));
      return tr;
    });
    $("tenant-rows").replaceChildren(...rows);
    $("tenants-empty").hidden = rows.length > 0;
    this.onChange(this.tenants);
  }

  async create(name) {
    if (!name) return;
    try {
      const tenant = await this.api.post("/v1/admin/tenants", { name });
      $("tenant-name").value = "";
      this.tenants.unshift(tenant);
      this.toast(`Tenant “${tenant.name}” created.`, "ok");
      await this.select(tenant.id);
    } catch (err) {
      this.fail(err);
    }
  }

  async select(id) {
    this.selected = id;
    this.newKey = null;
    this.renderList();
    await this.renderDetail();
  }

  async renderDetail() {
    const tenant = this.tenants.find((t) => t.id === this.selected);
    const root = $("tenant-detail");
    if (!tenant) {
      root.replaceChildren(el("p", "empty-note", "Select a tenant to manage its keys and agent."));
      return;
    }
    let keys = [];
    let agent = null;
    try {
      [keys, agent] = await Promise.all([
        this.api.get(`/v1/admin/tenants/${tenant.id}/keys`).then((b) => b.items),
        this.api.get(`/v1/admin/tenants/${tenant.id}/agent`),
      ]);
    } catch (err) {
      this.fail(err);
    }
    if (tenant.id !== this.selected) return;
    const head = el("div", "detail__head");
    const titles = el("div");
    titles.append(el("h2", "", tenant.name), el("div", "sub mono", tenant.id));
    const toggle = button(tenant.disabled ? "Enable" : "Disable", null, tenant.disabled ? "btn btn--small" : "btn btn--small btn--danger");
    toggle.addEventListener("click", () => this.setDisabled(tenant, !tenant.disabled));
    head.append(titles, toggle);
    root.replaceChildren(head, this.keysBlock(tenant, keys), this.agentBlock(tenant, agent));
  }

  keysBlock(tenant, keys) {
    const block = el("section", "detail__block");
    block.setAttribute("aria-label", "API keys");
    block.append(el("h3", "", "API keys"));
    if (this.newKey) {
      // Shown in this rendering only: any later action redraws the panel without it.
      block.append(this.secretBox(this.newKey));
      this.newKey = null;
    }
    const table = el("table", "table table--compact");
    const head = el("thead");
    const hr = el("tr");
    for (const name of ["Key", "Scopes", "Last used", ""]) hr.append(Object.assign(el("th", "", name), { scope: "col" }));
    head.append(hr);
    const body = el("tbody");
    for (const key of keys) {
      const tr = el("tr", key.revoked_at ? "is-revoked" : "");
      const id = el("td");
      id.append(el("span", "mono", `${key.prefix}…`), el("div", "sub", key.name || "unnamed"));
      const scopes = el("td");
      for (const s of key.scopes) scopes.append(badge(s, "muted"));
      const actions = el("td", "actions");
      if (key.revoked_at) actions.append(badge("revoked", "bad"));
      else {
        const revoke = button("Revoke", null, "btn btn--small btn--danger");
        revoke.setAttribute("aria-label", `Revoke key ${key.prefix}`);
        revoke.addEventListener("click", () => this.revoke(key, revoke));
        actions.append(revoke);
      }
      tr.append(id, scopes, el("td", "muted", when(key.last_used_at)), actions);
      body.append(tr);
    }
    table.append(head, body);
    if (keys.length) block.append(table);
    else block.append(el("p", "empty-note", "No keys yet."));
    block.append(this.keyForm(tenant));
    return block;
  }

  keyForm(tenant) {
    const form = el("form", "key-form");
    const name = el("input");
    name.placeholder = "Key name (optional)";
    name.maxLength = 200;
    const scopes = el("fieldset", "checks");
    scopes.append(el("legend", "sr-only", "Scopes"));
    for (const s of SCOPES) scopes.append(checkbox("scope", s, true));
    const submit = el("button", "btn btn--primary btn--small", "Create key");
    submit.type = "submit";
    form.append(field("Name", name), scopes, submit);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const chosen = [...scopes.querySelectorAll("input:checked")].map((i) => /** @type {HTMLInputElement} */ (i).value);
      if (!chosen.length) {
        this.toast("Choose at least one scope.", "error");
        return;
      }
      try {
        const created = await this.api.post(`/v1/admin/tenants/${tenant.id}/keys`, {
          scopes: chosen,
          name: name.value.trim() || null,
        });
        this.newKey = created;
        await this.renderDetail();
        /** @type {HTMLElement | null} */ (document.querySelector(".secret__copy"))?.focus();
      } catch (err) {
        this.fail(err);
      }
    });
    return form;
  }

  secretBox(created) {
    const box = el("div", "secret");
    box.setAttribute("role", "status");
    box.append(el("strong", "", "New key. Copy it now: it will not be shown again."));
    const row = el("div", "secret__row");
    const value = el("code", "secret__value", created.key);
    value.id = "new-key-value";
    const copy = button("Copy", null, "btn btn--small secret__copy");
    copy.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(created.key);
        copy.textContent = "Copied";
      } catch {
        const range = document.createRange();
        range.selectNodeContents(value);
        getSelection().removeAllRanges();
        getSelection().addRange(range);
        copy.textContent = "Press Ctrl+C";
      }
    });
    const done = button("Done", null, "btn btn--small btn--ghost");
    done.addEventListener("click", () => box.remove());
    row.append(value, copy, done);
    box.append(row);
    return box;
  }

  async revoke(key, btn) {
    // Two clicks, no modal dialog: the second confirms within a few seconds.
    if (btn.dataset.armed !== "1") {
      btn.dataset.armed = "1";
      btn.textContent = "Confirm revoke";
      setTimeout(() => {
        if (btn.isConnected) {
          btn.dataset.armed = "";
          btn.textContent = "Revoke";
        }
      }, CONFIRM_MS);
      return;
    }
    try {
      await this.api.delete(`/v1/admin/keys/${key.id}`);
      this.toast(`Key ${key.prefix}… revoked.`, "ok");
      await this.renderDetail();
    } catch (err) {
      this.fail(err);
    }
  }

  async setDisabled(tenant, disabled) {
    try {
      const updated = await this.api.post(`/v1/admin/tenants/${tenant.id}/${disabled ? "disable" : "enable"}`, {}, { idempotent: true });
      Object.assign(tenant, updated);
      this.renderList();
      await this.renderDetail();
    } catch (err) {
      this.fail(err);
    }
  }

  agentBlock(tenant, agent) {
    const block = el("section", "detail__block");
    block.setAttribute("aria-label", "Agent settings");
    block.append(el("h3", "", "Agent"));
    if (!agent) {
      block.append(el("p", "empty-note", "Agent settings could not be loaded."));
      return block;
    }
    const form = el("form", "agent-form");
    form.setAttribute("aria-label", "Agent settings");
    const model = el("input");
    model.name = "model";
    model.value = agent.model ?? "";
    model.placeholder = "default model of the worker";
    model.maxLength = AGENT_LIMITS.modelChars;
    model.spellcheck = false;
    const prompt = el("textarea");
    prompt.name = "system_prompt";
    prompt.rows = 3;
    prompt.value = agent.system_prompt ?? "";
    prompt.placeholder = "System prompt (optional)";
    prompt.maxLength = AGENT_LIMITS.promptChars;
    const tools = el("fieldset", "checks");
    tools.append(el("legend", "field__label", "Tools"));
    for (const t of TOOLS) tools.append(checkbox("tool", t, agent.tools.includes(t)));

    const sampling = el("div", "sampling");
    sampling.setAttribute("role", "group");
    sampling.setAttribute("aria-labelledby", "agent-sampling-title");
    const samplingHead = el("div", "sampling__head");
    const samplingTitle = el("h4", "sampling__title", "Sampling");
    samplingTitle.id = "agent-sampling-title";
    samplingHead.append(samplingTitle, el("span", "sampling__hint", "Empty fields use the worker's default."));
    sampling.append(samplingHead);
    const temperature = numberInput("temperature", agent.temperature, GENERATION_BOUNDS.temperature);
    const topP = numberInput("top_p", agent.top_p, GENERATION_BOUNDS.top_p);
    const maxTokens = numberInput("max_tokens", agent.max_tokens, GENERATION_BOUNDS.max_tokens);
    const grid = el("div", "sampling__grid");
    grid.append(
      field("Temperature", temperature, "0 – 2"),
      field("Top P", topP, "above 0, up to 1"),
      field("Max tokens", maxTokens, `1 – ${GENERATION_BOUNDS.max_tokens.max.toLocaleString("en")}`),
    );
    const stops = new StopSequences(agent.stop ?? []);
    sampling.append(grid, stops.el);

    // The OpenAI-compatible gateway's completions: kept as chats (listed, with their texts) or
    // only as turns and metrics.
    const completions = el("fieldset", "checks");
    completions.append(el("legend", "field__label", "OpenAI-compatible API"));
    const keep = checkbox("store_completions", "keep completions as chats", Boolean(agent.store_completions));
    completions.append(keep);

    const save = el("button", "btn btn--primary btn--small", "Save agent");
    save.type = "submit";
    const error = el("p", "form-error agent-form__error");
    error.id = "agent-error";
    error.setAttribute("role", "alert");
    error.hidden = true;
    const foot = el("div", "agent-form__foot");
    foot.append(save, error);
    form.append(field("Model", model), field("System prompt", prompt), tools, sampling, completions, foot);

    const controls = { model, system_prompt: prompt, temperature, top_p: topP, max_tokens: maxTokens, stop: stops.input };
    const showError = (text, names = []) => {
      error.textContent = text;
      error.hidden = !text;
      for (const [name, control] of Object.entries(controls)) {
        if (names.includes(name)) control.setAttribute("aria-invalid", "true");
        else control.removeAttribute("aria-invalid");
        if (name === "stop") stops.el.classList.toggle("is-invalid", names.includes(name));
      }
      if (names.length) controls[names[0]]?.focus();
    };
    form.addEventListener("input", (ev) => {
      // What was changed is no longer the value the relay refused.
      const target = /** @type {HTMLElement} */ (ev.target);
      target.removeAttribute("aria-invalid");
      if (target === stops.input) stops.el.classList.remove("is-invalid");
    });
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      if (!stops.commit()) return;
      const body = agentBody({
        model: model.value,
        systemPrompt: prompt.value,
        tools: [...tools.querySelectorAll("input:checked")].map((i) => /** @type {HTMLInputElement} */ (i).value),
        temperature: temperature.value,
        topP: topP.value,
        maxTokens: maxTokens.value,
        stop: stops.values,
        storeCompletions: /** @type {HTMLInputElement} */ (keep.querySelector("input")).checked,
      });
      save.disabled = true;
      save.textContent = "Saving…";
      try {
        await this.api.put(`/v1/admin/tenants/${tenant.id}/agent`, body);
        showError("");
        this.toast("Agent settings saved.", "ok");
      } catch (err) {
        // The form keeps what was typed; the relay's reason shows beside the button.
        if (err?.code === "validation_error") showError(`Not saved. ${err.message}`, fieldsOfDetail(err.message));
        else showError(`Not saved. ${apiErrorText(err)}`);
      } finally {
        save.disabled = false;
        save.textContent = "Save agent";
      }
    });
    block.append(form);
    return block;
  }
}

function numberInput(name, value, { min, max, step }) {
  const input = el("input");
  input.type = "number";
  input.name = name;
  input.min = String(min);
  input.max = String(max);
  input.step = String(step);
  input.inputMode = step === 1 ? "numeric" : "decimal";
  input.placeholder = "Default";
  input.value = value == null ? "" : String(value);
  return input;
}

/**
 * Stop sequences as chips: type one and press Enter (`\n` for a line break); Backspace in the
 * empty field takes the last one back for editing. At most GENERATION_BOUNDS.stop of them.
 */
class StopSequences {
  constructor(values) {
    this.values = [...values];
    const { maxItems, maxChars } = GENERATION_BOUNDS.stop;
    this.el = el("div", "field stops-field");
    const label = el("label", "field__label", "Stop sequences");
    label.htmlFor = "agent-stop";
    label.append(el("span", "field__range", `up to ${maxItems}, each 1 – ${maxChars} characters`));
    this.box = el("div", "stops");
    this.list = el("ul", "stops__list");
    this.list.setAttribute("aria-label", "Stop sequences");
    this.input = el("input", "stops__input");
    this.input.id = "agent-stop";
    this.input.name = "stop";
    this.input.maxLength = maxChars;
    this.input.spellcheck = false;
    this.input.autocomplete = "off";
    this.input.setAttribute("aria-describedby", "agent-stop-hint");
    this.hint = el("p", "stops__hint");
    this.hint.id = "agent-stop-hint";
    this.box.append(this.list, this.input);
    this.el.append(label, this.box, this.hint);
    this.box.addEventListener("click", (ev) => {
      if (ev.target === this.box || ev.target === this.list) this.input.focus();
    });
    this.input.addEventListener("keydown", (ev) => {
      if (ev.isComposing) return;
      if (ev.key === "Enter") {
        ev.preventDefault();
        this.commit();
      } else if (ev.key === "Backspace" && this.input.value === "" && this.values.length) {
        ev.preventDefault();
        this.input.value = encodeStop(this.values.pop());
        this.render();
      }
    });
    this.input.addEventListener("blur", () => this.commit());
    this.render();
  }

  /** Adds what is typed; false (and the field says why) when it cannot be added. */
  commit() {
    const { stops, refused } = addStop(this.values, this.input.value);
    if (refused) {
      this.render(refused);
      return false;
    }
    this.values = stops;
    this.input.value = "";
    this.render();
    return true;
  }

  render(problem = null) {
    const { maxItems } = GENERATION_BOUNDS.stop;
    const chips = this.values.map((value, i) => {
      const shown = encodeStop(value);
      const chip = el("li", "stop-chip");
      chip.append(el("span", "stop-chip__text", shown));
      const remove = button("×", null, "stop-chip__remove");
      remove.setAttribute("aria-label", `Remove stop sequence ${shown}`);
      remove.addEventListener("click", () => {
        this.values.splice(i, 1);
        this.render();
        this.input.focus();
      });
      chip.append(remove);
      return chip;
    });
    this.list.replaceChildren(...chips);
    this.list.hidden = chips.length === 0;
    const full = this.values.length >= maxItems;
    this.input.placeholder = full ? "" : this.values.length ? "Add another" : "None: type one, then Enter";
    this.input.readOnly = full && this.input.value === "";
    this.box.classList.toggle("is-full", this.input.readOnly);
    this.hint.textContent = problem ?? (full ? `That is the most a model takes (${maxItems}). Remove one to add another.` : "Enter adds it; \\n stands for a line break.");
    this.hint.classList.toggle("is-problem", Boolean(problem));
  }
}
