// The terminal view's third-party code (xterm.js and its fit add-on), bundled by
// scripts/build_web.sh into a module of its own, vendor_terminal.js, that the chat page loads
// only when a terminal is opened: it weighs as much as the rest of the vendor bundle. xterm's
// stylesheet lands beside it as vendor_terminal.css.
export { Terminal } from "@xterm/xterm";
export { FitAddon } from "@xterm/addon-fit";
import "@xterm/xterm/css/xterm.css";
