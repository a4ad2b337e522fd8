import type { Envelope } from "./socket.js";
import type { ChatSnapshot } from "./chat.js";

/**
 * The relay no longer held what was missed: rebuild from `snapshot` (null for a topic that is
 * not a chat, or when the snapshot could not be loaded: then `error` says why).
 */
export declare class Reset {
  constructor(topic: string, reason: string, snapshot: ChatSnapshot | null, error?: Error | null);
  topic: string;
  reason: string;
  snapshot: ChatSnapshot | null;
  error: Error | null;
}

/**
 * A topic's events in seq order, each once, across reconnects; a Reset after events.missed.
 * Rejects with ConnectionStopped when the connection ends for good.
 */
export declare class Subscription implements AsyncIterableIterator<Envelope | Reset> {
  /** Made by RelayClient.listen and subscribe. */
  constructor(
    topic: string,
    load: (topic: string) => Promise<ChatSnapshot | null>,
    onClose: (sub: Subscription) => void,
  );
  readonly topic: string;
  /** @internal an event from the connection, already deduplicated */
  push(event: Envelope): void;
  /** @internal the connection ended for good (or the subscription was refused) */
  fail(error: Error): void;
  /** Settles once the relay acknowledged the subscription (rejects when it refused). */
  ready: Promise<void>;
  next(): Promise<IteratorResult<Envelope | Reset, undefined>>;
  return(): Promise<IteratorResult<Envelope | Reset, undefined>>;
  /** Stop listening (the relay subscription ends with the topic's last listener). */
  close(): void;
  [Symbol.asyncIterator](): Subscription;
}
