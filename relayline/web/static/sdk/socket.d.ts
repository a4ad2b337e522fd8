import type { ReconnectOptions, ReconnectPolicy } from "./reconnect.js";

export { CLOSE_ACTIONS, closeAction, DEFAULT_RECONNECT, ReconnectPolicy } from "./reconnect.js";
export type { ReconnectOptions } from "./reconnect.js";

/** The relay's event envelope. */
export interface Envelope<D = Record<string, any>> {
  v: number;
  id: string;
  topic: string;
  type: string;
  seq: number;
  ts: number;
  data: D;
}

/** A topic's position: the log's epoch and the last seq seen. */
export interface Position {
  epoch: string | null;
  seq: number;
}

export type SocketState = "idle" | "connecting" | "online" | "reconnecting" | "offline";

export interface StateChange {
  state: SocketState;
  retryInMs?: number;
  code?: number;
  reason?: string;
}

export interface Packet {
  dir: "in" | "out";
  at: number;
  topic: string;
  type: string;
  seq: number | null;
  size: number;
  ref: string | null;
}

export interface ReadyInfo {
  results: Array<{ topic: string | undefined; ok: boolean; value?: any; error?: SocketError }>;
}

export interface SocketEvents {
  state: StateChange;
  event: Envelope;
  ready: ReadyInfo;
  error: { code?: string; detail?: string };
  auth: { code: number; reason: string };
  packet: Packet;
  subscribed: { topic: string; ack: any };
  [other: string]: any;
}

/** A WebSocket constructor: the browser's, Node 22's, or the `ws` package's. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => any;

export interface Timers {
  setTimeout(fn: () => void, ms: number): any;
  clearTimeout(id: any): void;
  setInterval(fn: () => void, ms: number): any;
  clearInterval(id: any): void;
}

export type TokenSource = string | null | (() => string | null);

export interface RelaySocketOptions {
  /** The relay's ws(s)://…/v1/ws. */
  url: string;
  token: TokenSource;
  policy?: ReconnectPolicy | ReconnectOptions;
  WebSocketImpl?: WebSocketConstructor;
  timers?: Timers;
  heartbeatMs?: number;
  ackTimeoutMs?: number;
}

/** An op the relay refused, or one that could not be sent or answered. */
export declare class SocketError extends Error {
  constructor(code: string, detail?: string);
  code: string;
  /** Whether sending the same op again later may succeed (the link failed, not the op). */
  retryable: boolean;
}

/** One logical connection to /v1/ws that survives reconnects. */
export declare class RelaySocket {
  constructor(options: RelaySocketOptions);
  url: string;
  state: SocketState;
  policy: ReconnectPolicy;
  lastClose: { code: number; reason: string } | null;
  /** The topics it follows and each one's position (resubscribed after every reconnect). */
  topics: Map<string, Position>;
  readonly online: boolean;
  on<K extends keyof SocketEvents>(type: K, fn: (value: SocketEvents[K]) => void): () => boolean;
  emit<K extends keyof SocketEvents>(type: K, value: SocketEvents[K]): void;
  /** Start (or restart at once) connecting. */
  connect(): void;
  /** Use a new token: reconnect at once with it (subscriptions carry over). */
  setToken(token: TokenSource): void;
  /** Drop the current link (if any) and connect again without waiting. */
  reconnectNow(): void;
  /** Stop for good (until connect()). */
  close(): void;
  /** The network is gone: stop burning attempts until it is back. */
  suspend(reason?: string): void;
  /** Send an op and wait for its ack's data; rejects with a SocketError. */
  request(op: string, fields?: Record<string, unknown>, options?: { timeoutMs?: number }): Promise<any>;
  /** Watch a topic from now on and after every reconnect (resuming from epoch/after_seq). */
  subscribe(topic: string, from?: { epoch?: string | null; after_seq?: number }): Promise<any>;
  unsubscribe(topic: string): void;
  position(topic: string): Position | null;
}
