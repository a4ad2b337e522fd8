// What people read when something goes wrong: one sentence on what happened, one on what
// happens next or what they can do. Keyed by the relay's failure categories and error codes.

import { CLOSE, FINISH_REASON } from "../sdk/protocol.js";

const TURN_FAILURES = {
  no_worker:
    "No agent is online right now. Your message is saved and will be answered as soon as one connects.",
  timeout:
    "The model took too long to answer (upstream timeout). Try again, perhaps with a shorter request.",
  upstream_4xx:
    "The model service refused this request (upstream error). If it keeps happening, an operator should check the model settings.",
  upstream_5xx:
    "The model service ran into a problem (upstream error). Try again in a moment.",
  incomplete:
    "The model server stopped this answer before it was finished (it may have been busy with another request). The text so far is kept; try again.",
  circuit_open:
    "The model service has been failing, so calls to it are paused for a short while (circuit open). Try again shortly.",
  rate_limited: "Too many messages in a short time (rate limited). Wait a few seconds, then try again.",
  tool_error: "A tool the agent relied on failed, so it could not finish the answer (tool error).",
  internal: "Something went wrong inside the relay or the agent (internal error). Try again; if it persists, tell the operator.",
};

const API_ERRORS = {
  network: "The relay could not be reached. Check your connection; we keep trying.",
  unauthorized: "Your session has expired or is not valid. Open a fresh link to continue.",
  forbidden: "This session is not allowed to do that.",
  not_found: "That conversation no longer exists or is not part of this session.",
  validation_error: "The relay did not accept that input.",
  payload_too_large: "That message is too large to send.",
  too_big: "That message is too large to send.",
  conflict: "The relay could not store that just now; please try again.",
  rate_limited: TURN_FAILURES.rate_limited,
  unavailable: "The relay is temporarily unavailable. We'll retry automatically.",
  queue_full: "Too many messages are waiting to be sent. Wait until you're back online.",
  timeout: "The relay did not answer in time. We'll retry when the connection is back.",
};

export const RECOVERY = {
  events_missed:
    "Some live updates could not be replayed (the connection dropped for a while or the relay restarted), so this conversation was reloaded. Nothing is missing.",
  retrying: (attempt) =>
    `The agent lost its connection mid-answer; trying again (attempt ${attempt}). The answer restarts.`,
  cancelled: "Stopped.",
  expired: "This tool request expired before anyone answered it.",
};

// A complete answer the model ended before it was done: a note under it (none for "stop").
const FINISH_NOTES = {
  [FINISH_REASON.LENGTH]: "Cut at the length limit",
  [FINISH_REASON.CONTENT_FILTER]: "Withheld by the model server's content filter",
};

/** The note under an answer with this finish_reason, or null when it ended on its own. */
export function finishReasonText(reason) {
  return typeof reason === "string" && Object.hasOwn(FINISH_NOTES, reason) ? FINISH_NOTES[reason] : null;
}

export function turnFailureText(category) {
  return TURN_FAILURES[category] ?? TURN_FAILURES.internal;
}

export function apiErrorText(error) {
  const code = error?.code ?? "internal";
  const base = API_ERRORS[code] ?? TURN_FAILURES[code] ?? TURN_FAILURES.internal;
  // Validation details are written for people ("content: at most 16000 characters").
  if (code === "validation_error" && error?.message) return `${base} ${error.message}`;
  return base;
}

export function connectionText(status) {
  switch (status.state) {
    case "online":
      return "Online";
    case "connecting":
      return "Connecting…";
    case "reconnecting": {
      const s = Math.ceil((status.retryInMs ?? 0) / 1000);
      return s > 0 ? `Reconnecting in ${s} s` : "Reconnecting…";
    }
    default:
      if (status.reason === "unauthenticated") return "Signed out";
      if (status.code === CLOSE.FORBIDDEN) return "Not allowed";
      return "Offline";
  }
}

export function closeText(code) {
  switch (code) {
    case CLOSE.UNAUTHENTICATED:
      return API_ERRORS.unauthorized;
    case CLOSE.FORBIDDEN:
      return "This page's address is not allowed to connect to the relay (origin or topic not allowed). Ask the operator to add it.";
    case CLOSE.RATE_LIMITED:
      return "Too many connections or requests from here; reconnecting after a pause.";
    default:
      return null;
  }
}
