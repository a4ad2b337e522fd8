// Keystrokes typed into a terminal while its link is down. They wait here, oldest first, and
// go out once, in order, when the link is back. The queue is bounded in UTF-8 bytes: past the
// bound the oldest input goes first (a pasted log should not push out what was typed last), and
// how much was dropped is reported so the page can say so. Memory only: a reload starts empty.

export const DEFAULT_INPUT_LIMIT_BYTES = 64 * 1024;
// One term.input frame's data at most. JSON escapes a control character as six bytes
// (\u001b), so 8 KiB of input stays under the relay's 64 KiB frame limit whatever it holds.
export const DEFAULT_CHUNK_BYTES = 8 * 1024;

const encoder = new TextEncoder();

/** The UTF-8 size of `text`. */
export function utf8Bytes(text) {
  return encoder.encode(text).length;
}

/** The UTF-8 width of one code point. */
function widthOf(code) {
  if (code < 0x80) return 1;
  if (code < 0x800) return 2;
  if (code < 0x10000) return 3;
  return 4;
}

/**
 * The tail of `text` that fits in `maxBytes` of UTF-8, never splitting a character.
 * @param {string} text
 * @param {number} maxBytes
 */
export function utf8Tail(text, maxBytes) {
  let bytes = 0;
  let start = text.length;
  while (start > 0) {
    let from = start - 1;
    const unit = text.charCodeAt(from);
    // A low surrogate ends a pair: take both halves or neither.
    if (unit >= 0xdc00 && unit <= 0xdfff && from > 0 && isHigh(text.charCodeAt(from - 1))) from -= 1;
    const width = widthOf(text.codePointAt(from));
    if (bytes + width > maxBytes) break;
    bytes += width;
    start = from;
  }
  return text.slice(start);
}

function isHigh(unit) {
  return unit >= 0xd800 && unit <= 0xdbff;
}

/**
 * Split `text` into pieces of at most `maxBytes` UTF-8 bytes each, never inside a character
 * (a character wider than `maxBytes` makes a piece of its own).
 * @param {string} text
 * @param {number} maxBytes
 * @returns {string[]}
 */
export function utf8Chunks(text, maxBytes) {
  const out = [];
  let start = 0;
  let bytes = 0;
  let i = 0;
  while (i < text.length) {
    const code = text.codePointAt(i);
    const units = code > 0xffff ? 2 : 1;
    const width = widthOf(code);
    if (bytes + width > maxBytes && i > start) {
      out.push(text.slice(start, i));
      start = i;
      bytes = 0;
    }
    bytes += width;
    i += units;
  }
  if (i > start) out.push(text.slice(start, i));
  return out;
}

/**
 * @typedef {object} DropReport
 * @property {number} bytes how many bytes this push dropped (0: none)
 * @property {number} totalDropped bytes dropped since the queue was last emptied
 */

export class TerminalInputQueue {
  /**
   * @param {object} [options]
   * @param {number} [options.limitBytes] what may wait, in UTF-8 bytes
   * @param {(report: DropReport) => void} [options.onDrop] told whenever input was dropped
   */
  constructor({ limitBytes = DEFAULT_INPUT_LIMIT_BYTES, onDrop = () => {} } = {}) {
    if (!(limitBytes > 0)) throw new RangeError("terminal input queue: limitBytes must be > 0");
    this.limitBytes = limitBytes;
    this.onDrop = onDrop;
    /** @type {{text: string, bytes: number}[]} */
    this.pieces = [];
    this.bytes = 0;
    this.dropped = 0;
  }

  get size() {
    return this.bytes;
  }

  get empty() {
    return this.pieces.length === 0;
  }

  /**
   * Queue `text`; past the bound the oldest input is dropped (a single piece larger than the
   * bound keeps its newest part). Returns how many bytes this push dropped.
   * @param {string} text
   */
  push(text) {
    if (!text) return 0;
    let piece = { text, bytes: utf8Bytes(text) };
    let dropped = 0;
    if (piece.bytes > this.limitBytes) {
      const kept = utf8Tail(text, this.limitBytes);
      dropped += piece.bytes - utf8Bytes(kept);
      piece = { text: kept, bytes: utf8Bytes(kept) };
    }
    while (this.pieces.length && this.bytes + piece.bytes > this.limitBytes) {
      const oldest = this.pieces[0];
      const excess = this.bytes + piece.bytes - this.limitBytes;
      if (oldest.bytes <= excess) {
        this.pieces.shift();
        this.bytes -= oldest.bytes;
        dropped += oldest.bytes;
      } else {
        const kept = utf8Tail(oldest.text, oldest.bytes - excess);
        const keptBytes = utf8Bytes(kept);
        dropped += oldest.bytes - keptBytes;
        this.bytes -= oldest.bytes - keptBytes;
        this.pieces[0] = { text: kept, bytes: keptBytes };
      }
    }
    this.pieces.push(piece);
    this.bytes += piece.bytes;
    if (dropped) {
      this.dropped += dropped;
      this.onDrop({ bytes: dropped, totalDropped: this.dropped });
    }
    return dropped;
  }

  /**
   * Take everything queued, oldest first, as frames of at most `chunkBytes` each; the queue is
   * empty afterwards (and its drop count starts again).
   * @param {number} [chunkBytes]
   * @returns {string[]}
   */
  drain(chunkBytes = DEFAULT_CHUNK_BYTES) {
    const text = this.pieces.map((p) => p.text).join("");
    this.clear();
    return text ? utf8Chunks(text, chunkBytes) : [];
  }

  /**
   * Put frames that could not be sent back in front of anything queued since, in order.
   * @param {string[]} frames
   */
  requeueFront(frames) {
    const rest = this.pieces;
    this.pieces = [];
    this.bytes = 0;
    for (const text of frames) this.push(text);
    for (const piece of rest) this.push(piece.text);
  }

  clear() {
    this.pieces = [];
    this.bytes = 0;
    this.dropped = 0;
  }
}
