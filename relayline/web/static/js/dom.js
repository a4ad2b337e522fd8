// Tiny DOM helpers. Text always goes in through textContent, never as HTML.

/**
 * The element around an event's target that matches `selector` (a click on an icon inside a
 * button finds the button), or null.
 * @param {Event} ev
 * @param {string} selector
 * @returns {HTMLElement | null}
 */
export function closestTo(ev, selector) {
  const target = /** @type {Element | null} */ (ev.target);
  return /** @type {HTMLElement | null} */ (target?.closest?.(selector) ?? null);
}

/**
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {string} [className]
 * @param {string | number | null} [text]
 * @returns {HTMLElementTagNameMap[K]}
 */
export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = String(text);
  return node;
}

export function button(label, action, className = "btn btn--small", data = {}) {
  const b = el("button", className, label);
  b.type = "button";
  if (action) b.dataset.action = action;
  Object.assign(b.dataset, data);
  return b;
}

export function badge(text, tone) {
  return el("span", `badge badge--${tone}`, text);
}
