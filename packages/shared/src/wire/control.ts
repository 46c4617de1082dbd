import { isIP } from 'node:net';
import { PoolError } from '../core/errors.js';
import { isValidId } from './id.js';
import { MAX_DATAGRAM_BYTES } from './datagram.js';

/**
 * The relay ↔ agent control channel: a WebSocket on path {@link CONTROL_PATH}
 * of the relay's port, carrying JSON text messages. Pool connections stay pure
 * npws; everything tunnel-specific lives here.
 */
export const CONTROL_PATH = '/control';
export const CONTROL_VERSION = 1;
/**
 * Keep-alive periods of silence (no message, ping or pong) after which either
 * end of a control channel ends it (the agent then reconnects). Both ends
 * ping it every half period, so a dead path is found within two periods, as
 * on a pooled connection: raw TLS pooled connections, which carry no pings,
 * share the fate of their agent's control channel.
 */
export const CONTROL_SILENCE_PERIODS = 1.5;
/** Pings per keep-alive period on a control channel. */
export const CONTROL_PINGS_PER_PERIOD = 2;
/** Largest control message accepted, in bytes. */
export const CONTROL_MAX_BYTES = 4 * 1024;
/** Upgrade header naming the agent instance, so a relay can tell a restart from a reconnect. */
export const AGENT_ID_HEADER = 'x-pool-agent-id';
/** Upgrade header with the agent's name; when present it must be the name of the token the agent presents. */
export const AGENT_NAME_HEADER = 'x-pool-agent-name';
/** Upgrade header listing the services an agent serves (comma-separated names). */
export const SERVICES_HEADER = 'x-pool-services';
/**
 * Pooled-connection upgrade header carrying the session secret the relay gave
 * the agent on its control channel: it binds the connection to that live
 * session, so that a token holder who is not the agent cannot slip pooled
 * connections (and so users) in.
 */
export const SESSION_HEADER = 'x-pool-session';
/** The service of an agent started with a single `target`, and of a relay without a services list. */
export const DEFAULT_SERVICE = 'default';
/** Service and agent names: what a config file, a flag and a header can all carry. */
export const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;
/**
 * Upgrade header in which an agent lists the control features it speaks
 * beyond `connect` (comma-separated): `claimed` (it acknowledges each claim,
 * so the relay can put a deadline on orders), `demand` (it dials for users
 * waiting at the relay), `session` (it presents the session secret on its
 * pooled upgrades), `flows` (it carries UDP `flow` carriers, many flows to a
 * connection), `early` (it takes a user's first bytes on the pooled
 * connection alongside the order, before its claim, and answers `cancel`) and
 * `leave` (it gives its session up when it drains, so that its successor is
 * served at once). A relay
 * uses only what the agent listed, so an older agent keeps working where it can.
 */
export const CONTROL_FEATURES_HEADER = 'x-pool-control-features';
export const CONTROL_FEATURES = ['claimed', 'demand', 'session', 'flows', 'early', 'leave'] as const;
export type ControlFeature = (typeof CONTROL_FEATURES)[number];

/** Parses a {@link CONTROL_FEATURES_HEADER} value; unknown names are ignored. */
export function parseControlFeatures(header: string | string[] | undefined): Set<ControlFeature> {
  const names = (Array.isArray(header) ? header.join(',') : (header ?? '')).split(',').map((name) => name.trim());
  return new Set(CONTROL_FEATURES.filter((feature) => names.includes(feature)));
}

/** An endpoint of a user's connection: for the PROXY protocol header. */
export interface Endpoint {
  address: string;
  port: number;
}

/** Relay → agent: claim the pooled connection `id` and connect it to the target of `service`. */
export interface ConnectMessage {
  v: typeof CONTROL_VERSION;
  type: 'connect';
  id: string;
  /** Default: {@link DEFAULT_SERVICE}. */
  service?: string;
  /** Write this PROXY protocol header to the target before any byte. */
  proxy?: 'v1' | 'v2';
  /** The user's address (PROXY source), and the public address it connected to (PROXY destination). */
  source?: Endpoint;
  destination?: Endpoint;
}

/**
 * Relay → agent: claim the pooled connection `id` as a carrier of UDP flows
 * of `service` (a flow: one user address and port). Its datagrams arrive
 * framed with their flow number (see `frameDatagrams`); the agent sends each
 * flow's to the target from a socket of that flow's own, and the replies back
 * under the same number. A flow-end frame closes one flow; the carrier's
 * close ends them all.
 */
export interface FlowMessage {
  v: typeof CONTROL_VERSION;
  type: 'flow';
  id: string;
  /** Default: {@link DEFAULT_SERVICE}. */
  service?: string;
  /** The largest datagram either side may send on this carrier, in bytes; larger ones are dropped, never split. */
  maxDatagram: number;
}

