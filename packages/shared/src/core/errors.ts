/**
 * Every failure the SDK reports is a `PoolError` with a stable `code`, so callers
 * can branch on `err.code` (or `instanceof`) without parsing messages.
 */
export class PoolError extends Error {
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** A get did not find a connection before its timeout. */
export class PoolTimeoutError extends PoolError {
  constructor(message = 'timed out waiting for a pooled connection') {
    super('ERR_POOL_TIMEOUT', message);
  }
}

/** The pool was closed (before or while the call waited). */
export class PoolClosedError extends PoolError {
  constructor(message = 'the pool is closed') {
    super('ERR_POOL_CLOSED', message);
  }
}

/** The pool is draining: it takes no new work until it is started again. */
export class PoolDrainingError extends PoolError {
  constructor(message = 'the pool is draining') {
    super('ERR_POOL_DRAINING', message);
  }
}

/** The caller's `AbortSignal` fired. `cause` holds the signal's reason. */
export class PoolAbortedError extends PoolError {
  constructor(reason?: unknown) {
    super('ERR_POOL_ABORTED', 'the operation was aborted', { cause: reason });
  }
}

/** A relay's reason for a refusal, as it reads in a message: its first 200 printable characters. */
function said(detail: string | undefined): string {
  const text = detail?.replace(/[^\x20-\x7e]+/g, ' ').trim().slice(0, 200);
  return text ? `: ${text}` : '';
}

/** The relay answered the upgrade with HTTP 503: it holds `maxCap` connections. */
export class PoolFullError extends PoolError {
  /** @param detail What the relay said, when it said something. */
  constructor(detail?: string) {
    super('ERR_POOL_FULL', `the relay pool is full (HTTP 503)${said(detail)}`);
  }
}

/** The relay answered the upgrade with HTTP 403: this peer is not on its allowlist. */
export class PoolForbiddenError extends PoolError {
  /** @param detail What the relay said, when it said something. */
  constructor(detail?: string) {
    super('ERR_POOL_FORBIDDEN', `the relay refused this client (HTTP 403)${said(detail)}`);
  }
}

/** The relay answered the upgrade with HTTP 401: the token is missing or wrong. */
export class PoolUnauthorizedError extends PoolError {
  /** @param detail What the relay said, when it said something. */
  constructor(detail?: string) {
    super('ERR_POOL_UNAUTHORIZED', `the relay rejected the token (HTTP 401)${said(detail)}`);
  }
}

/** The relay answered the upgrade with some other non-101 status. */
export class UpgradeRejectedError extends PoolError {
  readonly statusCode: number;

  /** @param detail What the relay said, when it said something. */
  constructor(statusCode: number, detail?: string) {
    super('ERR_UPGRADE_REJECTED', `the relay refused the WebSocket upgrade (HTTP ${statusCode})${said(detail)}`);
    this.statusCode = statusCode;
  }
}

/** A connection ID is not 4 bytes / 8 lowercase hex characters. */
export class InvalidIdError extends PoolError {
  constructor(input: unknown) {
    super('ERR_INVALID_ID', `invalid connection ID ${describe(input)}: expected 8 lowercase hex characters or 4 bytes`);
  }
}

/** An option or argument is out of its documented range. Thrown synchronously. */
export class InvalidOptionError extends PoolError {
  constructor(name: string, value: unknown, expected: string) {
    super('ERR_INVALID_OPTION', `invalid ${name} ${describe(value)}: expected ${expected}`);
  }
}

/** The ID frame did not arrive within the handshake timeout. */
export class HandshakeTimeoutError extends PoolError {
  constructor(timeoutMs: number) {
    super('ERR_HANDSHAKE_TIMEOUT', `no connection ID within ${timeoutMs} ms`);
  }
}

/** The first message was binary but not exactly 4 bytes long. */
export class HandshakeBadLengthError extends PoolError {
  readonly length: number;

