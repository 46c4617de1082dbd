import type { ClientRequestArgs } from 'node:http';
import { connect, type TLSSocket } from 'node:tls';
import { tlsOptionsOf } from './certificate-pin.js';

/**
 * TLS 1.3 session resumption for a pool's dials: every new connection offers
 * the latest session ticket the relay gave us, which spares the relay the
 * certificate signature and us its verification (the full handshake that
 * issued the ticket verified the certificate). Key exchange still runs, so
 * forward secrecy is kept. A ticket the relay no longer accepts (it restarted)
 * just means a full handshake.
 *
 * Pass {@link createConnection} as ws's `createConnection` option.
 */
export class TlsSessionCache {
  #session: Buffer | undefined;

  /** No ticket yet: the next dial will be a full handshake. */
  get empty(): boolean {
    return this.#session === undefined;
  }

  readonly createConnection = (request: ClientRequestArgs): TLSSocket => {
    // ws hands over its request options, TLS options included.
    const options = tlsOptionsOf(request);
    const offered = this.#session;
    const socket = connect(offered ? { ...options, session: offered } : options);
    // Only ask for a ticket when we need one: with a 'session' listener Node
    // serialises every ticket the relay sends (OpenSSL sends two per handshake),
    // which costs more than resumption saves.
    const keep = (session: Buffer): void => {
      this.#session = session;
    };
    if (offered === undefined) {
      socket.once('session', keep);
    } else {
      socket.once('secureConnect', () => {
        if (!socket.isSessionReused()) socket.once('session', keep); // the relay refused our ticket
      });
    }
    return socket;
  };
}
