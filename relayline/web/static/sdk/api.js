// REST calls to the relay: bearer auth, the API's error shape turned into ApiError, and retries
// with backoff for failures that a later attempt can fix (network, 429, 502/503/504).

import { ReconnectPolicy } from "./reconnect.js";

export class ApiError extends Error {
  constructor(status, code, detail, { requestId = null, retryAfterS = null } = {}) {
    super(detail || code);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.requestId = requestId;
    this.retryAfterS = retryAfterS;
  }

  get retryable() {
    return this.status === 0 || this.status === 429 || [502, 503, 504].includes(this.status);
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export const DEFAULT_RETRY = Object.freeze({ retries: 3, baseMs: 300, maxMs: 4000, jitter: "full" });

export class Api {
  /**
   * @param {object} [options]
   * @param {string} [options.base] prefix of every path
   * @param {string | null | (() => string | null)} [options.token] the bearer credential, or a function giving it
   * @param {object} [options.retry] overrides of DEFAULT_RETRY
   * @param {typeof globalThis.fetch} [options.fetchImpl]
   */
  constructor({ base = "", token = null, retry = {}, fetchImpl = (input, init) => globalThis.fetch(input, init) } = {}) {
    this.base = base;
    this.tokenOf = typeof token === "function" ? token : () => token;
    this.retry = { ...DEFAULT_RETRY, ...retry };
    this.fetch = fetchImpl;
  }

  /**
   * `idempotent` defaults to true for GET/PUT/DELETE; a POST is only retried when the caller
   * says a repeat is harmless (e.g. it carries a client_msg_id).
   */
  /**
   * @param {string} method
   * @param {string} path
   * @param {{ body?: unknown, idempotent?: boolean, retries?: number, signal?: AbortSignal }} [options]
   */
  async request(method, path, { body = undefined, idempotent = undefined, retries = this.retry.retries, signal = undefined } = {}) {
    const canRetry = idempotent ?? ["GET", "HEAD", "PUT", "DELETE"].includes(method);
    const policy = new ReconnectPolicy({
      baseMs: this.retry.baseMs,
      maxMs: this.retry.maxMs,
      jitter: this.retry.jitter,
    });
    for (let attempt = 0; ; attempt += 1) {
      let error;
      try {
        return await this.once(method, path, body, signal);
      } catch (err) {
        if (err?.name === "AbortError") throw err;
        error = err instanceof ApiError ? err : new ApiError(0, "network", "the relay could not be reached");
      }
      if (!canRetry || !error.retryable || attempt >= retries) throw error;
      const wait = Math.max(policy.next() ?? 0, (error.retryAfterS ?? 0) * 1000);
      await sleep(Math.min(wait, 30_000));
    }
  }

  async once(method, path, body, signal) {
    const headers = { Accept: "application/json" };
    const token = this.tokenOf();
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const res = await this.fetch(this.base + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      credentials: "omit",
      cache: "no-store",
    });
    const type = res.headers.get("content-type") || "";
    if (res.ok) {
      if (res.status === 204) return null;
      return type.includes("json") ? res.json() : res.text();
    }
    let code = `http_${res.status}`;
    let detail = res.statusText;
    let requestId = res.headers.get("x-request-id");
    if (type.includes("json")) {
      const payload = await res.json().catch(() => null);
      const err = payload?.error;
      if (err) {
        code = err.code || code;
        detail = err.detail || detail;
        requestId = err.request_id || requestId;
      }
    }
    const retryAfter = Number(res.headers.get("retry-after"));
    throw new ApiError(res.status, code, detail, {
      requestId,
      retryAfterS: Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter : null,
    });
  }

  get(path, opts) {
    return this.request("GET", path, opts);
  }

  post(path, body, opts) {
    return this.request("POST", path, { ...opts, body: body ?? {} });
  }

  put(path, body, opts) {
    return this.request("PUT", path, { ...opts, body });
  }

  delete(path, opts) {
    return this.request("DELETE", path, opts);
  }
}
