import { randomBytes } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import type { WebSocket } from 'ws';
import {
  PoolClosedError,
  type PooledConn,
  PendingGet,
  decodeControl,
  encodeControl,
  type ConnectMessage,
  type FlowMessage,
  type ControlFeature,
  type ControlMessage,
} from '@pool/shared/internal';

/**
 * One agent's control channel, from its upgrade until it closes: when the
 * agent was last heard, and the orders sent on it that wait for the agent's
 * `claimed` (they fail at once when the channel closes).
 */
export class ControlSession {
  readonly ws: WebSocket;
  /** The agent instance (a UUID of the agent process): a restart is a new one. */
  readonly agentId: string;
  readonly features: ReadonlySet<ControlFeature>;
  /** The services the agent says it serves. */
  readonly services: readonly string[];
  /** When the agent was last heard: a message, a ping or a pong (`performance.now()`, ms). */
  lastHeard = performance.now();
  readonly #claimWaits = new Map<string, PendingGet<void>>();
  /** Cancels asked for, by connection ID, each waiting for the agent's answer. */
  readonly #cancelWaits = new Map<string, (answer: CancelAnswer) => void>();
  readonly #ended = new AbortController();

  /** The probe in flight, if any: every newcomer that arrives meanwhile waits for the same answer. */
  #probe: Promise<boolean> | undefined;
  #onLeave: () => void = () => {};

  /**
   * @param onMisbehaved called when the agent sends anything but a well-formed `claimed`, `cancelled` or `leave`; the channel is then closed with 1003.
   */
  constructor(ws: WebSocket, agentId: string, features: ReadonlySet<ControlFeature>, services: readonly string[], onMisbehaved: (error: Error) => void) {
    this.ws = ws;
    this.agentId = agentId;
    this.features = features;
    this.services = services;
    // Every order waiting for its claim listens: thousands in a burst, by design.
    setMaxListeners(0, this.#ended.signal);
    const heard = (): void => {
      this.lastHeard = performance.now();
    };
    ws.on('pong', heard);
    ws.on('ping', heard);
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      heard();
      let message: ControlMessage | undefined;
      try {
        message = isBinary ? undefined : decodeControl(data.toString());
      } catch (error) {
        onMisbehaved(error as Error);
      }
      if (message?.type === 'claimed' && this.features.has('claimed')) {
        this.#claimWaits.get(message.id)?.resolve();
        this.#cancelWaits.get(message.id)?.('claimed');
        return;
      }
      if (message?.type === 'cancelled' && this.features.has('early')) {
        this.#cancelWaits.get(message.id)?.('cancelled');
        return;
      }
      if (message?.type === 'leave' && this.features.has('leave')) {
        this.#onLeave();
        return;
      }
      ws.close(1003, 'the relay expects only claimed, cancelled and leave messages');
    });
    ws.once('close', () => this.#ended.abort());
  }

  /** Called once the agent says it is leaving (it drains); set by whoever adopts the session. */
  set onLeave(callback: () => void) {
    this.#onLeave = callback;
  }

  /**
   * Whether the agent at the other end is alive now: it answers a ping of
   * ours (with a payload of its own, so an old pong does not count) within
   * `timeoutMs`. False when it does not, or when the channel closes first.
   * A second control channel with this agent's credentials is refused while
   * this says true, so a copied token cannot displace a live agent.
   */
  probe(timeoutMs: number): Promise<boolean> {
    this.#probe ??= new Promise<boolean>((resolve) => {
      const { ws } = this;
      if (ws.readyState !== ws.OPEN) {
        resolve(false);
        return;
      }
      const payload = randomBytes(8);
      const done = (alive: boolean): void => {
        clearTimeout(timer);
        ws.removeListener('pong', onPong);
        ws.removeListener('close', onClose);
        resolve(alive);
      };
      const onPong = (data: Buffer): void => {
        if (payload.equals(data)) done(true);
      };
      const onClose = (): void => done(false);
      const timer = setTimeout(() => done(false), timeoutMs);
      ws.on('pong', onPong);
      ws.once('close', onClose);
      ws.ping(payload);
    }).finally(() => {
      this.#probe = undefined;
    });
    return this.#probe;
  }

  send(message: ControlMessage): void {
    this.ws.send(encodeControl(message));
  }

  /**
   * Orders the agent to claim `conn` (for `details`: a TCP user's `connect`
   * with its service and PROXY header, or a UDP user's `flow`) and resolves once it has: true when the agent acknowledged within
   * `timeoutMs` (at once for an agent without the `claimed` feature), false
   * when it did not, when `conn` closed first, when `signal` aborted, or when
   * this channel closed.
   */
  order(conn: PooledConn, details: Omit<ConnectMessage, 'v' | 'id'> | Omit<FlowMessage, 'v' | 'id'>, timeoutMs: number, signal: AbortSignal): Promise<boolean> {
    this.send({ v: 1, id: conn.id, ...details });
    if (!this.features.has('claimed')) return Promise.resolve(true);
    const { id } = conn;
    const claimed = new PendingGet<void>(timeoutMs, { signal }, () => {});
    const fail = (): void => {
      claimed.reject(new PoolClosedError('the pooled connection or the control channel closed before the claim'));
    };
    this.#claimWaits.set(id, claimed);
    conn.once('transportClose', fail);
    this.#ended.signal.addEventListener('abort', fail);
    return claimed.promise.then(
      () => true,
      () => false,
    ).finally(() => {
      this.#claimWaits.delete(id);
      conn.removeListener('transportClose', fail);
      this.#ended.signal.removeEventListener('abort', fail);
    });
  }

  /**
   * Asks the agent to give connection `id` up unless it has claimed it: for
   * an order whose claim did not come in time while the user's first bytes
   * may already be at the agent. Resolves `claimed` (it had: those bytes may
   * be at the target, so the user stays with this connection or is reset),
   * `cancelled` (it never will: nothing reached a target, so another
   * connection may carry the same bytes), or `unknown` (no answer within
   * `timeoutMs`, or the channel closed: nobody can tell).
   */
  cancel(id: string, timeoutMs: number): Promise<CancelAnswer> {
    if (this.ws.readyState !== this.ws.OPEN) return Promise.resolve('unknown');
    return new Promise<CancelAnswer>((resolve) => {
      const done = (answer: CancelAnswer): void => {
        clearTimeout(timer);
        this.#cancelWaits.delete(id);
        this.#ended.signal.removeEventListener('abort', onEnded);
        resolve(answer);
      };
      const onEnded = (): void => done('unknown');
      const timer = setTimeout(onEnded, timeoutMs);
      this.#cancelWaits.set(id, done);
      this.#ended.signal.addEventListener('abort', onEnded);
      this.send({ v: 1, type: 'cancel', id });
    });
  }
}

/** What an agent said about a connection whose order the relay gave up on (see {@link ControlSession#cancel}). */
export type CancelAnswer = 'claimed' | 'cancelled' | 'unknown';
