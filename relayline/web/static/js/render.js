// Markdown to safe DOM. Text from the model or a person is parsed by marked, highlighted by
// highlight.js and then always passed through DOMPurify with a short allow-list before it
// touches the page. Raw HTML in the text is shown as text, never interpreted: people paste
// HTML to talk about it. Without the vendor bundle (not built yet) text is shown as plain text.

let vendor = null;
let marked = null;
let purify = null;

const ALLOWED_TAGS = [
  "a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr",
  "li", "ol", "p", "pre", "span", "strong", "sub", "sup", "table", "tbody", "td", "th",
  "thead", "tr", "ul",
];
const ALLOWED_ATTR = ["href", "title", "class", "start", "align"];
const SAFE_SCHEMES = new Set(["http:", "https:", "mailto:"]);
const CLASS_OK = /^(hljs[\w-]*|language-[\w+#.-]{1,40})$/;
const MAX_AUTO_HIGHLIGHT = 20_000;
const HIGHLIGHT_CACHE_SIZE = 300;
const highlightCache = new Map();

export function escapeHtml(text) {
  return String(text)
    .replaceAll("&", "&amp;")
    .replaceAll("<", "&lt;")
    .replaceAll(">", "&gt;")
    .replaceAll('"', "&quot;")
    .replaceAll("'", "&#39;");
}

function highlight(code, lang, allowAuto) {
  const key = `${lang}\u0000${allowAuto ? 1 : 0}\u0000${code}`;
  const hit = highlightCache.get(key);
  if (hit !== undefined) {
    highlightCache.delete(key); // refresh its place in the LRU order
    highlightCache.set(key, hit);
    return hit;
  }
  const { hljs } = vendor;
  let html;
  try {
    if (lang && hljs.getLanguage(lang)) {
      html = hljs.highlight(code, { language: lang, ignoreIllegals: true }).value;
    } else if (allowAuto && code.length <= MAX_AUTO_HIGHLIGHT) {
      // Detection tries every language; worth it once an answer is final, not on each frame.
      html = hljs.highlightAuto(code).value;
    } else {
      html = escapeHtml(code);
    }
  } catch {
    html = escapeHtml(code);
  }
  highlightCache.set(key, html);
  if (highlightCache.size > HIGHLIGHT_CACHE_SIZE) {
    highlightCache.delete(highlightCache.keys().next().value);
  }
  return html;
}

function configure(mod) {
  vendor = mod;
  purify = mod.DOMPurify;
  purify.addHook("afterSanitizeAttributes", (node) => {
    if (node.hasAttribute("class")) {
      const kept = node.getAttribute("class").split(/\s+/).filter((c) => CLASS_OK.test(c));
      if (kept.length) node.setAttribute("class", kept.join(" "));
      else node.removeAttribute("class");
    }
    if (node.tagName === "A") {
      const href = node.getAttribute("href");
      let ok = false;
      if (href) {
        try {
          ok = SAFE_SCHEMES.has(new URL(href, globalThis.location?.href).protocol);
        } catch {
          ok = false;
        }
      }
      if (ok) {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer");
      } else {
        node.removeAttribute("href");
      }
    }
  });
  const make = (allowAuto) => {
    const instance = new mod.Marked({ gfm: true, breaks: true, async: false });
    instance.use({
      renderer: {
        html({ text }) {
          return escapeHtml(text);
        },
        image({ href, text }) {
          // Remote images would leak the reader's address to any host the text names.
          return `<a href="${escapeHtml(href)}">${escapeHtml(text || href)}</a>`;
        },
        code({ text, lang }) {
          const language = (lang || "").trim().split(/\s+/)[0].toLowerCase().replace(/[^\w+#.-]/g, "");
          const cls = language ? ` language-${language}` : "";
          return `<pre><code class="hljs${cls}">${highlight(text, language, allowAuto)}</code></pre>\n`;
        },
      },
    });
    return instance;
  };
  marked = { streaming: make(false), final: make(true) };
}

/** Load the vendor bundle; resolves false (plain-text mode) when it is missing. */
export async function loadRenderer(url = new URL("../vendor/vendor.js", import.meta.url).href) {
  if (vendor) return true;
  try {
    configure(await import(url));
    return true;
  } catch (err) {
    console.warn("relayline: Markdown disabled, vendor bundle not loaded", err);
    return false;
  }
}

export function markdownReady() {
  return vendor !== null;
}

function plainFragment(text) {
  const fragment = document.createDocumentFragment();
  for (const block of String(text).split(/\n{2,}/)) {
    const p = document.createElement("p");
    p.textContent = block;
    fragment.append(p);
  }
  return fragment;
}

/** Sanitize an HTML string into a fragment with the chat allow-list. */
export function sanitize(html) {
  return purify.sanitize(html, {
    ALLOWED_TAGS,
    ALLOWED_ATTR,
    ALLOW_DATA_ATTR: false,
    ALLOW_ARIA_ATTR: false,
    RETURN_DOM_FRAGMENT: true,
  });
}

/**
 * Render Markdown `text` into a sanitized DocumentFragment, code blocks wrapped with a header
 * and a copy button. `streaming` skips language auto-detection (it would run on every frame).
 */
export function renderMarkdown(text, { streaming = false } = {}) {
  if (!vendor) return plainFragment(text);
  const html = (streaming ? marked.streaming : marked.final).parse(String(text));
  const fragment = sanitize(html);
  decorateCode(fragment);
  return fragment;
}

export const COPY_ICON =
  "M16 1H4a2 2 0 0 0-2 2v14h2V3h12V1zm3 4H8a2 2 0 0 0-2 2v14a2 2 0 0 0 2 2h11a2 2 0 0 0 2-2V7a2 2 0 0 0-2-2zm0 16H8V7h11v14z";

export function icon(pathData, size = 16) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("width", String(size));
  svg.setAttribute("height", String(size));
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", pathData);
  path.setAttribute("fill", "currentColor");
  svg.append(path);
  return svg;
}

function decorateCode(fragment) {
  for (const pre of fragment.querySelectorAll("pre")) {
    const code = pre.querySelector("code");
    const lang = [...(code?.classList ?? [])].find((c) => c.startsWith("language-"));
    const wrap = document.createElement("div");
    wrap.className = "code-block";
    const head = document.createElement("div");
    head.className = "code-block__head";
    const label = document.createElement("span");
    label.className = "code-block__lang";
    label.textContent = lang ? lang.slice("language-".length) : "text";
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "code-block__copy";
    copy.dataset.action = "copy-code";
    copy.setAttribute("aria-label", "Copy code");
    copy.append(icon(COPY_ICON, 14), document.createTextNode("Copy"));
    head.append(label, copy);
    pre.replaceWith(wrap);
    wrap.append(head, pre);
  }
}

/** Copy the code of the block that holds `button`, with feedback on the button itself. */
export async function copyCode(button) {
  const code = button.closest(".code-block")?.querySelector("pre code");
  if (!code) return;
  const label = button.lastChild;
  try {
    await navigator.clipboard.writeText(code.textContent);
    label.textContent = "Copied";
  } catch {
    // Clipboard access needs a secure context; select the text so Ctrl+C works.
    const range = document.createRange();
    range.selectNodeContents(code);
    const selection = getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    label.textContent = "Press Ctrl+C";
  }
  setTimeout(() => {
    label.textContent = "Copy";
  }, 1600);
}
