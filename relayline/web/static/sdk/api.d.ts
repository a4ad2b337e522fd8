export interface RetryOptions {
  retries?: number;
  baseMs?: number;
  maxMs?: number;
  jitter?: "full" | "equal" | "none";
}

export declare const DEFAULT_RETRY: Readonly<Required<RetryOptions>>;

/** The relay's error shape ({error: {code, detail, request_id}}) or a network failure (status 0). */
export declare class ApiError extends Error {
  constructor(
    status: number,
    code: string,
    detail?: string,
    extra?: { requestId?: string | null; retryAfterS?: number | null },
  );
  status: number;
  code: string;
  requestId: string | null;
  retryAfterS: number | null;
  readonly retryable: boolean;
}

export interface RequestOptions {
  body?: unknown;
  /** Defaults to true for GET/HEAD/PUT/DELETE; a POST is retried only when told so. */
  idempotent?: boolean;
  retries?: number;
  signal?: AbortSignal;
}

/** REST calls to the relay: bearer auth, ApiError, retries with backoff where a retry can help. */
export declare class Api {
  constructor(options?: {
    base?: string;
    token?: string | null | (() => string | null);
    retry?: RetryOptions;
    fetchImpl?: typeof globalThis.fetch;
  });
  base: string;
  request(method: string, path: string, options?: RequestOptions): Promise<any>;
  get(path: string, options?: RequestOptions): Promise<any>;
  post(path: string, body?: unknown, options?: RequestOptions): Promise<any>;
  put(path: string, body?: unknown, options?: RequestOptions): Promise<any>;
  delete(path: string, options?: RequestOptions): Promise<any>;
}
