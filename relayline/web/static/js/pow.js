// Proof of work for the public widget: find a solution such that
// sha256(challenge + ":" + solution) starts with `bits` zero bits. SHA-256 is @noble/hashes'
// (bundled in the vendor module): crypto.subtle only exists on https (and localhost), and a
// relay on plain http in a private network still needs its widget to work.

import { sha256 as nobleSha256 } from "../vendor/vendor.js";

/**
 * SHA-256 of `bytes`; returns 32 bytes.
 * @param {Uint8Array} bytes
 * @returns {Uint8Array}
 */
export function sha256(bytes) {
  return nobleSha256(bytes);
}

export function leadingZeroBits(digest) {
  let bits = 0;
  for (const byte of digest) {
    if (byte === 0) {
      bits += 8;
      continue;
    }
    return bits + Math.clz32(byte) - 24;
  }
  return bits;
}

const encoder = new TextEncoder();

/**
 * Search solutions (base-36 counters) until one has `bits` leading zero bits. Yields to the
 * event loop every `batch` tries so the page stays responsive; `onProgress(tries)` may report.
 */
/**
 * @param {string} challenge
 * @param {number} bits
 * @param {{ batch?: number, onProgress?: (tries: number) => void, signal?: AbortSignal }} [options]
 */
export async function solveChallenge(challenge, bits, { batch = 4000, onProgress = undefined, signal = undefined } = {}) {
  const prefix = `${challenge}:`;
  for (let n = 0; ; n += 1) {
    const solution = n.toString(36);
    if (leadingZeroBits(sha256(encoder.encode(prefix + solution))) >= bits) return solution;
    if (n % batch === batch - 1) {
      if (signal?.aborted) throw new Error("aborted");
      onProgress?.(n + 1);
      await new Promise((resolve) => setTimeout(resolve, 0));
    }
  }
}