  constructor(length: number) {
    super('ERR_HANDSHAKE_BAD_LENGTH', `the ID frame is ${length} bytes long, expected 4`);
    this.length = length;
  }
}

/** The first message was a text frame. */
export class HandshakeTextFrameError extends PoolError {
  constructor() {
    super('ERR_HANDSHAKE_TEXT_FRAME', 'the ID frame is a text message, expected 4 binary bytes');
  }
}

/** The WebSocket closed before the ID frame arrived. */
export class HandshakeClosedError extends PoolError {
  readonly closeCode: number;

  constructor(closeCode: number) {
    super('ERR_HANDSHAKE_CLOSED', `the connection closed (code ${closeCode}) before its ID arrived`);
    this.closeCode = closeCode;
  }
}

/** The peer broke the byte-stream protocol (a text message after the handshake). */
export class ProtocolError extends PoolError {
  constructor(message: string) {
    super('ERR_PROTOCOL', message);
  }
}

/**
 * The relay refused a control channel (HTTP 409) because this agent's name
 * already has a live one: another process holds the same credentials. The
 * agent keeps retrying, seconds apart, and takes over once the other one is gone.
 */
export class AgentConnectedError extends PoolError {
  constructor() {
    super('ERR_AGENT_CONNECTED', 'another process is connected to the relay as this agent, and it answers: this one waits until it is gone');
  }
}

/** The peer closed with a code other than 1000/1001, or the socket dropped (1006). */
export class ConnectionClosedError extends PoolError {
  readonly closeCode: number;
  readonly reason: string;

  constructor(closeCode: number, reason: string) {
    super('ERR_CONN_CLOSED', `the peer closed the connection abnormally (code ${closeCode}${reason ? `: ${reason}` : ''})`);
    this.closeCode = closeCode;
    this.reason = reason;
  }
}

/** Keep-alive was negotiated and the peer went silent (no pong, no ping) for two periods. */
export class KeepAliveTimeoutError extends PoolError {
  constructor(keepAliveMs: number) {
    super('ERR_KEEPALIVE_TIMEOUT', `the peer was silent for two keep-alive periods (${2 * keepAliveMs} ms); connection presumed dead`);
  }
}

/** Bytes written after the WebSocket under a stream had closed: they cannot be sent. */
export class TransportClosedError extends PoolError {
  constructor() {
    super('ERR_TRANSPORT_CLOSED', 'the connection has closed; the bytes written were not sent');
  }
}

/** The agent could not connect a tunnel to its target (refused, unreachable, or too slow). */
export class TargetUnreachableError extends PoolError {
  constructor(target: string, reason: string, cause?: unknown) {
    super('ERR_TARGET_UNREACHABLE', `target ${target} ${reason}`, { cause });
  }
}

function describe(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
  if (value instanceof Uint8Array) return `<${value.length} bytes>`;
  return String(value);
}

/** The relay ordered a tunnel for a service this agent does not serve. */
export class UnknownServiceError extends PoolError {
  constructor(service: string) {
    super('ERR_UNKNOWN_SERVICE', `the relay asked for service ${JSON.stringify(service)}, which this agent does not serve`);
  }
}

/** The relay's certificate is not the one pinned by its SHA-256 fingerprint; nothing was sent on that connection. */
export class CertificatePinError extends PoolError {
  constructor(presented: string, pinned: string) {
    super('ERR_TLS_CERT_PIN', `the relay's certificate has SHA-256 fingerprint ${presented}, not the pinned ${pinned}`);
  }
}

/** A service's public port could not be bound (in use, no permission, no such address). */
export class ServiceListenError extends PoolError {
  constructor(service: string, address: string, cause: Error) {
    super('ERR_SERVICE_LISTEN', `service ${service} cannot listen on ${address}: ${(cause as { code?: string }).code ?? cause.message}`, { cause });
  }
}

/** The relay did not choose the raw TLS transport (ALPN `pool/1`) that this pool was told to use alone. */
export class TransportUnavailableError extends PoolError {
  constructor(chosen: string) {
    super('ERR_TRANSPORT_UNAVAILABLE', `the relay does not take the raw TLS transport (ALPN pool/1; it chose ${chosen}): use transport 'auto' or 'websocket'`);
  }
}
