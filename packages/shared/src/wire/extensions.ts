import type { IncomingHttpHeaders } from 'node:http';
import { END_OF_STREAM, HALF_CLOSE_HEADER, HALF_CLOSE_VALUE, KEEPALIVE_HEADER, KEEPALIVE_VALUE } from './protocol.js';

/**
 * Extensions a pooled connection negotiated on its upgrade: the client offers
 * each in a request header, the server confirms it in the 101 response, and
 * only a confirmed one is used. A Go npws peer offers and confirms none.
 */
export interface Extensions {
  /** Pong-based keep-alive: both ends ping this connection, idle or handed out. */
  keepAlive: boolean;
  /** Half-close: end-of-stream travels in band (see `HALF_CLOSE_HEADER`). */
  halfClose: boolean;
}

/** A Go npws peer's connection. */
export const NO_EXTENSIONS: Extensions = Object.freeze({ keepAlive: false, halfClose: false });

const HEADERS = [
  ['keepAlive', KEEPALIVE_HEADER, KEEPALIVE_VALUE],
  ['halfClose', HALF_CLOSE_HEADER, HALF_CLOSE_VALUE],
] as const;

/** Client: the upgrade-request headers that offer `wanted`. */
export function offerHeaders(wanted: Extensions): Record<string, string> {
  return Object.fromEntries(HEADERS.filter(([name]) => wanted[name]).map(([, header, value]) => [header, value]));
}

/** What both sides have, read from the other side's headers (the request on a server, the 101 response on a client). */
export function negotiated(headers: IncomingHttpHeaders, ours: Extensions): Extensions {
  return {
    keepAlive: ours.keepAlive && headers[KEEPALIVE_HEADER] === KEEPALIVE_VALUE,
    halfClose: ours.halfClose && headers[HALF_CLOSE_HEADER] === HALF_CLOSE_VALUE,
  };
}

/** Server: the 101-response header lines that confirm `agreed`. */
export function confirmHeaderLines(agreed: Extensions): string[] {
  return HEADERS.filter(([name]) => agreed[name]).map(([, header, value]) => `${header}: ${value}`);
}

/** Whether a text message is the in-band end-of-stream of a connection that negotiated half-close. */
export function isEndOfStream(extensions: Extensions, text: Buffer): boolean {
  // Length first: a hostile peer's 16 MiB text message is not turned into a string.
  return extensions.halfClose && text.length === END_OF_STREAM.length && text.toString() === END_OF_STREAM;
}
