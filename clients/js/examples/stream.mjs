// Send a message and stream its answer, from Node:
//
//   RELAYLINE_URL=http://127.0.0.1:8080 RELAYLINE_TOKEN=<a tenant key> \
//     node --experimental-websocket clients/js/examples/stream.mjs "Hello! What can you do?"
//
// (Node 22 and later have WebSocket without the flag; anywhere else pass a constructor, e.g.
// `import WebSocket from "ws"` and `new RelayClient({ ..., WebSocket })`.)

import { RelayClient, TurnCancelled, TurnFailed } from "../index.js";

const client = new RelayClient({ url: process.env.RELAYLINE_URL, token: process.env.RELAYLINE_TOKEN });
client.on("state", ({ state, retryInMs }) => {
  if (state !== "online") process.stderr.write(`[${state}${retryInMs ? ` in ${retryInMs} ms` : ""}]\n`);
});
await client.connect();
try {
  const chat = await client.createChat("from Node"); // or client.chat(existingId)
  const answer = await chat.send(process.argv[2] ?? "Hello! What can you do?");
  try {
    for await (const delta of answer) process.stdout.write(delta.text);
  } catch (err) {
    if (!(err instanceof TurnFailed || err instanceof TurnCancelled)) throw err;
    process.stdout.write(`\n[${err.message}]`);
  }
  process.stdout.write("\n");
} finally {
  client.close();
}
