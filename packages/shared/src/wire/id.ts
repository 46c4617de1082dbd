import { randomBytes } from 'node:crypto';
import { InvalidIdError, PoolError } from '../core/errors.js';

/** Length of a connection ID on the wire, in bytes. */
export const ID_BYTES = 4;

const ID_TEXT = /^[0-9a-f]{8}$/;

/** True if `value` is the text form of an ID: exactly 8 lowercase hex characters. */
export function isValidId(value: unknown): value is string {
  return typeof value === 'string' && ID_TEXT.test(value);
}

/**
 * Normalises an ID given as text (8 lowercase hex characters) or as the 4 wire
 * bytes to its text form. Throws `InvalidIdError` (`ERR_INVALID_ID`) otherwise.
 * Upper-case hex is rejected rather than folded: the text form is canonical, and
 * accepting two spellings would let two callers disagree on map keys.
 */
export function parseId(value: string | Uint8Array): string {
  if (typeof value === 'string') {
    if (ID_TEXT.test(value)) return value;
  } else if (value instanceof Uint8Array && value.length === ID_BYTES) {
    return Buffer.from(value.buffer, value.byteOffset, ID_BYTES).toString('hex');
  }
  throw new InvalidIdError(value);
}

/** The 4 wire bytes of a text ID. */
export function idToBytes(id: string): Buffer {
  return Buffer.from(parseId(id), 'hex');
}

/**
 * Draws a fresh ID from the CSPRNG that `isTaken` reports free. A collision among
 * 2^32 values is rare but not negligible at tens of thousands of live connections,
 * so we redraw; the bound only stops a broken `isTaken` from spinning forever.
 */
export function generateId(isTaken: (id: string) => boolean, maxAttempts = 32): string {
  for (let attempt = 0; attempt < maxAttempts; attempt++) {
    const id = randomBytes(ID_BYTES).toString('hex');
    if (!isTaken(id)) return id;
  }
  throw new PoolError('ERR_ID_EXHAUSTED', `no free connection ID after ${maxAttempts} draws`);
}
