export declare const DEFAULT_QUEUE_LIMIT: number;

/** Thrown by OfflineQueue.add past the queue's limit. */
export declare class QueueFullError extends Error {
  constructor(limit: number);
  code: "queue_full";
}

/** A client_msg_id: 1 to 128 of [A-Za-z0-9._:-]. */
export declare function newClientMsgId(random?: { getRandomValues(bytes: Uint8Array): Uint8Array }): string;

export interface QueuedMessage {
  client_msg_id: string;
  chat_id: string;
  content: string;
  created_at: number;
  state: "queued" | "sending" | "failed";
  error: { code: string; detail: string } | null;
}

/** The part of the Web Storage interface the queue and the history store use. */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
  readonly length: number;
  key(index: number): string | null;
}

/** Messages waiting to be sent, each with the client_msg_id it keeps for every resend. */
export declare class OfflineQueue {
  constructor(options?: { storage?: StorageLike | null; key?: string; limit?: number; now?: () => number });
  items: QueuedMessage[];
  readonly size: number;
  onChange(fn: (items: QueuedMessage[]) => void): () => boolean;
  /** Queue a message; throws QueueFullError past the limit. */
  add(chatId: string, content: string, clientMsgId?: string): QueuedMessage;
  get(clientMsgId: string): QueuedMessage | null;
  forChat(chatId: string): QueuedMessage[];
  delivered(clientMsgId: string): void;
  retry(clientMsgId: string): QueuedMessage | null;
  discard(clientMsgId: string): void;
  /** Send every queued message, oldest first, once each (a retryable failure ends the pass). */
  flush(send: (item: QueuedMessage) => Promise<unknown>): Promise<void>;
}
