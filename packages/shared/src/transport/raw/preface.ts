import { ProtocolError } from '../../core/errors.js';
import { isValidId } from '../../wire/id.js';

/** The ALPN protocol id of the raw TLS transport. */
export const POOL_ALPN = 'pool/1';

/** Longest preface or answer line, newline included, in bytes. */
export const MAX_PREFACE_BYTES = 4 * 1024;

/**
 * The relay's answer to a preface: `200` with the connection's ID, or the
 * status a WebSocket upgrade would have been refused with (`401`, `403`,
 * `503`, …) and its reason, after which the relay closes the connection.
 */
export type RawAnswer = { status: 200; id: string } | { status: number; reason: string };

/**
 * The agent's first line on a raw connection: what the WebSocket transport's
 * upgrade request carries in its `x-pool-*` headers (token, session), as a
 * JSON object of lowercase header names to values.
 */
export function encodePreface(headers: Readonly<Record<string, string>>): Buffer {
  return Buffer.from(`${JSON.stringify({ v: 1, headers })}\n`);
}

/** The headers of a preface line (without its newline); `ERR_PROTOCOL` for anything else. */
export function parsePreface(line: string): Record<string, string> {
  const message = parseLine(line, 'preface');
  const { headers } = message;
  if (typeof headers !== 'object' || headers === null || Array.isArray(headers)) throw new ProtocolError('the preface has no headers object');
  const parsed: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (typeof value !== 'string') throw new ProtocolError(`preface header ${name} is not a string`);
    parsed[name.toLowerCase()] = value;
  }
  return parsed;
}

export function encodeAnswer(answer: RawAnswer): Buffer {
  return Buffer.from(`${JSON.stringify({ v: 1, ...answer })}\n`);
}

/** The answer of an answer line (without its newline); `ERR_PROTOCOL` for anything else. */
export function parseAnswer(line: string): RawAnswer {
  const { status, id, reason } = parseLine(line, 'answer');
  if (status === 200) {
    if (typeof id !== 'string' || !isValidId(id)) throw new ProtocolError('the answer carries no valid connection ID');
    return { status, id };
  }
  if (typeof status !== 'number' || !Number.isInteger(status)) throw new ProtocolError('the answer has no status');
  return { status, reason: typeof reason === 'string' ? reason : '' };
}

function parseLine(line: string, what: string): Record<string, unknown> {
  let message: unknown;
  try {
    message = JSON.parse(line);
  } catch {
    throw new ProtocolError(`the ${what} is not JSON`);
  }
  if (typeof message !== 'object' || message === null || Array.isArray(message)) throw new ProtocolError(`the ${what} is not a JSON object`);
  if ((message as { v?: unknown }).v !== 1) throw new ProtocolError(`the ${what} is not version 1`);
  return message as Record<string, unknown>;
}

/**
 * Splits the first line off what has been read so far: the line (without its
 * newline) and the bytes after it, or undefined while no newline has come.
 * Throws `ERR_PROTOCOL` once `maxBytes` have come without one.
 */
export function takeLine(buffered: Buffer, maxBytes: number): { line: string; rest: Buffer } | undefined {
  const newline = buffered.indexOf(0x0a);
  if (newline < 0) {
    if (buffered.length >= maxBytes) throw new ProtocolError(`no line within ${maxBytes} bytes`);
    return undefined;
  }
  if (newline + 1 > maxBytes) throw new ProtocolError(`a line longer than ${maxBytes} bytes`);
  return { line: buffered.subarray(0, newline).toString('utf8'), rest: buffered.subarray(newline + 1) };
}
