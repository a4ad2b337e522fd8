// Prometheus text parsing for the admin overview, and the debug overlay's ring buffer.
import assert from "node:assert/strict";
import { test } from "node:test";

import { keyFigures, parseMetrics, sum } from "../../relayline/web/static/js/metrics.js";
import { RingBuffer } from "../../relayline/web/static/js/debug.js";

const TEXT = `# HELP relayline_connections Open client connections
# TYPE relayline_connections gauge
relayline_connections{transport="ws"} 3.0
relayline_connections{transport="sse"} 1.0
relayline_http_requests_total{method="GET",route="/health",status="200"} 10.0
relayline_http_requests_total{method="GET",route="/x",status="503"} 2.0
relayline_events_delivered_total{transport="ws"} 1.5e3
garbage line
`;

test("parses samples with labels and scientific notation", () => {
  const samples = parseMetrics(TEXT);
  assert.equal(samples.length, 5);
  assert.equal(sum(samples, "relayline_connections", { transport: "ws" }), 3);
  const f = keyFigures(samples);
  assert.equal(f.connections, 4);
  assert.equal(f.httpRequests, 12);
  assert.equal(f.http5xx, 2);
  assert.equal(f.delivered, 1500);
});

test("the ring buffer keeps the last N, oldest first", () => {
  const ring = new RingBuffer(200);
  for (let i = 0; i < 450; i += 1) ring.push(i);
  const items = ring.toArray();
  assert.equal(items.length, 200);
  assert.equal(items[0], 250);
  assert.equal(items.at(-1), 449);
  assert.equal(ring.total, 450);
  assert.throws(() => new RingBuffer(0), RangeError);
});
