// A tenant's agent settings as the admin console edits them: the bounds of the generation
// fields (the relay's, relayline/protocol/generation.py; it answers 422 past them), what the
// form's text becomes in the request body, and stop sequences written with escapes.

export const GENERATION_BOUNDS = Object.freeze({
  temperature: Object.freeze({ min: 0, max: 2, step: 0.01 }),
  // Above 0: a form cannot say so (min is inclusive), the relay does.
  top_p: Object.freeze({ min: 0, max: 1, step: 0.01 }),
  max_tokens: Object.freeze({ min: 1, max: 32768, step: 1 }),
  stop: Object.freeze({ maxItems: 4, maxChars: 64 }),
});

export const AGENT_LIMITS = Object.freeze({ modelChars: 200, promptChars: 20_000 });

/** What a number field holds: null when it is empty (the worker's default), else the number. */
export function numberOrNull(raw) {
  const text = String(raw ?? "").trim();
  if (text === "") return null;
  const value = Number(text);
  return Number.isFinite(value) ? value : text; // the relay names what is wrong with text
}

const ESCAPES = { n: "\n", t: "\t", r: "\r", "\\": "\\" };

/** A stop sequence as typed: `\n`, `\t`, `\r` and `\\` stand for the characters. */
export function decodeStop(typed) {
  return String(typed).replace(/\\([ntr\\])/g, (_, c) => ESCAPES[c]);
}

/** A stop sequence as shown: line breaks, tabs and backslashes written as escapes. */
export function encodeStop(value) {
  return String(value).replace(/[\\\n\t\r]/g, (c) => ({ "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r" })[c]);
}

/**
 * The stop sequences after adding `typed` (decoded), and why it was not added (a sentence,
 * or null). Empty text and repeats add nothing; the list stays within the bounds.
 * @param {string[]} stops
 * @param {string} typed
 * @returns {{ stops: string[], refused: string | null }}
 */
export function addStop(stops, typed) {
  const value = decodeStop(typed);
  const { maxItems, maxChars } = GENERATION_BOUNDS.stop;
  if (value === "" || stops.includes(value)) return { stops, refused: null };
  if (stops.length >= maxItems) return { stops, refused: `At most ${maxItems} stop sequences.` };
  if (value.length > maxChars) return { stops, refused: `A stop sequence has at most ${maxChars} characters.` };
  return { stops: [...stops, value], refused: null };
}

/**
 * The body of `PUT /v1/admin/tenants/{id}/agent` from the form's values (strings as typed).
 * Empty text is null: the worker's default.
 */
export function agentBody({
  model = "",
  systemPrompt = "",
  tools = [],
  temperature = "",
  topP = "",
  maxTokens = "",
  stop = [],
  storeCompletions = false,
}) {
  return {
    model: model.trim() || null,
    system_prompt: systemPrompt.trim() || null,
    tools: [...tools],
    temperature: numberOrNull(temperature),
    top_p: numberOrNull(topP),
    max_tokens: numberOrNull(maxTokens),
    stop: stop.length ? [...stop] : null,
    store_completions: Boolean(storeCompletions),
  };
}

/**
 * The fields a validation detail names ("top_p: Input should be greater than 0; stop.0: …"
 * gives ["top_p", "stop"]).
 * @param {string} detail
 * @returns {string[]}
 */
export function fieldsOfDetail(detail) {
  const names = [];
  for (const part of String(detail ?? "").split("; ")) {
    const m = /^([A-Za-z_]+)[.\w]*:/.exec(part);
    if (m && !names.includes(m[1])) names.push(m[1]);
  }
  return names;
}
