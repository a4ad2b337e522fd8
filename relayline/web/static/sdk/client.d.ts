import type { Api, RequestOptions } from "./api.js";
import type { Chat, ChatSnapshot, SendAck } from "./chat.js";
import type { OfflineQueue, StorageLike } from "./offline_queue.js";
import type { ReconnectOptions, ReconnectPolicy } from "./reconnect.js";
import type { RelaySocket, SocketEvents, WebSocketConstructor } from "./socket.js";
import type { Subscription } from "./subscription.js";

/** The connection ended for good: 4403, a refused token with no new one, or close(). */
export declare class ConnectionStopped extends Error {
  constructor(code: number | null, reason?: string);
  code: number | null;
  retryable: boolean;
}

/** `http(s)://host[:port][/prefix]` → the relay's `ws(s)://…/v1/ws`. */
export declare function socketUrl(base: string): string;

export interface RelayClientOptions {
  /** The relay's base URL (http or https); in a page, defaults to the page's origin. */
  url?: string;
  /** A tenant API key or a browser session token. */
  token: string;
  /** Called after the relay refused the credential (4401, HTTP 401): resolve with a new one. */
  onNewToken?: (() => Promise<string | null> | string | null) | null;
  /** The WebSocket constructor; defaults to globalThis.WebSocket (Node 20: pass one in). */
  WebSocket?: WebSocketConstructor;
  fetch?: typeof globalThis.fetch;
  /** Reconnect pacing (jittered exponential backoff). */
  policy?: ReconnectPolicy | ReconnectOptions;
  /** Where unsent messages wait (sessionStorage in a page); memory when null. */
  storage?: StorageLike | null;
  queueKey?: string;
  heartbeatMs?: number;
  ackTimeoutMs?: number;
}

export interface ClientEvents extends SocketEvents {
  stopped: ConnectionStopped;
}

/** The client half of the relay's protocol: resume, snapshot reload, resend, close-code policy. */
export declare class RelayClient {
  constructor(options: RelayClientOptions);
  readonly url: string;
  /** The credential in use (replaced by onNewToken's answer). */
  token: string;
  readonly socket: RelaySocket;
  readonly api: Api;
  readonly queue: OfflineQueue;
  /** Set once the connection ended for good. */
  stopped: ConnectionStopped | null;
  on<K extends keyof ClientEvents>(type: K, fn: (value: ClientEvents[K]) => void): () => boolean;
  /** Connect; resolves once the relay answered, rejects with ConnectionStopped if it refused for good. */
  connect(): Promise<void>;
  /** Stop for good. */
  close(): void;
  /** A REST call with the current credential (a 401 asks onNewToken once). */
  request(method: string, path: string, options?: RequestOptions): Promise<any>;
  get(path: string, options?: RequestOptions): Promise<any>;
  chat(chatId: string): Chat;
  createChat(title?: string | null): Promise<Chat>;
  snapshot(chatId: string): Promise<ChatSnapshot>;
  /** A Subscription at once, without waiting for the relay (see its `ready`). */
  listen(topic: string): Subscription;
  /** Follow `topic` (chat:<id>, tenant:<id>, …); resolves once the relay took it. */
  subscribe(topic: string): Promise<Subscription>;
  /** Send an op now; rejects with a SocketError (offline, refused, no answer). */
  call(op: string, fields?: Record<string, unknown>): Promise<any>;
  /** Queue a message and send it now or once the link is back; resolves with the relay's ack. */
  sendMessage(chatId: string, content: string, clientMsgId?: string): Promise<SendAck>;
  /** Send what waits in the queue (done on every (re)connect). */
  flush(): Promise<void>;
}
