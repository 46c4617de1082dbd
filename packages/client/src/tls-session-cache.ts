import type { ClientRequestArgs } from 'node:http';
import { isIP } from 'node:net';
import { connect, type ConnectionOptions, type TLSSocket } from 'node:tls';

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

  readonly createConnection = (request: ClientRequestArgs): TLSSocket => {
    // ws hands over its request options, TLS options included.
    const options = { ...request, path: undefined } as ConnectionOptions & { host?: string };
    // As ws's own tlsConnect: SNI only for host names.
    if (!options.servername && options.servername !== '') options.servername = isIP(options.host ?? '') ? '' : options.host;
    const socket = connect(this.#session ? { ...options, session: this.#session } : options);
    socket.on('session', (session: Buffer) => {
      this.#session = session;
    });
    return socket;
  };
}
