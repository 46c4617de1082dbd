import { generate } from 'selfsigned';

export interface CertPair {
  cert: string;
  key: string;
}

let cached: Promise<CertPair> | undefined;

/** A self-signed certificate for 127.0.0.1/localhost, generated once per test process. */
export function selfSignedCert(): Promise<CertPair> {
  cached ??= generate([{ name: 'commonName', value: 'localhost' }], {
    keyType: 'ec',
    algorithm: 'sha256',
    extensions: [
      { name: 'subjectAltName', altNames: [{ type: 2, value: 'localhost' }, { type: 7, ip: '127.0.0.1' }] },
    ],
  }).then((pems) => ({ cert: pems.cert, key: pems.private }));
  return cached;
}
