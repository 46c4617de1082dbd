import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import type { Readable, Writable } from 'node:stream';

/** Reads a stream to its end, returning the SHA-256 of everything read and the byte count. */
export async function hashStream(stream: Readable): Promise<{ sha256: string; bytes: number }> {
  const hash = createHash('sha256');
  let bytes = 0;
  for await (const chunk of stream) {
    hash.update(chunk as Buffer);
    bytes += (chunk as Buffer).length;
  }
  return { sha256: hash.digest('hex'), bytes };
}

/**
 * Reads a stream to its end with 'data' events and returns the SHA-256 and
 * the byte count. Unlike `for await` (and so {@link hashStream}), it does not
 * destroy the stream when the end comes: the other direction of a half-closed
 * Duplex stays open.
 */
export function hashUntilEnd(stream: Readable): Promise<{ sha256: string; bytes: number }> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    let bytes = 0;
    stream.on('data', (chunk: Buffer) => {
      hash.update(chunk);
      bytes += chunk.length;
    });
    stream.once('error', reject);
    stream.once('end', () => resolve({ sha256: hash.digest('hex'), bytes }));
  });
}

/** Reads exactly `total` bytes (without ending the stream) and returns their SHA-256. */
export function hashExactly(stream: Readable, total: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    let received = 0;
    const onData = (chunk: Buffer): void => {
      hash.update(chunk);
      received += chunk.length;
      if (received >= total) {
        stream.removeListener('data', onData);
        resolve(hash.digest('hex'));
      }
    };
    stream.on('data', onData);
    stream.once('error', reject);
    stream.once('end', () => reject(new Error(`ended after ${received} of ${total} bytes`)));
  });
}

/**
 * Writes `total` pseudo-random bytes in chunks of `chunkSize` (respecting
 * backpressure), ends the stream unless `end` is false, and returns the SHA-256
 * of what was written.
 */
export async function writeRandom(stream: Writable, total: number, chunkSize = 64 * 1024, end = true): Promise<string> {
  const hash = createHash('sha256');
  // One random block reused with a varying counter: random enough to catch
  // reordering, cheap enough to move hundreds of MiB.
  const block = randomBytes(chunkSize);
  let written = 0;
  let counter = 0;
  while (written < total) {
    const size = Math.min(chunkSize, total - written);
    const chunk = Buffer.from(block.subarray(0, size));
    if (size >= 4) chunk.writeUInt32BE(counter++ >>> 0, 0);
    hash.update(chunk);
    written += size;
    if (!stream.write(chunk)) await once(stream, 'drain');
  }
  if (end) stream.end();
  return hash.digest('hex');
}

/**
 * Resolves with the arguments of the next `event`. Unlike `events.once`, it
 * neither rejects on `'error'` nor subscribes to `'error'` (which would change
 * what an emitter that reports errors only to listeners does).
 */
export function nextEvent(emitter: NodeJS.EventEmitter, event: string): Promise<unknown[]> {
  return new Promise((resolve) => emitter.once(event, (...args: unknown[]) => resolve(args)));
}

/** Resolves on `'close'`, whatever came before it. */
export function closed(emitter: NodeJS.EventEmitter): Promise<unknown[]> {
  return nextEvent(emitter, 'close');
}
