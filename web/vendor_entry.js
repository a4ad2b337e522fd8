// The third-party code the web UI uses, bundled into one ES module by scripts/build_web.sh.
// Only highlight.js's common languages are registered: the full set would triple the bundle
// for languages a chat rarely shows.
export { Marked } from "marked";
export { default as DOMPurify } from "dompurify";
export { default as hljs } from "highlight.js/lib/common";
// The widget's proof of work: crypto.subtle exists only in secure contexts, and a relay on
// plain http in a private network still needs its widget to work.
export { sha256 } from "@noble/hashes/sha2.js";
// The admin console's charts (uPlot: small, canvas). Its stylesheet is bundled beside this
// module, as vendor.css.
export { default as uPlot } from "uplot";
import "uplot/dist/uPlot.min.css";
