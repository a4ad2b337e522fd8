export * from "../../relayline/web/static/sdk/index.js";
