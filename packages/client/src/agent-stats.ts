import type { TransportName } from '@pool/shared/internal';

/** Counters since start; cheap to read. */
export interface AgentStats {
  /** How pooled connections travel now (`'tls'` raw, `'websocket'`), or `'unknown'` before the first dial in `'auto'`. */
  transport: TransportName | 'unknown';
  /** Connect orders received from the relay. */
  orders: number;
  /** Tunnels open right now (a pooled connection carrying UDP flows counts as one). */
  open: number;
  /** Tunnels that ended. */
  finished: number;
  /** Orders whose pooled connection could not be claimed in time. */
  claimFailures: number;
  /** Orders whose target refused or timed out. */
  targetFailures: number;
  /** UDP flows open right now: one socket to the target each. */
  flowsOpen: number;
  /** UDP flows ended because their socket could not be opened (out of file descriptors, …). */
  flowFailures: number;
  /** Target replies not sent back to a UDP user: larger than the service's maximum, or while their connection was backed up. */
  datagramsDropped: { oversized: number; backpressure: number };
  /** Demand messages received: users waiting at the relay, dialled for at once. */
  demands: number;
  /** Orders for a service this agent does not serve. */
  unknownServices: number;
  /** Times the control channel connected. */
  controlConnects: number;
  /**
   * The control channel now: `up`; `down` (connecting, or the relay unreachable
   * or refusing); `standby` (the relay says another process is connected as
   * this agent and answers: this one waits, and takes over once it is gone);
   * `left` (draining: the session was given up).
   */
  control: 'up' | 'down' | 'standby' | 'left';
  /** Pool dials started (retries included). */
  dials: number;
  /** Pool dials started for demand (users waiting at the relay). */
  demandDials: number;
  /** The pool's fill rounds: one per interval. */
  rounds: number;
  /** The pool's top-ups between rounds, replacing connections that were taken. */
  topUps: number;
  idle: number;
  capacity: number;
  interval: number;
}
