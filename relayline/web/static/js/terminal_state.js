// A terminal session's state as the relay reports it (`GET /v1/terminals[/{id}]`,
// `term.exited`), and what to tell people about how a session ended.

/**
 * A session's state from `GET /v1/terminals/{id}` (or an item of the list).
 * @param {any} body
 */
export function sessionStateOf(body) {
  const exit = body?.exit && typeof body.exit === "object" ? body.exit : null;
  const state = typeof body?.state === "string" ? body.state : "running";
  return {
    program: typeof body?.program === "string" ? body.program : null,
    state: exit || state === "exited" ? "exited" : state,
    writable: body?.writable !== false,
    cols: Number.isInteger(body?.cols) ? body.cols : null,
    rows: Number.isInteger(body?.rows) ? body.rows : null,
    exit,
  };
}

const EXIT_REASONS = {
  terminated: "This terminal session was ended.",
  idle: "This terminal session ended after a long time without input or output.",
  lifetime: "This terminal session reached its time limit and was ended.",
  shutdown: "The worker running this terminal stopped, so the session ended.",
  detached: "The worker running this terminal lost the relay for too long, so the session ended.",
  lost: "The worker running this terminal went away and did not come back with it.",
};

/**
 * What to say about a session that ended (term.exited's data: reason, status | signal, error).
 * @param {any} exit
 */
export function exitText(exit) {
  if (!exit) return "The program ended.";
  if (exit.reason === "failed") {
    const why = exit.error?.detail ? `: ${exit.error.detail}` : ".";
    return `The program could not be started${why}`;
  }
  if (exit.reason && exit.reason !== "exited" && Object.hasOwn(EXIT_REASONS, exit.reason)) return EXIT_REASONS[exit.reason];
  if (exit.signal != null) return `The program was ended by signal ${exit.signal}.`;
  if (exit.status != null) return `The program exited with status ${exit.status}.`;
  return "The program ended.";
}
