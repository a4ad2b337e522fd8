// Lint of the web UI's sources (relayline/web/static/js), the JavaScript SDK's
// (relayline/web/static/sdk, packaged by clients/js) and their tests; run by the test command. The linter and its presets are the web build's dev dependencies (web/node_modules).
import { createRequire } from "node:module";

const require = createRequire(new URL("./web/package.json", import.meta.url));
const js = require("@eslint/js");
const globals = require("globals");

export default [
  { ignores: ["web/node_modules/**", "relayline/web/static/vendor/**", ".venv/**"] },
  js.configs.recommended,
  {
    files: ["relayline/web/static/js/**/*.js", "relayline/web/static/sdk/**/*.js"],
    languageOptions: { ecmaVersion: 2022, sourceType: "module", globals: { ...globals.browser } },
    rules: {
      "no-unused-vars": ["error", { argsIgnorePattern: "^_" }],
      eqeqeq: ["error", "smart"],
      "prefer-const": "error",
    },
  },
  {
    files: ["web/**/*.js", "web/**/*.mjs", "clients/js/**/*.js", "clients/js/**/*.mjs", "eslint.config.mjs"],
    languageOptions: {
      ecmaVersion: 2022,
      sourceType: "module",
      globals: { ...globals.node, ...globals.browser },
    },
  },
];
