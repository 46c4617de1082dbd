import { afterEach, describe, expect, it } from '@jest/globals';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { generateDevCertificate } from '../src/tls/certificates.js';

const execPath = process.execPath;

afterEach(() => {
  process.execPath = execPath;
});

/** What every generated certificate must be, however it was made. */
function expectValid(made: { cert: string; key: string; fingerprint: string }, names: string[]): void {
  const x509 = new X509Certificate(made.cert);
  expect(x509.fingerprint256).toBe(made.fingerprint);
  expect(x509.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
  expect(x509.checkPrivateKey(createPrivateKey(made.key))).toBe(true);
  for (const name of names) expect(/^[\d.:]+$/.test(name) ? x509.checkIP(name) : x509.checkHost(name)).toBe(name);
}

describe('generateDevCertificate', () => {
  it('makes an EC P-256 certificate for host names and IPs, with its key and SHA-256 fingerprint', async () => {
    const names = ['relay.pool.test', '127.0.0.1', '::1'];
    expectValid(await generateDevCertificate(names), names);
  });

  it('makes a new key each time', async () => {
    const [first, second] = await Promise.all([generateDevCertificate(['localhost']), generateDevCertificate(['localhost'])]);
    expect(first.fingerprint).not.toBe(second.fingerprint);
  });

  it('still makes one where Node cannot be started again, in this process', async () => {
    process.execPath = '/nonexistent/node';
    expectValid(await generateDevCertificate(['localhost']), ['localhost']);
  });
});
