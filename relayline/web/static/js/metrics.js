// Reading the relay's Prometheus text exposition into the few figures the admin overview shows.

/** Parse exposition text into [{name, labels, value}] (comments and malformed lines skipped). */
export function parseMetrics(text) {
  const samples = [];
  const line = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$/;
  const label = /([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"/g;
  for (const raw of text.split("\n")) {
    const row = raw.trim();
    if (!row || row.startsWith("#")) continue;
    const m = line.exec(row);
    if (!m) continue;
    const value = Number(m[3]);
    if (Number.isNaN(value)) continue;
    const labels = {};
    for (const [, k, v] of (m[2] ?? "").matchAll(label)) labels[k] = v.replace(/\\(.)/g, "$1");
    samples.push({ name: m[1], labels, value });
  }
  return samples;
}

/** Sum of a metric's samples whose labels match `where` (a predicate or an object). */
/**
 * @param {Array<{ name: string, labels: Record<string, string>, value: number }>} samples
 * @param {string} name
 * @param {Record<string, string> | ((labels: Record<string, string>) => boolean)} [where]
 */
export function sum(samples, name, where = () => true) {
  const test =
    typeof where === "function"
      ? where
      : (labels) => Object.entries(where).every(([k, v]) => labels[k] === v);
  return samples.filter((s) => s.name === name && test(s.labels)).reduce((t, s) => t + s.value, 0);
}

export function keyFigures(samples) {
  return {
    connections: sum(samples, "relayline_connections"),
    wsConnections: sum(samples, "relayline_connections", { transport: "ws" }),
    sseConnections: sum(samples, "relayline_connections", { transport: "sse" }),
    published: sum(samples, "relayline_events_published_total"),
    delivered: sum(samples, "relayline_events_delivered_total"),
    httpRequests: sum(samples, "relayline_http_requests_total"),
    http5xx: sum(samples, "relayline_http_requests_total", (l) => (l.status ?? "").startsWith("5")),
    rateLimited: sum(samples, "relayline_rate_limited_total"),
    slowClients: sum(samples, "relayline_slow_client_disconnects_total"),
    missed: sum(samples, "relayline_events_missed_total"),
    replays: sum(samples, "relayline_replays_total"),
    queuedFrames: sum(samples, "relayline_outbound_queued_frames"),
    logDropped: sum(samples, "relayline_log_records_dropped_total"),
  };
}
