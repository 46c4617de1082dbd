import { PoolError } from './errors.js';
import { isValidId } from './id.js';

/**
 * The relay ↔ agent control channel: a WebSocket on path {@link CONTROL_PATH}
 * of the relay's port, carrying JSON text messages. Pool connections stay pure
 * npws; everything tunnel-specific lives here.
 */
export const CONTROL_PATH = '/control';
export const CONTROL_VERSION = 1;
/** Largest control message accepted, in bytes. */
export const CONTROL_MAX_BYTES = 4 * 1024;
/** Upgrade header naming the agent instance, so a relay can tell a restart from a reconnect. */
export const AGENT_ID_HEADER = 'x-pool-agent-id';
/** Close code an agent sends on a pool connection whose target refused: the relay drops the user at once. */
export const CLOSE_TARGET_UNREACHABLE = 4502;

/** Relay → agent: claim the pooled connection `id` and connect it to the target. */
export interface ConnectMessage {
  v: typeof CONTROL_VERSION;
  type: 'connect';
  id: string;
}

export type ControlMessage = ConnectMessage;

/** A control message that is not valid JSON, of another version, or of unknown shape. */
export class ControlMessageError extends PoolError {
  constructor(reason: string) {
    super('ERR_CONTROL_MESSAGE', `malformed control message: ${reason}`);
  }
}

export function encodeControl(message: ControlMessage): string {
  return JSON.stringify(message);
}

/** Parses and validates one control message; throws `ControlMessageError` for anything else. */
export function decodeControl(text: string): ControlMessage {
  if (text.length > CONTROL_MAX_BYTES) throw new ControlMessageError(`longer than ${CONTROL_MAX_BYTES} bytes`);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new ControlMessageError('not JSON');
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new ControlMessageError('not an object');
  const message = value as Record<string, unknown>;
  if (message.v !== CONTROL_VERSION) throw new ControlMessageError(`unsupported version ${JSON.stringify(message.v)}`);
  if (message.type !== 'connect') throw new ControlMessageError(`unknown type ${JSON.stringify(message.type)}`);
  if (!isValidId(message.id)) throw new ControlMessageError('connect without a valid id');
  return { v: CONTROL_VERSION, type: 'connect', id: message.id };
}
