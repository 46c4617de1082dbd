import type { ClientRequest, IncomingMessage } from 'node:http';
import WebSocket from 'ws';
import {
  AgentConnectedError,
  HandshakeBadLengthError,
  HandshakeClosedError,
  HandshakeTextFrameError,
  HandshakeTimeoutError,
  PoolForbiddenError,
  PoolFullError,
  PoolUnauthorizedError,
  UpgradeRejectedError,
} from '../core/errors.js';
import type { Extensions } from './extensions.js';
import { ID_BYTES, idToBytes, parseId } from './id.js';
import { IdleSocket } from '../pool/idle-socket.js';
import { PoolConn, type PoolConnOptions } from './pool-conn.js';
import { CLOSE_UNSUPPORTED_DATA } from './protocol.js';

/**
 * Server side of the handshake: sends the ID as one binary message of exactly
 * 4 bytes (a Go npws client leaks any extra bytes into its stream), then wraps
 * the socket. Anything written to the returned PoolConn goes out after the ID.
 */
export function sendId(ws: WebSocket, id: string, options?: PoolConnOptions): PoolConn {
  sendIdFrame(ws, id);
  return new PoolConn(ws, id, options);
}

/** Sends the ID frame only (a pool that keeps the connection idle wraps it later). */
export function sendIdFrame(ws: WebSocket, id: string): void {
  ws.send(idToBytes(id), { binary: true, compress: false, fin: true });
}

/** The typed error for a relay's non-101 answer to the upgrade. */
export function upgradeRejection(statusCode: number, detail?: string): Error {
  switch (statusCode) {
    case 401:
      return new PoolUnauthorizedError(detail);
    case 403:
      return new PoolForbiddenError(detail);
    case 409:
      return new AgentConnectedError();
    case 503:
      return new PoolFullError(detail);
    default:
      return new UpgradeRejectedError(statusCode, detail);
  }
}

/** Most of a refusal's body read for its reason, in bytes, and how long it is waited for, in ms. */
const REFUSAL_BODY_BYTES = 512;
const REFUSAL_BODY_MS = 2_000;

/**
 * Reads the reason a relay gives with a refused upgrade (ours says why in the
 * body: a token that is another agent's, a key it did not present, …), at
 * most 512 bytes and 2 s, and calls `done` once with the typed error.
 */
export function readUpgradeRejection(response: IncomingMessage, done: (error: Error) => void): void {
  let body = '';
  let settled = false;
  const settle = (): void => {
    if (settled) return;
    settled = true;
    clearTimeout(timer);
    response.destroy();
    done(upgradeRejection(response.statusCode ?? 0, body));
  };
  const timer = setTimeout(settle, REFUSAL_BODY_MS);
  response.setEncoding('utf8');
  response.on('data', (chunk: string) => {
    body += chunk;
    if (body.length >= REFUSAL_BODY_BYTES) settle();
  });
  response.once('end', settle);
  response.once('close', settle);
  response.on('error', settle);
}

/**
 * Client side of the handshake, from the upgrade to the ID: call it right after
 * `new WebSocket(...)`, while the socket is still connecting. An ID sent with
 * the 101 response is emitted straight after `'open'`, so listening only once
 * `'open'` has been awaited would lose it.
 *
 * Waits for the first message, which must be exactly 4 binary bytes, and
 * resolves with the wrapped connection. The PoolConn is built inside the
 * message handler, so messages that follow the ID in the same read are kept.
 *
 * Rejects with `ERR_HANDSHAKE_TIMEOUT` (the whole dial, upgrade included),
 * `ERR_HANDSHAKE_BAD_LENGTH`, `ERR_HANDSHAKE_TEXT_FRAME`, `ERR_HANDSHAKE_CLOSED`,
 * the relay's refusal (`ERR_POOL_FORBIDDEN`, `ERR_POOL_UNAUTHORIZED`,
 * `ERR_POOL_FULL`, `ERR_UPGRADE_REJECTED`), or the socket's own error; in every
 * case the WebSocket is closed or terminated.
 */
export function receiveId(ws: WebSocket, timeoutMs: number, options?: PoolConnOptions): Promise<PoolConn> {
  return awaitId(ws, timeoutMs, (id) => new PoolConn(ws, id, options));
}

/**
 * As {@link receiveId}, for a pool: the connection is kept as an {@link IdleSocket}
 * until claimed. `extensions` is asked once the ID has arrived, by when the
 * 101 response has said what was negotiated.
 */
export function receiveIdle(ws: WebSocket, timeoutMs: number, extensions: () => Extensions): Promise<IdleSocket> {
  return awaitId(ws, timeoutMs, (id) => new IdleSocket(ws, id, extensions()));
}

/** The handshake itself; `adopt` runs inside the message handler, before any later message. */
function awaitId<T>(ws: WebSocket, timeoutMs: number, adopt: (id: string) => T): Promise<T> {
  return new Promise((resolve, reject) => {
    // Tagged, not `instanceof Error`: errors raised inside Node (ECONNREFUSED, TLS) may come from another realm.
    const settle = (outcome: { adopted: T } | { error: Error }): void => {
      clearTimeout(timer);
      ws.removeListener('message', onMessage);
      ws.removeListener('close', onClose);
      ws.removeListener('error', onError);
      ws.removeListener('unexpected-response', onRefused);
      if ('adopted' in outcome) {
        resolve(outcome.adopted);
      } else {
        // ws needs an 'error' listener for as long as the socket can still emit.
        ws.on('error', () => {});
        if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.terminate();
        reject(outcome.error);
      }
    };
    const onMessage = (data: Buffer, isBinary: boolean): void => {
      if (!isBinary) {
        ws.close(CLOSE_UNSUPPORTED_DATA, 'expected a binary ID');
        settle({ error: new HandshakeTextFrameError() });
      } else if (data.length !== ID_BYTES) {
        settle({ error: new HandshakeBadLengthError(data.length) });
      } else {
        settle({ adopted: adopt(parseId(data)) });
      }
    };
    const onClose = (code: number): void => settle({ error: new HandshakeClosedError(code) });
    const onError = (error: Error): void => settle({ error });
    const onRefused = (_request: ClientRequest, response: IncomingMessage): void => {
      response.resume();
      settle({ error: upgradeRejection(response.statusCode ?? 0) });
    };
    const timer = setTimeout(() => settle({ error: new HandshakeTimeoutError(timeoutMs) }), timeoutMs);

    if (ws.readyState === WebSocket.CLOSING || ws.readyState === WebSocket.CLOSED) {
      settle({ error: new HandshakeClosedError(1006) });
      return;
    }
    ws.binaryType = 'nodebuffer';
    ws.on('message', onMessage);
    ws.on('close', onClose);
    ws.on('error', onError);
    ws.on('unexpected-response', onRefused);
  });
}
