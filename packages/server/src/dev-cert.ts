import { X509Certificate } from 'node:crypto';
import { generate } from 'selfsigned';

/**
 * A throw-away self-signed certificate (EC P-256, SHA-256) for development:
 * agents must use `tls: 'insecure'` or pin it with `tls: { ca: cert }`.
 * `fingerprint` is its SHA-256 fingerprint (`AB:CD:…`).
 */
export async function generateDevCertificate(hostnames: string[] = ['localhost']): Promise<{ cert: string; key: string; fingerprint: string }> {
  const pems = await generate([{ name: 'commonName', value: hostnames[0] ?? 'localhost' }], {
    keyType: 'ec',
    algorithm: 'sha256',
    extensions: [
      {
        name: 'subjectAltName',
        altNames: [...hostnames.map((value) => ({ type: 2 as const, value })), { type: 7 as const, ip: '127.0.0.1' }, { type: 7 as const, ip: '::1' }],
      },
    ],
  });
  // selfsigned's own `fingerprint` is the SHA-1 one.
  return { cert: pems.cert, key: pems.private, fingerprint: new X509Certificate(pems.cert).fingerprint256 };
}
