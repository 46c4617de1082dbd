/**
 * Upgrade-request header in which our client offers pong-based keep-alive, and
 * response header in which our server confirms it. A Go npws peer sends and
 * answers neither, so neither side will ever ping-kill its idle connections.
 */
export const KEEPALIVE_HEADER = 'x-pool-keepalive';
export const KEEPALIVE_VALUE = 'pong';

/**
 * Upgrade-request header in which our client offers half-close, and response
 * header in which our server confirms it. Once both sides have it, `end()`
 * sends {@link END_OF_STREAM} instead of closing the WebSocket, and the
 * WebSocket closes once both directions have ended. A Go npws peer sends and
 * answers neither, and then `end()` closes the whole connection, as it does there.
 */
export const HALF_CLOSE_HEADER = 'x-pool-half-close';
export const HALF_CLOSE_VALUE = '1';

/**
 * The text message that carries end-of-stream in band on a connection that
 * negotiated half-close: the sender writes nothing more; the other direction
 * stays open. Any other text message is a protocol error.
 */
export const END_OF_STREAM = 'end';

/** Upgrade-request header carrying the optional shared-secret token. */
export const TOKEN_HEADER = 'x-pool-token';

/** Close codes a peer may send that mean end-of-file rather than an error. */
export const CLEAN_CLOSE_CODES: ReadonlySet<number> = new Set([1000, 1001]);

/** Close code sent when the peer sends a text message (RFC 6455: unsupported data). */
export const CLOSE_UNSUPPORTED_DATA = 1003;

/**
 * Largest message we send. Message boundaries carry no meaning, so large writes
 * are split: this keeps each message under any sane peer's `maxPayload`.
 */
export const MAX_SEND_MESSAGE_BYTES = 1024 * 1024;

/** Default largest message we accept (ws `maxPayload`), in bytes: 16 MiB. */
export const DEFAULT_MAX_PAYLOAD_BYTES = 16 * 1024 * 1024;