/** Relay → agent, first on every control channel: the secret to present on pooled upgrades (see {@link SESSION_HEADER}). */
export interface SessionMessage {
  v: typeof CONTROL_VERSION;
  type: 'session';
  secret: string;
}

/** Relay → agent: something the agent's operator must know (a service nobody configured, …). */
export interface NoticeMessage {
  v: typeof CONTROL_VERSION;
  type: 'notice';
  level: 'warn' | 'error';
  message: string;
}

/** Agent → relay: the pooled connection `id` was claimed; the relay may splice its user to it. */
export interface ClaimedMessage {
  v: typeof CONTROL_VERSION;
  type: 'claimed';
  id: string;
}

/**
 * Relay → agent: give up the pooled connection `id` unless it is claimed
 * already. Sent for an order whose claim did not come in time while the
 * user's first bytes may be at the agent: the agent answers `claimed` (it
 * had, and the bytes may be at the target) or `cancelled` (it never will, so
 * another connection may carry them).
 */
export interface CancelMessage {
  v: typeof CONTROL_VERSION;
  type: 'cancel';
  id: string;
}

/** Agent → relay: the answer to `cancel` for a connection it had not claimed: it closes it, and nothing of it reached a target. */
export interface CancelledMessage {
  v: typeof CONTROL_VERSION;
  type: 'cancelled';
  id: string;
}

/** Relay → agent: this many users wait for a pooled connection now (an absolute figure, not an increment). */
export interface DemandMessage {
  v: typeof CONTROL_VERSION;
  type: 'demand';
  waiting: number;
}

/**
 * Agent → relay: this agent is draining and gives its session up. The relay
 * sends it no more users and closes the channel; another process with the
 * same credentials is then taken at once, without a liveness check.
 */
export interface LeaveMessage {
  v: typeof CONTROL_VERSION;
  type: 'leave';
}

export type ControlMessage =
  | ConnectMessage
  | FlowMessage
  | ClaimedMessage
  | CancelMessage
  | CancelledMessage
  | DemandMessage
  | SessionMessage
  | NoticeMessage
  | LeaveMessage;

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
      if (!isValidId(message.id)) throw new ControlMessageError('connect without a valid id');
      return { v: CONTROL_VERSION, type: 'connect', id: message.id, ...connectDetails(message) };
    case 'flow': {
      if (!isValidId(message.id)) throw new ControlMessageError('flow without a valid id');
      const { maxDatagram } = message;
      if (typeof maxDatagram !== 'number' || !Number.isInteger(maxDatagram) || maxDatagram < 1 || maxDatagram > MAX_DATAGRAM_BYTES) {
        throw new ControlMessageError(`flow without a maxDatagram from 1 to ${MAX_DATAGRAM_BYTES}`);
      }
      const { service } = connectDetails(message);
      return {
        v: CONTROL_VERSION,
        type: 'flow',
        id: message.id,
        ...(service !== undefined && { service }),
        maxDatagram,
      };
    }
    case 'claimed':
    case 'cancel':
    case 'cancelled':
      if (!isValidId(message.id)) throw new ControlMessageError(`${message.type} without a valid id`);
      return { v: CONTROL_VERSION, type: message.type, id: message.id };
    case 'leave':
      return { v: CONTROL_VERSION, type: 'leave' };
    case 'session':
      if (typeof message.secret !== 'string' || !/^[A-Za-z0-9_-]{16,128}$/.test(message.secret)) throw new ControlMessageError('session without a valid secret');
      return { v: CONTROL_VERSION, type: 'session', secret: message.secret };
    case 'notice':
      if ((message.level !== 'warn' && message.level !== 'error') || typeof message.message !== 'string') throw new ControlMessageError('notice without a level and a message');
      return { v: CONTROL_VERSION, type: 'notice', level: message.level, message: message.message };
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

/** The optional fields of a connect order, validated. */
function connectDetails(message: Record<string, unknown>): Omit<ConnectMessage, 'v' | 'type' | 'id'> {
  const details: Omit<ConnectMessage, 'v' | 'type' | 'id'> = {};
  if (message.service !== undefined) {
    if (typeof message.service !== 'string' || !NAME_PATTERN.test(message.service)) throw new ControlMessageError('connect with a malformed service name');
    details.service = message.service;
  }
  if (message.proxy !== undefined) {
    if (message.proxy !== 'v1' && message.proxy !== 'v2') throw new ControlMessageError('connect with a PROXY version other than v1 or v2');
    details.proxy = message.proxy;
    details.source = endpoint(message.source, 'source');
    details.destination = endpoint(message.destination, 'destination');
  }
  return details;
}

function endpoint(value: unknown, name: string): Endpoint {
  const { address, port } = (value ?? {}) as Record<string, unknown>;
  if (typeof address !== 'string' || isIP(address) === 0 || typeof port !== 'number' || !Number.isInteger(port) || port < 0 || port > 65_535) {
    throw new ControlMessageError(`a malformed ${name} address`);
  }
  return { address, port };
}
