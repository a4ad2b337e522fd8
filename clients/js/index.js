// The package's entry point. The sources live in relayline/web/static/sdk/ (one copy, served by
// every relay under /static/sdk/ and shipped inside the Python package); see README.md.
export * from "../../relayline/web/static/sdk/index.js";
