// The widget's proof of work agrees with a reference SHA-256 and finds valid solutions.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { test } from "node:test";

import { leadingZeroBits, sha256, solveChallenge } from "../../relayline/web/static/js/pow.js";

const hex = (bytes) => Buffer.from(bytes).toString("hex");

test("sha256 matches node:crypto for every length around the block size", () => {
  for (let n = 0; n < 200; n += 1) {
    const bytes = new Uint8Array(n).map((_, i) => (i * 31 + n) & 0xff);
    assert.equal(hex(sha256(bytes)), createHash("sha256").update(bytes).digest("hex"), `length ${n}`);
  }
});

test("leading zero bits", () => {
  assert.equal(leadingZeroBits(new Uint8Array([0x80])), 0);
  assert.equal(leadingZeroBits(new Uint8Array([0x00, 0x01])), 15);
  assert.equal(leadingZeroBits(new Uint8Array([0x00, 0x00])), 16);
  assert.equal(leadingZeroBits(new Uint8Array([0x10])), 3);
});

test("a solution meets the difficulty, checked independently", async () => {
  const challenge = "eyJ.test.challenge";
  const solution = await solveChallenge(challenge, 12);
  assert.match(solution, /^[0-9a-z]{1,64}$/);
  const digest = createHash("sha256").update(`${challenge}:${solution}`).digest();
  assert.ok(leadingZeroBits(digest) >= 12);
});
