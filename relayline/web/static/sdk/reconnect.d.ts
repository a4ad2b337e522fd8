export { CLOSE_ACTIONS } from "./protocol.js";

export type CloseAction = "stop" | "new_token" | "now" | "jittered" | "backoff";

export interface ReconnectOptions {
  /** The first delay's ceiling, in ms. */
  baseMs?: number;
  /** The largest ceiling, in ms. */
  maxMs?: number;
  /** Growth per attempt. */
  factor?: number;
  jitter?: "full" | "equal" | "none";
  maxAttempts?: number;
  /** After 1012 (a relay restarting), come back within this long. */
  restartSpreadMs?: number;
}

export declare const DEFAULT_RECONNECT: Readonly<Required<ReconnectOptions>>;

/** Exponential backoff with jitter. */
export declare class ReconnectPolicy {
  constructor(options?: ReconnectOptions, random?: () => number);
  readonly options: Readonly<Required<ReconnectOptions>>;
  attempt: number;
  /** The ceiling of the delay before attempt `n` (0-based). */
  ceiling(n: number): number;
  /** The delay before attempt `n`, jitter applied. */
  delay(n: number): number;
  /** The next delay in ms, or null once maxAttempts are used up. */
  next(): number | null;
  /** The delay before coming back after a relay restart (1012). */
  restartDelay(): number;
  reset(): void;
}

/** What to do after the relay closed the socket with `code`. */
export declare function closeAction(code: number): CloseAction;
