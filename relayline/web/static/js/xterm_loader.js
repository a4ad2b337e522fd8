// xterm.js for the terminal view: its vendor bundle, loaded on first use (it weighs as much as
// the rest of the page's third-party code), and its colours from the page's design tokens.

const VENDOR_URL = new URL("../vendor/vendor_terminal.js", import.meta.url).href;
let vendorPromise = null;

/** xterm.js from its vendor bundle, loaded once, on first use. */
export function loadXterm(url = VENDOR_URL) {
  vendorPromise ??= import(url).catch((err) => {
    vendorPromise = null;
    throw err;
  });
  return vendorPromise;
}

/** xterm's colours from the page's design tokens, so the screen follows light and dark. */
export function themeFrom(el) {
  const css = getComputedStyle(el);
  const v = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
  return {
    background: v("--term-bg", "#101116"),
    foreground: v("--term-fg", "#e6e7eb"),
    cursor: v("--term-cursor", "#8d89ff"),
    cursorAccent: v("--term-bg", "#101116"),
    selectionBackground: v("--term-selection", "#3b3a6b"),
  };
}
