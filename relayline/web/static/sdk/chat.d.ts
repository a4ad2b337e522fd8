import type { RelayClient } from "./client.js";
import type { Subscription } from "./subscription.js";

/** GET /v1/chats/{id}: the chat, its turn in progress and the topic's position. */
export interface ChatSnapshot {
  id: string;
  title: string | null;
  epoch: string;
  seq: number;
  last_seq: number;
  turn: { id: string; state: string; [field: string]: any } | null;
  partial_message_id: string | null;
  partial_text: string | null;
  [field: string]: any;
}

export interface StoredMessage {
  id: string;
  seq: number;
  role: "user" | "assistant" | string;
  content: string;
  status: string;
  client_msg_id: string | null;
  turn_id: string | null;
  [field: string]: any;
}

/** The relay's answer to a send: the stored message and the turn it queued. */
export interface SendAck {
  message: StoredMessage;
  turn_id: string | null;
  duplicate?: boolean;
}

/** A piece of an answer, never repeated. */
export interface Delta {
  messageId: string;
  turnId: string;
  text: string;
}

export declare class TurnFailed extends Error {
  turnId: string;
  /** The design's failure category (timeout, upstream_4xx, …). */
  category: string;
  detail: string;
}

export declare class TurnCancelled extends Error {
  turnId: string;
}

/** The answer to one sent message: its pieces in order, each once; text() for the whole. */
export declare class Answer implements AsyncIterableIterator<Delta> {
  readonly chat: Chat;
  readonly message: StoredMessage;
  readonly turnId: string | null;
  readonly duplicate: boolean;
  /** The answer so far. */
  readonly content: string;
  readonly messageId: string | null;
  next(): Promise<IteratorResult<Delta, undefined>>;
  return(): Promise<IteratorResult<Delta, undefined>>;
  [Symbol.asyncIterator](): Answer;
  /** Wait for the whole answer; rejects with TurnFailed or TurnCancelled. */
  text(): Promise<string>;
}

/** One chat of the client's tenant: client.chat(id) or client.createChat(). */
export declare class Chat {
  constructor(client: RelayClient, chatId: string);
  readonly client: RelayClient;
  readonly id: string;
  readonly topic: string;
  /** Post a message (queued while offline) and resolve with its Answer once the relay stored it. */
  send(text: string, options?: { clientMsgId?: string }): Promise<Answer>;
  /** Stop the turn in progress; resolves with its id (null: nothing was running). */
  cancel(): Promise<string | null>;
  /** Answer a tool.approval_requested event (approve=false denies the call). */
  approve(approvalId: string, approve?: boolean): Promise<void>;
  events(): Promise<Subscription>;
  snapshot(): Promise<ChatSnapshot>;
  messages(options?: { after?: number | null; limit?: number }): Promise<StoredMessage[]>;
}
