// Tiny DOM helpers. Text always goes in through textContent, never as HTML.

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
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
