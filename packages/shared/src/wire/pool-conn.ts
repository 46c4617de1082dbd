import { Duplex } from 'node:stream';
import type { Socket } from 'node:net';
import { TLSSocket, type DetailedPeerCertificate, type PeerCertificate } from 'node:tls';
import type { CipherNameAndProtocol } from 'node:tls';
import WebSocket from 'ws';
import { ConnectionClosedError, ProtocolError, TransportClosedError } from '../core/errors.js';
import { NO_EXTENSIONS, isEndOfStream, type Extensions } from './extensions.js';
import { CLEAN_CLOSE_CODES, CLOSE_UNSUPPORTED_DATA, END_OF_STREAM, MAX_SEND_MESSAGE_BYTES } from './protocol.js';
import type { PooledConn } from '../transport/pooled-conn.js';

/** Close code of a pooled connection whose target the agent could not reach: the relay drops its user at once. */
export const CLOSE_TARGET_UNREACHABLE = 4502;

const SEND_OPTIONS = { binary: true, compress: false, fin: true } as const;

/** Options for {@link PoolConn}. */
export interface PoolConnOptions {
  /**
   * Bytes buffered on the readable side before the underlying socket is paused.
   * Default: 64 KiB (Node's default for byte streams is 16 KiB; WebSocket
   * messages arrive in larger pieces, and a larger window keeps throughput up).
   */
  readableHighWaterMark?: number;
  /** Bytes buffered on the writable side before `write()` returns false. Default: 64 KiB. */
  writableHighWaterMark?: number;
  /** Bytes that arrived before this stream existed (while the connection sat idle in a pool). */
  initialChunks?: Buffer[];
  /** The peer's end-of-stream arrived before this stream existed (after `initialChunks`). */
  initialEnd?: boolean;
  /**
   * What the connection negotiated on its upgrade. With half-close, `end()`
   * ends only our direction on the wire (the peer's own end follows unless it
   * set `allowHalfOpen`). Default: none, as with a Go npws peer.
   */
  extensions?: Extensions;
}

/** ws keeps the raw socket private; we need it for the `net.Socket`-shaped surface. */
export function rawSocketOf(ws: WebSocket): Socket {
  return (ws as unknown as { _socket: Socket })._socket;
}

/**
 * A pooled tunnel connection: a `net.Socket`-shaped `Duplex` over one WebSocket,
 * whose binary messages form a single byte stream.
 *
 * - Backpressure runs both ways: a reader that stops reading pauses the socket;
 *   a slow peer makes `write()` return false.
 * - Without half-close (a Go npws peer), `end()` flushes, then closes with
 *   1000. With it, `end()` sends end-of-stream in band and the other direction
 *   stays open; the WebSocket closes with 1000 once both directions have
 *   ended. As with `net.Socket`, the peer's end-of-stream ends our side too
 *   unless `allowHalfOpen` is set to true. `destroy()` terminates the socket.
 * - The peer's end-of-stream, or its close with 1000/1001, ends the readable
 *   side; any other code, a stray text message or a socket error destroys the
 *   stream with one `'error'` (a `PoolError` with a `code`).
 * - `bytesRead` / `bytesWritten` count payload bytes, not framing.
 *
 * Events besides the Duplex ones: `'timeout'` (after `setTimeout`), and
 * `'transportClose'` once the WebSocket itself has closed, which a pool uses to
 * drop an idle connection whose stream nobody is reading.
 */
export class PoolConn extends Duplex implements PooledConn {
  /** The connection ID, 8 lowercase hex characters. */
  readonly id: string;
  readonly transport = 'websocket';
  /** The underlying WebSocket. An escape hatch: writing to it directly corrupts the stream. */
  readonly webSocket: WebSocket;
  /** Payload bytes received from the peer. */
  bytesRead = 0;
  /** Payload bytes handed to the WebSocket for sending. */
  bytesWritten = 0;
  /** What the connection negotiated on its upgrade (half-close: `end()` leaves the other direction open). */
  readonly extensions: Extensions;

  readonly #socket: Socket;
  #timeoutForwarded = false;
  /**
   * Our close frame is out (end() or destroy()). From here on the socket must
   * keep reading whatever the reader does, or the peer's close reply would
   * queue behind unread data and the handshake would stall until ws's 30 s
   * close timeout. The peer stops sending once it sees our close, so what is
   * still buffered is bounded by what was already in flight.
   */
  #closeSent = false;
  /** The peer's end-of-stream has been pushed: nothing more may arrive. */
  #endReceived = false;
  /** Our end-of-stream is out (half-close only). */
  #endSent = false;

