import type { ClientRequestArgs } from 'node:http';
import { isIP } from 'node:net';
import { connect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import { CertificatePinError } from '@pool/shared/internal';

/** How ws opens a TLS connection for a request; ours, to wrap it. */
export type TlsConnect = (request: ClientRequestArgs) => TLSSocket;

/** The TLS options in ws's request options, as ws's own tlsConnect takes them: SNI only for host names. */
export function tlsOptionsOf(request: ClientRequestArgs): ConnectionOptions {
  const options = { ...request, path: undefined } as ConnectionOptions & { host?: string };
  if (!options.servername && options.servername !== '') options.servername = isIP(options.host ?? '') ? '' : options.host;
  return options;
}

const connectTls: TlsConnect = (request) => connect(tlsOptionsOf(request));

/**
 * Wraps a TLS connect so that the connection is destroyed, before anything is
 * written on it, unless the relay's certificate has the pinned fingerprint.
 * The check runs in a 'secureConnect' listener, synchronously inside the
 * handshake's completion and so before the upgrade request (and its token)
 * that ws has queued is flushed: Node applies `rejectUnauthorized` at the
 * same point.
 * The pin stands in for chain and name verification, so a self-signed
 * certificate pins from any address the relay is reached at.
 */
export function pinCertificate(fingerprint: string, inner: TlsConnect = connectTls): TlsConnect {
  return (request) => {
    const socket = inner({ ...request, rejectUnauthorized: false } as ClientRequestArgs);
    socket.once('secureConnect', () => {
      // A resumed session carries no certificate; its ticket came from a
      // connection that passed this check (Node skips its own name check then too).
      if (socket.isSessionReused()) return;
      const presented = socket.getPeerCertificate().fingerprint256;
      if (presented !== fingerprint) socket.destroy(new CertificatePinError(presented ?? 'none', fingerprint));
    });
    return socket;
  };
}

/** Verification failures that mean "this certificate is not trusted here", as opposed to a broken one. */
const UNTRUSTED_CERTIFICATE = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
]);

/** What to do about a failed connection to the relay, for the log line; '' when we have nothing to say. */
export function certificateHint(code: string | undefined): string {
  if (code === 'ERR_TLS_CERT_PIN') return " (the relay's certificate is not the pinned one: it was replaced, or the pin is not the fingerprint pool-relay printed)";
  if (code !== undefined && UNTRUSTED_CERTIFICATE.has(code)) {
    return " (the relay's certificate is not trusted here: pin the fingerprint pool-relay printed at start with --tls-fingerprint (tls.fingerprint), or trust a copy of it with --tls-ca (tls.ca))";
  }
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') {
    return " (the relay's certificate is not made for the host name or address in --server: connect by a name it lists (pool-relay --tls-name when it makes one), or pin its fingerprint with --tls-fingerprint, which checks no name)";
  }
  return '';
}
