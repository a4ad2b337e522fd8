// xterm.js styles its DOM renderer with <style> elements it writes at run time (theme colours,
// cell size, the scrollbar) and with style attributes on cells drawn in 24-bit colour. The
// pages' Content-Security-Policy (style-src 'self', no 'unsafe-inline') blocks both, and the
// policy stays: this bridge carries the same rules over channels the policy allows. A <style>
// xterm adds is taken out of the document (a detached element is not checked again when xterm
// rewrites it) and its text kept in a constructed stylesheet; a cell's style attribute is
// applied through the CSSOM.

/**
 * Mirror xterm's run-time styles under `root` until the returned function is called.
 * @param {HTMLElement} root the element the terminal was opened in
 * @param {Document} [doc]
 * @returns {() => void} stop mirroring and drop the mirrored sheets
 */
export function bridgeXtermStyles(root, doc = root.ownerDocument) {
  /** @type {Map<HTMLStyleElement, CSSStyleSheet>} */
  const sheets = new Map();
  const canAdopt = "adoptedStyleSheets" in doc && typeof CSSStyleSheet === "function";

  const mirror = (/** @type {HTMLStyleElement} */ style) => {
    let sheet = sheets.get(style);
    if (!sheet) {
      if (!canAdopt) return;
      sheet = new CSSStyleSheet();
      sheets.set(style, sheet);
      doc.adoptedStyleSheets = [...doc.adoptedStyleSheets, sheet];
      styleWatcher.observe(style, { childList: true, characterData: true, subtree: true });
    }
    sheet.replaceSync(style.textContent ?? "");
  };

  const applyInline = (/** @type {Element} */ el) => {
    const text = el.getAttribute("style");
    // Through the CSSOM, which the policy allows; the attribute ends up the same either way.
    if (text && el instanceof HTMLElement && el.style.cssText !== text) el.style.cssText = text;
  };

  const adopt = (/** @type {Node} */ node) => {
    if (!(node instanceof HTMLElement)) return;
    if (node instanceof HTMLStyleElement) {
      mirror(node);
      if (canAdopt) node.remove();
      return;
    }
    if (node.hasAttribute("style")) applyInline(node);
    for (const style of node.querySelectorAll("style")) adopt(style);
    for (const cell of node.querySelectorAll(".xterm-rows [style]")) applyInline(cell);
  };

  const styleWatcher = new MutationObserver((records) => {
    const touched = new Set();
    for (const r of records) {
      const target = r.target instanceof HTMLStyleElement ? r.target : r.target.parentElement;
      if (target instanceof HTMLStyleElement) touched.add(target);
    }
    for (const style of touched) mirror(style);
  });

  const treeWatcher = new MutationObserver((records) => {
    for (const r of records) {
      if (r.type === "attributes") applyInline(/** @type {Element} */ (r.target));
      else for (const node of r.addedNodes) adopt(node);
    }
  });
  treeWatcher.observe(root, { childList: true, subtree: true, attributes: true, attributeFilter: ["style"] });
  adopt(root);

  return () => {
    treeWatcher.disconnect();
    styleWatcher.disconnect();
    const mine = new Set(sheets.values());
    if (canAdopt) doc.adoptedStyleSheets = doc.adoptedStyleSheets.filter((s) => !mine.has(s));
    sheets.clear();
  };
}