  constructor(ws: WebSocket, id: string, options: PoolConnOptions = {}) {
    super({
      // As net.Socket: the peer's end-of-stream ends ours too, unless the
      // caller sets `allowHalfOpen` (splice does, to carry half-close).
      allowHalfOpen: false,
      readableHighWaterMark: options.readableHighWaterMark ?? 64 * 1024,
      writableHighWaterMark: options.writableHighWaterMark ?? 64 * 1024,
    });
    this.id = id;
    this.webSocket = ws;
    this.extensions = options.extensions ?? NO_EXTENSIONS;
    this.#socket = rawSocketOf(ws);

    for (const chunk of options.initialChunks ?? []) {
      this.bytesRead += chunk.length;
      this.push(chunk);
    }
    if (options.initialEnd) this.#receiveEnd();
    ws.binaryType = 'nodebuffer';
    ws.on('message', this.#onMessage);
    ws.on('close', this.#onClose);
    ws.on('error', this.#onError);
    if (ws.readyState === WebSocket.CLOSED) {
      // Adopting an already-closed socket: its 'close' has fired and will not fire again.
      queueMicrotask(() => this.#onClose(1006, Buffer.alloc(0)));
    }
  }

  // Read from the socket when asked, as net.Socket does (a syscall the first
  // time, cached after, also across close): claiming a connection stays cheap.
  get remoteAddress(): string | undefined {
    return this.#socket.remoteAddress;
  }

  get remotePort(): number | undefined {
    return this.#socket.remotePort;
  }

  get remoteFamily(): string | undefined {
    return this.#socket.remoteFamily;
  }

  get localAddress(): string | undefined {
    return this.#socket.localAddress;
  }

  get localPort(): number | undefined {
    return this.#socket.localPort;
  }

  /** True while the WebSocket is open: the only state in which a pool may hand this out. */
  get transportOpen(): boolean {
    return this.webSocket.readyState === WebSocket.OPEN;
  }

  /** The TCP or TLS socket under the WebSocket. An escape hatch: writing to it directly corrupts the stream. */
  get transportSocket(): Socket {
    return this.#socket;
  }

  /** Closes with 4502 (target unreachable), so that the relay drops its user at once, and destroys the stream. */
  refuseTarget(reason: string): void {
    if (this.webSocket.readyState === WebSocket.OPEN) this.webSocket.close(CLOSE_TARGET_UNREACHABLE, reason);
    this.destroy();
  }

  /** Whether the transport is TLS (`wss://`). */
  get encrypted(): boolean {
    return this.#socket instanceof TLSSocket;
  }

  getPeerCertificate(detailed: true): DetailedPeerCertificate | null;
  getPeerCertificate(detailed?: boolean): PeerCertificate | null;
  /** The peer's certificate, or null on a plain connection (`ws://`). */
  getPeerCertificate(detailed?: boolean): PeerCertificate | DetailedPeerCertificate | null {
    return this.#socket instanceof TLSSocket ? this.#socket.getPeerCertificate(detailed === true) : null;
  }

  /** The negotiated cipher, or null on a plain connection. */
  getCipher(): CipherNameAndProtocol | null {
    return this.#socket instanceof TLSSocket ? this.#socket.getCipher() : null;
  }

  /** The negotiated TLS version (`'TLSv1.3'`), or null on a plain connection. */
  getProtocol(): string | null {
    return this.#socket instanceof TLSSocket ? this.#socket.getProtocol() : null;
  }

  /** Whether the TLS handshake resumed an earlier session (false on a plain connection). */
  isSessionReused(): boolean {
    return this.#socket instanceof TLSSocket && this.#socket.isSessionReused();
  }

  /**
   * Emits `'timeout'` after `ms` of socket inactivity (0 disables), as
   * `net.Socket#setTimeout` does; like there, nothing is closed for you.
   */
  setTimeout(ms: number, callback?: () => void): this {
    if (!this.#timeoutForwarded) {
      this.#timeoutForwarded = true;
      this.#socket.on('timeout', () => this.emit('timeout'));
    }
    this.#socket.setTimeout(ms);
    if (callback) this.once('timeout', callback);
    return this;
  }

  setNoDelay(noDelay = true): this {
    this.#socket.setNoDelay(noDelay);
    return this;
  }

  setKeepAlive(enable = false, initialDelayMs = 0): this {
    this.#socket.setKeepAlive(enable, initialDelayMs);
    return this;
  }

  override _read(): void {
    if (this.webSocket.isPaused) this.webSocket.resume();
  }

  #stopBackpressure(): void {
    this.#closeSent = true;
    if (this.webSocket.isPaused) this.webSocket.resume();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.#send([chunk], callback);
  }

  override _writev(chunks: Array<{ chunk: Buffer }>, callback: (error?: Error | null) => void): void {
    this.#send(chunks.map(({ chunk }) => chunk), callback);
  }

  /**
   * Sends the chunks as binary messages (each at most MAX_SEND_MESSAGE_BYTES)
   * and calls back once the socket has taken the last one: a slow peer holds the
   * callback, our writable buffer fills, and write() returns false.
   */
  #send(chunks: Buffer[], callback: (error?: Error | null) => void): void {
    if (this.webSocket.readyState !== WebSocket.OPEN) {
      callback(new TransportClosedError());
      return;
    }
    const last = chunks.length - 1;
    chunks.forEach((chunk, index) => {
      this.bytesWritten += chunk.length;
      let offset = 0;
      while (chunk.length - offset > MAX_SEND_MESSAGE_BYTES) {
        this.webSocket.send(chunk.subarray(offset, offset + MAX_SEND_MESSAGE_BYTES), SEND_OPTIONS);
        offset += MAX_SEND_MESSAGE_BYTES;
      }
      const rest = offset === 0 ? chunk : chunk.subarray(offset);
      this.webSocket.send(rest, SEND_OPTIONS, index === last ? callback : undefined);
    });
  }

  override _final(callback: (error?: Error | null) => void): void {
    const ws = this.webSocket;
    if (ws.readyState !== WebSocket.OPEN) {
      callback();
      return;
    }
    if (this.extensions.halfClose) {
      ws.send(END_OF_STREAM, { binary: false, compress: false, fin: true }, (error) => {
        if (error) return callback(new TransportClosedError());
        this.#endSent = true;
        // Before the callback: 'finish' may end the stream, and it must find the close under way.
        this.#closeWhenBothEnded();
        callback();
      });
      return;
    }
    this.#stopBackpressure();
    ws.once('close', () => callback());
    ws.close(1000);
  }

  /** Half-close: once both directions have ended, the WebSocket closes normally. */
  #closeWhenBothEnded(): void {
    if (!this.#endSent || !this.#endReceived || this.webSocket.readyState !== WebSocket.OPEN) return;
    this.#stopBackpressure();
    this.webSocket.close(1000);
  }

  #receiveEnd(): void {
    this.#endReceived = true;
    this.push(null);
    this.#closeWhenBothEnded();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    const ws = this.webSocket;
    // Nobody will read what still arrives; drop it rather than let it pause the socket.
    ws.removeListener('message', this.#onMessage);
    this.#stopBackpressure();
    // A close handshake already under way (end(), a close code of the caller's,
    // our 1003) is left to finish; ws terminates it itself if the peer never answers.
    if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.terminate();
    callback(error);
  }

  readonly #onMessage = (data: Buffer, isBinary: boolean): void => {
    if (this.#endReceived) return this.#breakProtocol('the peer sent a message after its end-of-stream');
    if (!isBinary) {
      if (isEndOfStream(this.extensions, data)) this.#receiveEnd();
      else this.#breakProtocol('the peer sent a text message; only binary messages carry the stream');
      return;
    }
    this.bytesRead += data.length;
    if (!this.push(data) && !this.#closeSent) this.webSocket.pause();
  };

  #breakProtocol(message: string): void {
    this.webSocket.close(CLOSE_UNSUPPORTED_DATA, 'binary messages only');
    this.destroy(new ProtocolError(message));
  }

  readonly #onClose = (code: number, reason: Buffer): void => {
    this.webSocket.removeListener('message', this.#onMessage);
    this.emit('transportClose', code);
    if (this.destroyed) return;
    if (CLEAN_CLOSE_CODES.has(code)) {
      if (!this.#endReceived) this.push(null);
      // Nothing written from now on can be sent: end our side too, even if the caller allows half-open.
      if (!this.writableEnded) this.end();
    } else {
      this.destroy(new ConnectionClosedError(code, reason.toString()));
    }
  };

  readonly #onError = (error: Error): void => {
    this.destroy(error);
  };
}
