// Compiled (never run) by `tsc -p clients/js/tsconfig.json`: the declarations describe a
// program that uses the package the way README.md shows.
import {
  ConnectionStopped,
  EVENT,
  OP,
  RelayClient,
  Reset,
  SocketError,
  TurnCancelled,
  TurnFailed,
  type Delta,
  type Envelope,
} from "../index.js";

declare const ws: new (url: string, protocols?: string | string[]) => unknown;

export async function example(url: string, key: string): Promise<string> {
  const client = new RelayClient({
    url,
    token: key,
    WebSocket: ws,
    onNewToken: async () => "a fresh token",
    policy: { baseMs: 250, maxMs: 10_000 },
  });
  const off = client.on("state", (s) => console.log(s.state, s.retryInMs ?? 0));
  client.on("stopped", (err: ConnectionStopped) => console.log(err.code));
  await client.connect();
  const chat = await client.createChat("typed");
  const events = await chat.events();
  const answer = await chat.send("hello", { clientMsgId: "m-1" });
  const pieces: Delta[] = [];
  try {
    for await (const piece of answer) pieces.push(piece);
  } catch (err) {
    if (err instanceof TurnFailed) return err.category;
    if (err instanceof TurnCancelled) return err.turnId;
    throw err;
  }
  for await (const item of events) {
    if (item instanceof Reset) {
      const seq: number | undefined = item.snapshot?.seq;
      console.log("reloaded", seq);
      continue;
    }
    const event: Envelope = item;
    if (event.type === EVENT.MESSAGE_COMPLETED) break;
  }
  const cancelled: string | null = await chat.cancel();
  await chat.approve("approval-1", false);
  try {
    await client.call(OP.PING);
  } catch (err) {
    if (err instanceof SocketError && err.retryable) console.log(err.code);
  }
  off();
  client.close();
  return `${answer.content}${cancelled ?? ""}${answer.duplicate}`;
}
