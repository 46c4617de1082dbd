import type { AdmissionRefusal } from './admitted-users.js';

// The relay's counters, read by the relay, its services, its metrics and its CLI.

/** Counters since start; cheap to read. */
export interface RelayStats {
  /** User connections accepted on the public ports. */
  accepted: number;
  /** Tunnels that ended, cleanly or not. */
  finished: number;
  /** Tunnels open right now. */
  open: number;
  /** User connections closed because no pooled connection came within `getTimeout`. */
  noConnection: number;
  /** User connections closed because the service's agent was not on its control channel (and did not come back within `getTimeout`). */
  noAgent: number;
  /** Users who left while waiting for a pooled connection. */
  departed: number;
  /** Orders the agent did not claim in time (or whose connection closed first), retried with another connection. */
  claimRetries: number;
  /**
   * Users reset because their order was neither claimed nor cancelled (the
   * control channel went silent or closed) after their first bytes had gone
   * to the agent: they may have reached the target, so no other connection
   * may carry them again.
   */
  lostOrders: number;
  /** Control channels taken over by a new one of the same agent because the old one no longer answered (a restart). */
  controlReplaced: number;
  /** Control upgrades refused (a wrong token or key, not an agent, too old, the agent already connected and alive). */
  controlRefused: number;
  /** Of those, refused because the agent was connected and answered (another process with its credentials). */
  controlConflicts: number;
  /** Users waiting for a pooled connection right now. */
  waiting: number;
  /** Tunnels that ended in an error (reset, target unreachable, …). */
  failed: number;
  /** Idle pooled connections. */
  idle: number;
  /** Whether an agent holds a control channel. */
  agentConnected: boolean;
  /** Per agent: whether it is connected, its idle connections, users waiting for it. */
  agents: Record<string, { connected: boolean; idle: number; waiting: number; services: string[] }>;
  /** Per service: its users. */
  services: Record<string, ServiceStats>;
}

/** Counters of one service since the relay started. */
export interface ServiceStats {
  /** The agent that serves it. */
  agent: string;
  accepted: number;
  finished: number;
  failed: number;
  open: number;
  /** A UDP service's datagrams; its users are flows (`accepted`: flows opened, `open`: flows open now). */
  udp?: UdpStats;
  /**
   * A TCP service's users turned away at once: too many were waiting, in all
   * (`serviceFull`) or from their address (`sourceFull`), or their address had
   * `maxTunnelsPerSource` open (`sourceTunnels`); or closed while waiting,
   * their place taken by a user from an address with fewer waiting (`displaced`).
   */
  refused?: Record<AdmissionRefusal, number>;
}

/** Why a datagram was not delivered. */
export type UdpDropReason = 'oversized' | 'queueFull' | 'backpressure' | 'noConnection' | 'sendFailed' | 'replyBudget';

/** A UDP service's datagrams since the relay started. */
export interface UdpStats {
  /** Datagrams and bytes from users (into the tunnel) and to users (out of it). */
  datagrams: { fromUsers: number; toUsers: number };
  bytes: { fromUsers: number; toUsers: number };
  /** Datagrams dropped, by reason. */
  dropped: Record<UdpDropReason, number>;
  /** Flows closed to make room for a new one: the table was full, or their address held its share. */
  flowsEvicted: number;
  /** Pooled connections carrying this service's flows now (a few, however many flows). */
  carriers: number;
}
