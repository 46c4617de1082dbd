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

/**
 * Upgrade header in which an agent lists the control features it speaks
 * beyond `connect` (comma-separated): `claimed` (it acknowledges each claim,
 * so the relay can put a deadline on orders) and `demand` (it dials for users
 * waiting at the relay). A relay uses only what the agent listed, so an older
 * agent keeps working.
 */
export const CONTROL_FEATURES_HEADER = 'x-pool-control-features';
export const CONTROL_FEATURES = ['claimed', 'demand'] as const;
export type ControlFeature = (typeof CONTROL_FEATURES)[number];

/** Parses a {@link CONTROL_FEATURES_HEADER} value; unknown names are ignored. */
export function parseControlFeatures(header: string | string[] | undefined): Set<ControlFeature> {
  const names = (Array.isArray(header) ? header.join(',') : (header ?? '')).split(',').map((name) => name.trim());
  return new Set(CONTROL_FEATURES.filter((feature) => names.includes(feature)));
}

/** Relay → agent: claim the pooled connection `id` and connect it to the target. */
export interface ConnectMessage {
  v: typeof CONTROL_VERSION;
  type: 'connect';
  id: string;
}

/** Agent → relay: the pooled connection `id` was claimed; the relay may splice its user to it. */
export interface ClaimedMessage {
  v: typeof CONTROL_VERSION;
  type: 'claimed';
  id: string;
}

/** Relay → agent: this many users wait for a pooled connection now (an absolute figure, not an increment). */
export interface DemandMessage {
  v: typeof CONTROL_VERSION;
  type: 'demand';
  waiting: number;
}

export type ControlMessage = ConnectMessage | ClaimedMessage | DemandMessage;

/** Largest `waiting` a demand message may carry. */
export const MAX_DEMAND = 1_000_000;

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
  switch (message.type) {
    case 'connect':
    case 'claimed':
      if (!isValidId(message.id)) throw new ControlMessageError(`${message.type} without a valid id`);
      return { v: CONTROL_VERSION, type: message.type, id: message.id };
    case 'demand': {
      const { waiting } = message;
      if (typeof waiting !== 'number' || !Number.isInteger(waiting) || waiting < 0 || waiting > MAX_DEMAND) {
        throw new ControlMessageError(`demand without a whole number of waiting users from 0 to ${MAX_DEMAND}`);
      }
      return { v: CONTROL_VERSION, type: 'demand', waiting };
    }
    default:
      throw new ControlMessageError(`unknown type ${JSON.stringify(message.type)}`);
  }
}
